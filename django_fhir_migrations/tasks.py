"""The admin page's background run as a task of Django's tasks framework (background.py
decides when it is used). Importing this module needs `django.tasks` (Django 6) or the
`django-tasks` package (`pip install django-fhir-migrations[tasks]`); nothing else imports it
unless a task backend is configured.
"""

from __future__ import annotations

try:
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from django_tasks import task  # type: ignore[no-redef,unused-ignore]

from .background import run_fhirmigrate


@task()
def fhirmigrate(applied_by: str, cancel: bool = False) -> int:
    """What `manage.py fhirmigrate --noinput [--cancel]` runs, in the task worker, as the admin
    user who clicked; fails (with the console's error, scrubbed) when that would exit non-zero."""
    return run_fhirmigrate(applied_by, cancel=cancel)
