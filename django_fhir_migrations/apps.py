from django.apps import AppConfig


class FhirMigrationsConfig(AppConfig):
    name = "django_fhir_migrations"
    label = "django_fhir_migrations"
    verbose_name = "FHIR migrations"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
