from django.apps import AppConfig


class ChatWebhookConfig(AppConfig):
    name = "tests.chat_webhook"
    label = "chat_webhook"

    def ready(self) -> None:
        from . import receivers  # noqa: F401  (connects the receivers)
