"""A model with no table, so the admin has somewhere to hang the status page and its permission.

FHIR migration state lives on the FHIR server, not in the database. Django's admin and its
permission system are built around models, though, so `MigrationStatus` is an unmanaged model
(`managed = False`: no table is ever created or queried) whose only job is to own the
`view_fhir_migrations` permission and an admin entry. Its migration exists so that
`manage.py migrate` creates the content type and that permission.
"""

from __future__ import annotations

from django.db import models

VIEW_PERMISSION = "django_fhir_migrations.view_fhir_migrations"


class MigrationStatus(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("view_fhir_migrations", "Can view FHIR migration status")]
        verbose_name = "migration status"
        verbose_name_plural = "migration status"

    def __str__(self) -> str:
        return "FHIR migration status"
