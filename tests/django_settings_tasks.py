"""The test settings plus a task backend that runs tasks elsewhere: django-tasks' database
backend, on a SQLite file the web process and the `db_worker` process share (the path in
FHIR_MIGRATIONS_TEST_DB), and the README's chat webhook receivers (CHAT_WEBHOOK_URL)."""

import os

from .django_settings import *  # noqa: F403
from .django_settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks", "django_tasks.backends.database", "tests.chat_webhook"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["FHIR_MIGRATIONS_TEST_DB"],
                         "OPTIONS": {"timeout": 20}}}
TASKS = {"default": {"BACKEND": "django_tasks.backends.database.DatabaseBackend"}}
CHAT_WEBHOOK_URL = os.environ.get("CHAT_WEBHOOK_URL", "http://127.0.0.1:9/")
