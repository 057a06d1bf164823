"""The admin's "FHIR migrations" pages: the status, and two confirmed superuser actions.

Everything shown comes from `Project.status()`, the same data `fhirshowmigrations` prints, so
the page and the command never disagree. The page must stay usable when the FHIR server is
down or the settings are wrong (that is when people open it): such problems become banners,
never a 500. The actions (apply pending migrations, break the lock) run the same engine calls
as `fhirmigrate` and `fhirmigrate --break-lock`; they are POST-only, CSRF-protected (the admin
wraps every view in csrf_protect), superuser-only, and need an explicit confirmation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from .conf import get_settings
from .engine import FhirMigrationError, Project
from .engine.clock import parse_datetime
from .engine.redaction import scrub
from .engine.status import ProjectStatus, ScriptStatus
from .models import VIEW_PERMISSION

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

AUDIT_EVENTS_SHOWN = 20
# A web request should not queue behind a long migration run: wait briefly, then say who holds it.
ACTION_LOCK_TIMEOUT = 5.0
ADMIN_COMMAND = "Django admin"


@dataclass
class ScriptRow:
    """One script as the page shows it; `applied` is None when the server could not be read."""

    label: str
    name: str
    revision: str
    doc: str
    applied: bool | None
    applied_at: datetime | None = None
    duration: str = ""
    applied_by: str = ""
    fake: bool = False
    failures: int = 0  # refused entries it was applied with (its failure budget)
    is_head: bool = False
    drifted: bool = False
    out_of_order: bool = False
    progress: str = ""  # an interrupted (or running) attempt: "partially applied: ..."
    running: bool = False  # the lease holder is applying it right now

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        return {True: "applied", False: "pending", None: "unknown"}[self.applied]

    @classmethod
    def build(cls, row: ScriptStatus, known: bool, running: bool = False) -> ScriptRow:
        record = row.record if known else None
        duration = ""
        if record is not None and record.duration_ms is not None:
            duration = f"{record.duration_ms / 1000:.2f} s"
        return cls(
            label=row.script.label, name=row.script.name, revision=row.script.revision,
            doc=row.script.doc, applied=row.applied if known else None,
            applied_at=parse_datetime(record.applied_at) if record else None,
            duration=duration, applied_by=(record.applied_by or "") if record else "",
            fake=bool(record and record.fake), failures=record.failures if record else 0,
            is_head=row.is_head, drifted=row.drifted,
            out_of_order=row.out_of_order, progress=row.progress, running=running,
        )


def source_name() -> str:
    """The application named in AuditEvents: the project package, as the commands name it."""
    return getattr(django_settings, "ROOT_URLCONF", "").split(".")[0] or "django project"


def load_status() -> tuple[ProjectStatus | None, str | None]:
    """(status, None), or (None, message) when the settings themselves are unusable."""
    try:
        project = Project(get_settings(), command=ADMIN_COMMAND, source=source_name())
    except FhirMigrationError as exc:
        return None, str(exc)
    try:
        return project.status(audit_events=AUDIT_EVENTS_SHOWN), None
    except FhirMigrationError as exc:  # e.g. no BASE_URL: the connection cannot even be built
        return None, str(exc)
    finally:
        project.close()


def status_context(status: ProjectStatus | None) -> dict[str, Any]:
    if status is None:
        return {"status": None, "rows": [], "known": False}
    known = status.state is not None and not status.server_error
    lock = status.lock if not status.lock_expired else None
    rows = [ScriptRow.build(row, known, running=lock is not None and bool(row.progress))
            for row in status.scripts]
    # What would stop "Apply" from working: say so instead of offering it.
    blocked = ""
    if lock is not None:
        blocked = f"A migration run holds the lock ({lock.describe()}): wait for it to finish."
    elif status.drifted:
        blocked = ("Applied migrations were edited since they ran: revert the edit, or accept it with "
                   "`manage.py fhirmigrate --accept-checksums`, before applying more.")
    elif not status.graph_valid:
        blocked = "The migration scripts have problems (see above): fix them before applying."
    return {
        "status": status,
        "known": known,
        "rows": rows,
        "running": [r for r in rows if r.running],
        "pending_count": len(status.pending) if known else None,
        "applied_count": len(status.applied) if known else None,
        "head_script": status.head_script,
        "apply_blocked": blocked,
    }


# --- the pages -----------------------------------------------------------------------------


def status_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    status, settings_error = load_status()
    context = {
        **model_admin.admin_site.each_context(request),
        **status_context(status),
        "title": "FHIR migrations",
        "opts": model_admin.model._meta,
        "settings_error": settings_error,
        "can_act": request.user.is_superuser,
        "migrate_url": _url(model_admin, "migrate"),
        "break_lock_url": _url(model_admin, "break_lock"),
    }
    return TemplateResponse(request, "admin/django_fhir_migrations/status.html", context)


def migrate_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: what would be applied, and a confirmation form. POST with confirm: apply it."""
    status = _action_preamble(model_admin, request)
    if not isinstance(status, ProjectStatus):
        return status
    if status.server_error or status.state is None or not status.graph_valid:
        messages.error(request, "Cannot apply migrations: " + (
            status.server_error or "; ".join(status.problems) or "the state could not be read."))
        return _back(model_admin)
    blocked = status_context(status)["apply_blocked"]
    if blocked:
        messages.error(request, "Cannot apply migrations: " + blocked)
        return _back(model_admin)
    if not status.pending:
        messages.info(request, "No migrations to apply.")
        return _back(model_admin)
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        def run(project: Project) -> str:
            outcome = project.migrate(lock_timeout=ACTION_LOCK_TIMEOUT)
            if not outcome.done:
                return "No migrations to apply (another process applied them)."
            names = ", ".join(f"{s.label}/{s.name}" for s in outcome.done)
            return f"Applied {len(outcome.done)} migration(s): {names}."

        return _run_action(model_admin, request, run)
    return _confirm(model_admin, request, status, action="migrate",
                    question=f"Apply {len(status.pending)} pending migration(s) to "
                             f"{status.base_url}?",
                    button="Yes, apply them")


def break_lock_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: who holds the lock, and a confirmation form. POST with confirm: remove the lease."""
    status = _action_preamble(model_admin, request)
    if not isinstance(status, ProjectStatus):
        return status
    if status.lock is None:
        messages.info(request, "No process holds the migration lock." if not status.server_error
                      else f"Cannot read the lock: {status.server_error}")
        return _back(model_admin)
    holder = status.lock.describe()
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        def run(project: Project) -> str:
            outcome = project.break_lock(confirm=None)
            return "" if outcome.exit_code else f"Broke the migration lock held by {holder}."

        return _run_action(model_admin, request, run)
    return _confirm(model_admin, request, status, action="break_lock",
                    question=f"Break the migration lock held by {status.lock.describe()}?",
                    button="Yes, break the lock")


# --- pieces --------------------------------------------------------------------------------


def _action_preamble(model_admin: ModelAdmin, request: HttpRequest) -> ProjectStatus | HttpResponse:
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    if not request.user.is_superuser:
        raise PermissionDenied
    status, settings_error = load_status()
    if status is None:
        messages.error(request, settings_error or "The migration status could not be read.")
        return _back(model_admin)
    return status


def _run_action(model_admin: ModelAdmin, request: HttpRequest, run) -> HttpResponse:
    user = request.user.get_username()
    try:
        settings = get_settings().with_overrides(applied_by=f"{user} (Django admin)")
        project = Project(settings, command=ADMIN_COMMAND, source=source_name(), stdout=io.StringIO())
    except FhirMigrationError as exc:
        messages.error(request, str(exc))
        return _back(model_admin)
    try:
        done = run(project)
    except FhirMigrationError as exc:
        # A script's exception text is shown to the admin user: scrub credentials first.
        messages.error(request, scrub(str(exc)))
    except BaseException as exc:  # noqa: BLE001 - nothing a script raises may escape a web request
        messages.error(request, scrub(f"The action stopped: {type(exc).__name__}: {exc}"))
    else:
        if done:
            messages.success(request, done)
    finally:
        project.close()
    return _back(model_admin)


def _confirm(model_admin: ModelAdmin, request: HttpRequest, status: ProjectStatus, *, action: str,
             question: str, button: str) -> HttpResponse:
    context = {
        **model_admin.admin_site.each_context(request),
        **status_context(status),
        "title": "Are you sure?",
        "opts": model_admin.model._meta,
        "action": action,
        "question": question,
        "button": button,
        "status_url": _url(model_admin, "changelist"),
    }
    return TemplateResponse(request, "admin/django_fhir_migrations/confirm.html", context)


def _url(model_admin: ModelAdmin, name: str) -> str:
    opts = model_admin.model._meta
    return reverse(f"{model_admin.admin_site.name}:{opts.app_label}_{opts.model_name}_{name}")


def _back(model_admin: ModelAdmin) -> HttpResponse:
    return HttpResponseRedirect(_url(model_admin, "changelist"))


__all__ = ["VIEW_PERMISSION", "break_lock_view", "load_status", "migrate_view", "status_view"]
