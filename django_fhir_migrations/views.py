"""The admin's "FHIR migrations" pages: the status, and the superuser actions.

Everything shown comes from `Project.status()`, the same data `fhirshowmigrations` prints, so
the page and the command never disagree. The page must stay usable when the FHIR server is
down or the settings are wrong (that is when people open it): such problems become banners,
never a 500. While a migration runs the page refreshes itself every few seconds and shows its
progress, rate and ETA from the attempt the run records in the state, whoever started it.

The actions change state only on POST (CSRF-protected: the admin wraps every view in
csrf_protect), are superuser-only, and are the command's own verbs. Apply, Continue and
Cancel run `fhirmigrate --noinput [--cancel]` in the background (background.py: a task, or a
detached process), never inside the web request, and return at once; Pause and Break the lock
are a single write to the state and run here. Apply, Cancel and Break the lock ask for a
confirmation first; Pause and Continue are undone by each other and do not.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from . import background
from .background import Launch, source_name
from .conf import get_settings
from .console import format_seconds
from .engine import FhirMigrationError, Project
from .engine.clock import parse_datetime
from .engine.events import Event, StopRequested
from .engine.redaction import scrub
from .engine.state import AttemptRecord
from .engine.status import ProjectStatus, ScriptStatus
from .models import VIEW_PERMISSION
from .signals import SignalSender

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

AUDIT_EVENTS_SHOWN = 20
ADMIN_COMMAND = "Django admin"
REFRESH_SECONDS = 3  # while something runs, the status page reloads itself this often
LAUNCH_KEY = "fhir_migrations_launch"  # the session's last background run started from the page
LAUNCH_SHOWN_FOR = 24 * 3600


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
    paused: str = ""  # stopped on request: "by alice (Django admin) at ..."
    cancelling: bool = False  # its unfinished application is being reverted
    written: int = 0
    total: int | None = None
    rate: str = ""  # "85/s"
    eta: str = ""  # "about 3 min left"
    percent: int | None = None
    counted: str = ""  # "1,200 of 3,000"

    @property
    def state(self) -> str:
        if self.running:
            return "cancelling" if self.cancelling else "running"
        if self.paused:
            return "paused"
        return {True: "applied", False: "pending", None: "unknown"}[self.applied]

    def with_attempt(self, attempt: AttemptRecord | None) -> ScriptRow:
        """Its unfinished attempt's figures, as the run last recorded them (at most every 5 s)."""
        if attempt is None:
            return self
        self.paused, self.cancelling = attempt.paused, bool(attempt.reverts)
        self.written, self.total = attempt.written, attempt.total
        self.counted = f"{self.written:,}" + (f" of {self.total:,}" if self.total else "")
        rate, eta = attempt.rate(), attempt.eta_seconds()
        self.rate = f"{rate:,.0f}/s" if rate else ""
        self.eta = f"about {format_seconds(eta)} left" if eta is not None else ""
        if self.total:
            self.percent = min(100, int(100 * self.written / self.total))
        return self

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
    rows = []
    for row in status.scripts:
        attempt = status.state.attempt_for(row.script.revision) if known and status.state else None
        running = lock is not None and attempt is not None and not attempt.paused
        rows.append(ScriptRow.build(row, known, running=running).with_attempt(attempt))
    control = status.state.control if known and status.state and lock is not None else None
    unfinished = [r for r in rows if r.progress]
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
        "paused": [r for r in rows if r.paused and not r.running],
        "pending_count": len(status.pending) if known else None,
        "applied_count": len(status.applied) if known else None,
        "head_script": status.head_script,
        "apply_blocked": blocked,
        # Pause: a run holds the lease and was not asked to stop yet. Cancel: something is
        # unfinished (running, paused or interrupted) and no cancel was asked for.
        "stop_requested": control,
        "can_pause": lock is not None and control is None and any(r.running and not r.cancelling for r in rows),
        "can_cancel": bool(unfinished) and (control is None or control.action != "cancel")
        and not any(r.cancelling and r.running for r in rows),
    }


# --- the pages -----------------------------------------------------------------------------


def status_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    status, settings_error = load_status()
    context: dict[str, Any] = {
        **model_admin.admin_site.each_context(request),
        **status_context(status),
        "title": "FHIR migrations",
        "opts": model_admin.model._meta,
        "settings_error": settings_error,
        "can_act": request.user.is_superuser,
        "migrate_url": _url(model_admin, "migrate"),
        "break_lock_url": _url(model_admin, "break_lock"),
        "pause_url": _url(model_admin, "pause"),
        "cancel_url": _url(model_admin, "cancel"),
    }
    launch = _last_launch(request)
    if launch is not None:
        phase, detail = launch.check()
        context.update(launch=launch, launch_phase=phase, launch_detail=detail,
                       launch_started=datetime.fromtimestamp(launch.started_at).astimezone())
    # Reload while a run holds the lease, or while the one started from here has not taken it yet.
    leased = status is not None and status.lock is not None and not status.lock_expired
    waiting = context.get("launch_phase") in ("queued", "running")
    context["refresh"] = REFRESH_SECONDS if leased or waiting else 0
    return TemplateResponse(request, "admin/django_fhir_migrations/status.html", context)


def migrate_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: what would be applied, and a confirmation form. POST with confirm: start applying it
    in the background (also the paused migration's Continue), and return at once."""
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
        paused = status_context(status)["paused"]
        what = (f"Continuing {paused[0].label}/{paused[0].name}" if paused
                else f"Applying {len(status.pending)} migration(s)")
        return _start(model_admin, request, "migrate", what)
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
        def run(project: Project, events: list[Event]) -> str:
            outcome = project.break_lock(confirm=None)
            return "" if outcome.exit_code else f"Broke the migration lock held by {holder}."

        return _run_action(model_admin, request, run)
    return _confirm(model_admin, request, status, action="break_lock",
                    question=f"Break the migration lock held by {status.lock.describe()}?",
                    button="Yes, break the lock")


def pause_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """POST: ask the running migration to pause (`fhirmigrate --pause`, without waiting): it
    stops at its next bundle boundary, within seconds, and Continue resumes it."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    status = _action_preamble(model_admin, request)
    if not isinstance(status, ProjectStatus):
        return status

    def run(project: Project, events: list[Event]) -> str:
        project.request_pause(wait=0)
        asked = next((e for e in events if isinstance(e, StopRequested)), None)
        if asked is None:
            return "No migration is running: there is nothing to pause."
        holder = asked.holder
        return (f"Asked the running migration ({holder}) to pause: it stops at its next bundle, "
                "within a few seconds, and Continue resumes it.")

    return _run_action(model_admin, request, run)


def cancel_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """GET: what would be cancelled, and a confirmation form. POST with confirm: run
    `fhirmigrate --cancel --noinput` in the background (it stops the running migration, waits
    for it, and reverts what its unfinished application wrote; that can take long)."""
    status = _action_preamble(model_admin, request)
    if not isinstance(status, ProjectStatus):
        return status
    context = status_context(status)
    if not context["can_cancel"]:
        messages.info(request, "No migration is running, paused or unfinished: there is nothing to cancel."
                      if not status.server_error else f"Cannot read the state: {status.server_error}")
        return _back(model_admin)
    names = ", ".join(f"{r.label}/{r.name}" for r in context["rows"] if r.progress)
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        return _start(model_admin, request, "cancel", f"Cancelling {names}")
    return _confirm(model_admin, request, status, action="cancel",
                    question=f"Cancel {names} and revert what it wrote on {status.base_url}?",
                    button="Yes, cancel it")


# --- pieces --------------------------------------------------------------------------------


def _start(model_admin: ModelAdmin, request: HttpRequest, action: str, what: str) -> HttpResponse:
    """Start `fhirmigrate --noinput` (`action`) in the background as this user; back at once."""
    previous = _last_launch(request)
    if previous is not None and previous.action == action and previous.active:
        # A second click while the first run has not taken the lease yet would only queue behind it.
        messages.error(request, "The run started from this page has not finished yet; this page follows it.")
        return _back(model_admin)
    try:
        launch = background.start(action, applied_by=f"{request.user.get_username()} (Django admin)")
    except Exception as exc:  # noqa: BLE001 - a task backend or the OS refused: say so, no 500
        messages.error(request, scrub(f"Could not start the run in the background: {type(exc).__name__}: {exc}"))
        return _back(model_admin)
    request.session[LAUNCH_KEY] = launch.to_dict()
    where = (f"as task {launch.ref}" if launch.how == "task"
             else f"as process {launch.ref}, output in {launch.log}")
    messages.success(request, f"{what} in the background ({where}); this page follows its progress.")
    return _back(model_admin)


def _last_launch(request: HttpRequest) -> Launch | None:
    launch = Launch.from_dict(request.session.get(LAUNCH_KEY))
    if launch is None or time.time() - launch.started_at > LAUNCH_SHOWN_FOR:
        return None
    return launch



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


def _run_action(model_admin: ModelAdmin, request: HttpRequest,
                run: Callable[[Project, list[Event]], str]) -> HttpResponse:
    """An action that is one quick engine call, here in the request: `run` gets the project and
    the events it emitted so far, and returns the success message."""
    user = request.user.get_username()
    events: list[Event] = []
    try:
        settings = get_settings().with_overrides(applied_by=f"{user} (Django admin)")
        project = Project(settings, listeners=[events.append, SignalSender(settings)],
                          command=ADMIN_COMMAND, source=source_name(), stdout=io.StringIO())
    except FhirMigrationError as exc:
        messages.error(request, str(exc))
        return _back(model_admin)
    try:
        done = run(project, events)
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


__all__ = ["VIEW_PERMISSION", "break_lock_view", "cancel_view", "load_status", "migrate_view", "pause_view",
           "status_view"]
