"""Django system checks (`manage.py check`, and `check --deploy`), registered by apps.py.

The everyday checks never touch the network: they validate the settings, find the script
folders, import every script and build the revision graph, so a broken script or a forked
history shows up on `runserver` rather than in the middle of a deploy. The deploy checks ask the
server whether migrations are pending (and warn when TLS verification is off); they are only run
by `check --deploy`, and an unreachable server is a warning, not a crash.

Ids are stable (tests and users silence them with SILENCED_SYSTEM_CHECKS):

    E001 invalid FHIR_MIGRATIONS setting or environment override
    E002 a scripts folder (SCRIPTS_DIRS, MIGRATION_SCRIPTS_DIR) does not exist
    E003 a migration script cannot be imported or is malformed (a Warning in the everyday
         checks, so `migrate`, `runserver` and `test` keep working; every fhir* command refuses)
    E004 duplicate revision        E005 down_revision points nowhere   E006 cycle
    E007 several roots             E008 several heads (merge needed)   E009 other graph problem
    W001 no FHIR server configured
    W002 (deploy) migrations are not applied on the server
    W003 (deploy) the server could not be asked
    W004 (deploy) TLS certificate verification is off
    W005 (deploy) the state on the server does not match the scripts
    W006 (deploy) applied scripts were edited after they ran
    E010 (deploy) migration scripts cannot be loaded (the deploy must not go on)
    W000 a check itself failed (a bug; reported, never raised)

Checks must never raise: each is wrapped so an unexpected exception becomes W000.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core import checks

from .conf import APP_SCRIPTS_FOLDER, get_settings, get_test_config
from .engine import Project
from .engine.config import ENV_VARS, SCRIPTS_DIR_ENV, Settings
from .engine.errors import (
    ConfigurationError,
    CycleError,
    DanglingRevisionError,
    DuplicateRevisionError,
    MultipleHeadsError,
    MultipleRootsError,
    RevisionError,
)
from .engine.redaction import scrub

TAG = "fhir_migrations"
SETTING = "FHIR_MIGRATIONS"
DEPLOY_TIMEOUT = 10.0  # seconds; a deploy check must not hang for TIMEOUT x RETRIES

GRAPH_ERRORS: dict[type[RevisionError], tuple[str, str]] = {
    DuplicateRevisionError: ("E004", "Give one of the scripts a new revision (a uuid4 hex)."),
    DanglingRevisionError: ("E005", "Point down_revision at an existing revision, or None for the "
                                    "first migration."),
    CycleError: ("E006", "Point one script's down_revision further down the chain."),
    MultipleRootsError: ("E007", "Only the first migration may have down_revision = None."),
    MultipleHeadsError: ("E008", "Run `manage.py fhirmakemigration --merge` to join the heads."),
}

Messages = list[checks.CheckMessage]


def _id(code: str) -> str:
    return f"{TAG}.{code}"


def never_raises(check: Callable[..., Messages]) -> Callable[..., Messages]:
    """A check that crashes would stop `runserver` and `migrate`; report the crash instead."""

    @functools.wraps(check)
    def wrapper(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> Messages:
        try:
            return check(app_configs, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the point of this wrapper
            return [checks.Warning(
                f"The FHIR migrations check {check.__name__} could not run: "
                f"{type(exc).__name__}: {scrub(str(exc))}",
                hint="This is a bug in django-fhir-migrations; please report it.",
                id=_id("W000"),
            )]

    return wrapper


def _concerns_us(app_configs: Sequence[AppConfig] | None) -> bool:
    """`check some_app` runs these only if some_app is ours or holds migration scripts."""
    if app_configs is None:
        return True
    return any(config.name == "django_fhir_migrations"
               or (Path(config.path) / APP_SCRIPTS_FOLDER).is_dir() for config in app_configs)


# --- everyday checks (no network) -------------------------------------------------------------


@checks.register(TAG)
@never_raises
def check_settings_and_scripts(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
                               ) -> Messages:
    if not _concerns_us(app_configs):
        return []
    messages: Messages = []
    raw = getattr(django_settings, SETTING, None) or {}
    if not isinstance(raw, Mapping):
        return [checks.Error(f"{SETTING} must be a dict, got {type(raw).__name__}.",
                             hint="See the Settings section of the README.", id=_id("E001"))]
    missing = list(_missing_folders(raw, os.environ))
    messages.extend(missing)
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        if not (missing and _is_folder_problem(exc)):
            messages.append(checks.Error(
                str(exc), hint=f"Correct {exc.setting}.",
                id=_id("E001"),
            ))
        return messages
    try:
        get_test_config()  # MigrationTester's TEST key: checked here, used by the project's tests
    except ConfigurationError as exc:
        messages.append(checks.Error(str(exc), hint=f"Correct {exc.setting}.", id=_id("E001")))
    if not settings.base_url:
        messages.append(checks.Warning(
            "No FHIR server is configured: the fhir* commands and the admin page cannot work.",
            hint=f"Set {SETTING}['BASE_URL'] or the environment variable FHIR_BASE_URL.",
            id=_id("W001"),
        ))
    messages.extend(_script_and_graph_messages(settings))
    return messages


def _missing_folders(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Iterable[checks.Error]:
    """Every configured scripts folder that is not there (Settings stops at the first)."""
    named: list[tuple[str, str]] = []
    folders = raw.get("SCRIPTS_DIRS") or []
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    if isinstance(folders, (list, tuple)):
        named += [(f"{SETTING}['SCRIPTS_DIRS']", str(f)) for f in folders]
    named += [(f"environment variable {SCRIPTS_DIR_ENV}", f)
              for f in environ.get(SCRIPTS_DIR_ENV, "").split(os.pathsep) if f]
    for where, folder in named:
        if not Path(folder).expanduser().is_dir():
            yield checks.Error(
                f"The migration scripts folder {folder!r} ({where}) does not exist or is not a "
                "folder.",
                hint=f"Create it, or correct {where}.", id=_id("E002"),
            )


def _is_folder_problem(exc: ConfigurationError) -> bool:
    return "SCRIPTS_DIRS" in exc.setting or SCRIPTS_DIR_ENV in exc.setting


def _script_and_graph_messages(settings: Settings, *, deploy: bool = False) -> Messages:
    """Broken scripts and graph problems, from the same status `fhirshowmigrations` prints.

    A script that cannot be loaded is a Warning in the everyday checks, so one syntax error in
    a FHIR migration does not stop `manage.py migrate`, `runserver` or `test`; every fhir*
    command still refuses to run, and `check --deploy` reports it as an Error. The id stays
    E003 either way (ids are stable; the level says what it blocks).
    """
    project = Project(settings, command="manage.py check")
    status = project.status(offline=True, validate=True)
    if deploy:
        if not status.broken:
            return []
        files = ", ".join(str(exc.path) for exc in status.broken)
        return [checks.Error(
            f"{len(status.broken)} FHIR migration script(s) cannot be loaded ({files}); every "
            "fhir* command refuses to run until they are fixed.",
            hint="See fhir_migrations.E003 for each file's problem.", id=_id("E010"),
        )]
    messages: Messages = [checks.Warning(
        str(exc), id=_id("E003"),
        hint="Fix the script (revision, down_revision, upgrade(ctx), downgrade(ctx)); "
             "helpers that are not migrations go in files starting with '_'.",
    ) for exc in status.broken]
    if messages:
        # A script that failed to load would make its children look dangling: report only
        # the load errors until they are fixed.
        return messages
    for problem in status.graph_problems:
        code, hint = GRAPH_ERRORS.get(type(problem), ("E009", "Fix the down_revision links."))
        messages.append(checks.Error(str(problem), hint=hint, id=_id(code)))
    return messages


# --- deploy checks (talk to the server) -------------------------------------------------------


@checks.register(TAG, deploy=True)
@never_raises
def check_server_before_deploy(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
                               ) -> Messages:
    if not _concerns_us(app_configs):
        return []
    try:
        settings = get_settings()
    except ConfigurationError:
        return []  # reported by check_settings_and_scripts
    messages: Messages = []
    if settings.verify_tls is False:
        origin = next((f"environment variable {env}" for env, key in ENV_VARS.items()
                       if key == "VERIFY_TLS" and os.environ.get(env)), f"{SETTING}['VERIFY_TLS']")
        messages.append(checks.Warning(
            f"TLS certificate verification is off ({origin} is false): the FHIR server's identity "
            "is not checked, and its credentials and data can be intercepted.",
            hint="Set VERIFY_TLS to True, or to the path of the CA bundle that signed the "
                 "server's certificate.",
            id=_id("W004"),
        ))
    if settings.base_url:
        messages.extend(_server_messages(settings))
    return messages


def _server_messages(settings: Settings) -> Messages:
    quick = settings.with_overrides(timeout=min(settings.timeout, DEPLOY_TIMEOUT), retries=0)
    messages = _script_and_graph_messages(quick, deploy=True)
    project = Project(quick, command="manage.py check --deploy")
    try:
        status = project.status()
    finally:
        project.close()
    if status.broken or status.graph_problems:
        return messages  # reported above, or by check_settings_and_scripts
    where = f"state {settings.state_id!r} on {settings.base_url}"
    if status.server_error:
        return [checks.Warning(
            f"Could not ask the FHIR server whether migrations are pending ({where}): "
            f"{status.server_error}",
            hint="Check BASE_URL, AUTH and the network; `manage.py fhirshowmigrations` "
                 "shows the same status.",
            id=_id("W003"),
        )]
    if status.state_problem is not None:
        return [checks.Warning(str(status.state_problem), id=_id("W005"),
                               hint="`manage.py fhirshowmigrations` shows the state.")]
    if status.pending:
        names = ", ".join(f"{r.script.label}/{r.script.name} ({r.script.short})" for r in status.pending)
        messages.append(checks.Warning(
            f"{len(status.pending)} FHIR migration(s) are not applied ({where}): {names}.",
            hint="Run `manage.py fhirmigrate` as part of the deploy (or gate it with "
                 "`manage.py fhirmigrate --check`).",
            id=_id("W002"),
        ))
    if status.drifted:
        files = ", ".join(f"{s.path} ({s.short})" for s in status.drifted)
        messages.append(checks.Warning(
            f"Applied migration script(s) were edited after they ran ({where}): {files}.",
            hint="Revert the edit and put the change in a new migration, or accept it with "
                 "`manage.py fhirmigrate --accept-checksums`.", id=_id("W006"),
        ))
    return messages


__all__ = ["TAG", "check_server_before_deploy", "check_settings_and_scripts"]
