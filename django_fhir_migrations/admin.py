"""Admin registration: "FHIR migrations › Migration status" replaces the changelist of the
table-less MigrationStatus model with the status page (views.py).

Who sees what: the page needs staff status plus the `view_fhir_migrations` permission
(superusers have it); anonymous users and non-staff get the admin login, staff without the
permission get 403. The actions (apply pending migrations, pause, continue or cancel a running
one, break the lock) are superuser-only.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path

from . import views
from .models import VIEW_PERMISSION, MigrationStatus


@admin.register(MigrationStatus)
class MigrationStatusAdmin(admin.ModelAdmin):
    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    # Nothing here is a database row: there is nothing to add, change or delete.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view  # login redirect, csrf_protect, never_cache
        return [
            path("", wrap(self.changelist_view), name=f"{prefix}_changelist"),
            path("migrate/", wrap(self.migrate_view), name=f"{prefix}_migrate"),
            path("break-lock/", wrap(self.break_lock_view), name=f"{prefix}_break_lock"),
            path("pause/", wrap(self.pause_view), name=f"{prefix}_pause"),
            path("cancel/", wrap(self.cancel_view), name=f"{prefix}_cancel"),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return views.status_view(self, request)

    def migrate_view(self, request: HttpRequest) -> HttpResponse:
        return views.migrate_view(self, request)

    def break_lock_view(self, request: HttpRequest) -> HttpResponse:
        return views.break_lock_view(self, request)

    def pause_view(self, request: HttpRequest) -> HttpResponse:
        return views.pause_view(self, request)

    def cancel_view(self, request: HttpRequest) -> HttpResponse:
        return views.cancel_view(self, request)
