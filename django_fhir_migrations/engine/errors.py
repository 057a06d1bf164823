"""Every error the engine raises on purpose.

Each class keeps the facts as attributes (tests assert on those) and builds a one-paragraph
message from them: what is wrong, then what to do. The "what to do" part may name a command
(`{makemigration} --merge`, `{migrate} --break-lock`); the engine does not know which front end
runs it, so such a remedy is a template with one placeholder per verb, and each front end
renders it with its own command names (`render(names)`: `fhirmigrate` for manage.py,
`fhir-migrations migrate` for the CLI, `flask upgrade` for the seed blueprint). `str(error)` uses
the verbs' plain names. Front ends catch `FhirMigrationError` and print the message; anything
else is a bug and shows a traceback. Messages never contain credentials: they name files,
revisions, settings and URLs only, and are scrubbed when made.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .frames import script_frame, suggestion
from .redaction import scrub

# The verbs a remedy may name, with the names `str(error)` gives them (no front end's).
PLAIN_NAMES: dict[str, str] = {
    "makemigration": "makemigration", "migrate": "migrate", "downgrade": "downgrade",
    "reset": "reset", "showmigrations": "showmigrations", "history": "history",
    "folder_flag": "--dir", "noinput_flag": "--noinput",
}


class FhirMigrationError(Exception):
    """Base class: a problem the user can act on. `exit_code` is what front ends exit with.

    `problem` is the facts; `remedy` what to do, a template over PLAIN_NAMES' keys. Both are
    scrubbed of every known credential (server texts and script exceptions end up in them).
    """

    exit_code = 1

    def __init__(self, problem: str = "", remedy: str = ""):
        self.text = scrub(problem)
        self.remedy = remedy
        super().__init__(self.render(PLAIN_NAMES))

    def render(self, names: dict[str, str]) -> str:
        """The message with the remedy's commands named as the front end `names` them."""
        remedy = scrub(self.remedy.format_map(names)) if self.remedy else ""
        return f"{self.text} {remedy}".strip()


# --- configuration ----------------------------------------------------------------------


class ConfigurationError(FhirMigrationError):
    def __init__(self, setting: str, problem: str):
        self.setting = setting
        self.problem = problem
        super().__init__(f"Setting {setting}: {problem}")


# --- scripts and the revision graph -----------------------------------------------------


class ScriptError(FhirMigrationError):
    """A migration file that cannot be used as it is."""

    def __init__(self, path: Path | str, problem: str, *, label: str = ""):
        self.path = Path(path)
        self.problem = problem
        self.label = label  # the app label (or 'dir') of its folder, once the loader knows it
        super().__init__(f"Migration script {self.path}: {problem}")

    @property
    def display_name(self) -> str:
        """`labs/0006_cleanup`, as showmigrations names a script that loaded."""
        return f"{self.label or self.path.parent.name}/{self.path.stem}"


class RevisionError(FhirMigrationError):
    """The scripts do not form one valid chain (or a target names nothing)."""


def _describe(scripts: Iterable) -> str:
    return ", ".join(f"{s.revision} ({s.path})" for s in scripts)


class DuplicateRevisionError(RevisionError):
    def __init__(self, revision: str, paths: Sequence[Path]):
        self.revision = revision
        self.paths = list(paths)
        files = " and ".join(str(p) for p in self.paths)
        super().__init__(
            f"Revision {revision} is declared by more than one script: {files}. "
            "Every script needs its own revision id; give one of them a new uuid4 hex and fix "
            "the down_revision of any script that pointed at it."
        )


class DanglingRevisionError(RevisionError):
    def __init__(self, missing: Sequence[tuple]):
        # missing: (script, parent revision it names that no script declares)
        self.missing = list(missing)
        self.revisions = [s.revision for s, _ in self.missing]
        self.paths = [s.path for s, _ in self.missing]
        parts = "; ".join(
            f"{s.path} (revision {s.revision}) has down_revision {parent!r}, which no script declares"
            for s, parent in self.missing
        )
        super().__init__(
            f"{parts}. Point down_revision at an existing revision (or None for the first script)."
        )


class CycleError(RevisionError):
    def __init__(self, cycle: Sequence):
        self.cycle = list(cycle)
        self.revisions = [s.revision for s in self.cycle]
        self.paths = [s.path for s in self.cycle]
        path = " -> ".join(f"{s.revision} ({s.path.name})" for s in self.cycle)
        super().__init__(
            f"The down_revision links form a cycle: {path} -> {self.cycle[0].revision}. "
            "Break it by pointing one of these scripts' down_revision further down the chain."
        )


class MultipleRootsError(RevisionError):
    def __init__(self, roots: Sequence):
        self.roots = list(roots)
        self.revisions = [s.revision for s in self.roots]
        super().__init__(
            f"More than one script has down_revision = None: {_describe(self.roots)}. "
            "Only the first migration may start the chain; set the others' down_revision to "
            "the revision they follow."
        )


class MultipleHeadsError(RevisionError):
    def __init__(self, heads: Sequence):
        self.heads = list(heads)
        self.revisions = [s.revision for s in self.heads]
        super().__init__(
            f"The migration history has more than one head: {_describe(self.heads)}. "
            "Two scripts were created on the same parent.",
            "Run `{makemigration} --merge NAME` to join them (or point one's down_revision at the "
            "other).",
        )


class UnknownTargetError(RevisionError):
    def __init__(self, target: str, suggestions: Sequence[str] = ()):
        self.target = target
        self.suggestions = list(suggestions)  # the nearest names (difflib), best first
        guess = ""
        if self.suggestions:
            guess = f" Did you mean {' or '.join(self.suggestions)}?"
        super().__init__(
            f"No migration matches {target!r}.{guess}",
            "Give a migration as `{showmigrations}` lists it (app/0002_add_mrn, or its name or "
            "number alone), a revision id (or a unique prefix of one), 'head', or for a "
            "downgrade 'zero'.",
        )


class AmbiguousTargetError(RevisionError):
    def __init__(self, target: str, candidates: Sequence, matched_by: str = "revision prefix"):
        self.target = target
        self.candidates = list(candidates)
        self.matched_by = matched_by  # "name", "number" or "revision prefix"
        listed = ", ".join(f"{s.label}/{s.name} ({s.revision})" for s in self.candidates)
        remedy = ("Give more characters of the revision id." if matched_by == "revision prefix"
                  else "Name one with its app label, as `{showmigrations}` lists it, or by its "
                       "revision.")
        super().__init__(
            f"{target!r} is ambiguous: its {matched_by} matches {len(self.candidates)} "
            f"migrations: {listed}.",
            remedy,
        )


# --- state on the server ----------------------------------------------------------------


class StateError(FhirMigrationError):
    """The state resource on the server cannot be trusted as it is."""


class UnknownStateRevisionError(StateError):
    def __init__(self, state_id: str, revisions: Sequence[str], resource_url: str):
        self.state_id = state_id
        self.revisions = list(revisions)
        self.resource_url = resource_url
        listed = ", ".join(self.revisions)
        super().__init__(
            f"The migration state {state_id!r} on the server ({resource_url}) records "
            f"revision(s) {listed}, but no migration script declares them. The state was left "
            "untouched.",
            "Deploy the code that has those scripts, check that STATE_ID / MIGRATION_RESOURCE_ID "
            "names the right state, or, if they are gone for good, run `{reset}` and "
            "`{migrate} --fake` up to where the data really is.",
        )


class CorruptStateError(StateError):
    def __init__(self, state_id: str, problem: str, resource_url: str = ""):
        self.state_id = state_id
        self.problem = problem
        self.resource_url = resource_url
        where = f" ({resource_url})" if resource_url else ""
        super().__init__(
            f"The migration state {state_id!r} on the server{where} cannot be read: {problem}. "
            "Nothing was changed. Repair or delete that Basic resource by hand."
        )


class ChecksumMismatchError(StateError):
    def __init__(self, drifted: Sequence):
        self.drifted = list(drifted)  # scripts whose source changed after being applied
        self.revisions = [s.revision for s in self.drifted]
        files = ", ".join(f"{s.path} ({s.revision})" for s in self.drifted)
        super().__init__(
            f"Applied migration(s) were edited after they ran: {files}. Their upgrade will not run "
            "again, so the edit has no effect on data already migrated.",
            "Revert the edit and put the change in a new migration, accept the edit as what the "
            "migration is with `{migrate} --accept-checksums` (recorded and audited), or pass "
            "--ignore-checksums to proceed this once.",
        )


class IrreversibleMigrationError(FhirMigrationError):
    def __init__(self, script):
        self.script = script
        self.revision = script.revision
        super().__init__(
            f"Migration {script.name} ({script.revision}, {script.path}) is marked irreversible; "
            "it cannot be downgraded. Nothing was reverted."
        )


# --- lock -------------------------------------------------------------------------------


class LockError(FhirMigrationError):
    pass


class LockTimeoutError(LockError):
    exit_code = 3

    def __init__(self, state_id: str, holder: str, waited: float):
        self.state_id = state_id
        self.holder = holder
        self.waited = waited
        super().__init__(
            f"Timed out after {waited:.0f}s waiting for the migration lock on state {state_id!r}, "
            f"held by {holder}.",
            "Try again later, raise --lock-timeout, or, if that process is gone, break the lock "
            "with `{migrate} --break-lock`.",
        )


class LeaseLostError(LockError):
    def __init__(self, state_id: str, detail: str):
        self.state_id = state_id
        self.detail = detail
        super().__init__(
            f"This process lost the migration lock on state {state_id!r} ({detail}). It stopped "
            "without recording anything further;",
            "run {migrate} again to continue.",
        )


# --- talking to the FHIR server ---------------------------------------------------------


class FhirServerError(FhirMigrationError):
    """The FHIR server could not be used for a request."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None, detail: str = ""):
        self.url = url
        self.status = status
        self.detail = scrub(detail)  # the server's own words (OperationOutcome), if any
        super().__init__(message)


class ServerUnreachableError(FhirServerError):
    pass


class AuthenticationError(FhirServerError):
    pass


class NotAFhirServerError(FhirServerError):
    pass


class ResourceNotFoundError(FhirServerError):
    pass


class VersionConflictError(FhirServerError):
    """A version-aware write was refused: someone else changed the resource since our read."""


class UntrustedResponseError(FhirServerError):
    """The server answered something we must not act upon (a `next` link to another origin,
    a paging loop, a bundle response that does not answer the bundle sent)."""


class VersionCheckNotEnforcedError(StateError):
    """The server accepted a write whose If-Match named a stale version."""

    def __init__(self, state_id: str, resource_url: str, base_url: str):
        self.state_id = state_id
        self.resource_url = resource_url
        self.base_url = base_url
        super().__init__(
            f"The FHIR server at {base_url} accepted an update of the migration state "
            f"{state_id!r} ({resource_url}) whose If-Match header named a stale version: it does "
            "not enforce If-Match (version-aware updates). Without it, the migration lock cannot "
            "keep two processes apart and a stale write can overwrite a newer one, so nothing "
            "was migrated. Use a server (or a server setting / gateway) that honours If-Match."
        )


class RunTimeExceededError(FhirMigrationError):
    """A migration ran longer than MAX_RUN_TIME."""

    def __init__(self, limit: float, during: str = ""):
        self.limit = limit
        self.during = during
        what = f" (stopped at {during})" if during else ""
        super().__init__(
            f"The migration ran longer than MAX_RUN_TIME ({limit:g}s){what}; its lease is no "
            "longer renewed and nothing more is sent for it."
        )


# --- running migrations -----------------------------------------------------------------


class MigrationFailedError(FhirMigrationError):
    def __init__(self, script, direction: str, error: BaseException, text: str | None = None):
        # `text`: the error as it may be shown (scrubbed of credentials by the caller). An
        # engine error raised inside the script keeps its remedy, so that the front door
        # names its own commands in it.
        self.script = script
        self.revision = script.revision
        self.direction = direction
        self.error = error
        remedy = "Fix it and run the command again to continue from here."
        if isinstance(error, FhirMigrationError) and text is None:
            shown = f"{type(error).__name__}: {error.text}"
            remedy = error.remedy or remedy
        else:
            shown = text if text is not None else f"{type(error).__name__}: {error}"
        # Where in the script it happened (file:line and the line, as pytest shows it), so a
        # typo is found without --traceback.
        self.frame = script_frame(error, script.path)
        hint = suggestion(error)
        if hint and hint not in shown:
            shown = f"{shown.rstrip('.')}. {hint}"
        where = f" ({self.frame.describe()})" if self.frame else ""
        super().__init__(
            f"Migration {script.name} ({script.revision}, {script.path}) failed during "
            f"{direction}: {shown.rstrip('.')}{where}. It was not recorded and nothing after it ran.",
            remedy,
        )


class VerificationError(FhirMigrationError):
    """A migration's verify(ctx) raised: its data did not verify, so it is not recorded."""

    def __init__(self, script, error: BaseException, text: str):
        self.script = script
        self.revision = script.revision
        self.error = error
        super().__init__(
            f"Migration {script.name} ({script.revision}, {script.path}) ran, but its data did not "
            f"verify: {text.rstrip('.')}. It was not recorded as applied.",
            "Fix the data or the script; `{migrate}` then runs verify() again (and upgrade() "
            "first only if the script was changed).",
        )


class BundleError(FhirMigrationError):
    """A batch or transaction bundle written through ctx did not fully succeed.

    `failures`: (status, count, message, examples) per kind of failure, examples as `Type/id`:
    a failed entry is never shown with its resource (clinical data stays out of messages).
    `committed`/`bundles`: for a transaction, what earlier bundles of the same block committed.
    """

    def __init__(self, kind: str, failures: Sequence[tuple[str, int, str, Sequence[str]]], *,
                 committed: int = 0, bundles: int = 0, budget: str = ""):
        self.kind = kind
        self.budget = budget  # the failure budget it went past, as said ("5 failures", "1 %")
        self.failures = [(status, count, message, list(examples))
                         for status, count, message, examples in failures]
        self.count = sum(count for _, count, _, _ in self.failures)
        parts = []
        for status, count, message, examples in self.failures[:5]:
            more = f" and {count - len(examples)} more" if count > len(examples) else ""
            parts.append(f"{count} x {status or 'error'}{': ' + message if message else ''} "
                         f"({', '.join(examples)}{more})")
        if len(self.failures) > 5:
            parts.append(f"{len(self.failures) - 5} other kind(s) of failure")
        earlier = ""
        if kind == "transaction":
            earlier = (f"; each bundle is its own transaction, and {committed} entr"
                       f"{'y' if committed == 1 else 'ies'} in {bundles} earlier bundle"
                       f"{'' if bundles == 1 else 's'} were committed"
                       f"{' (a resumed run skips them)' if committed else ''}")
        over = f" (more than its budget of {budget})" if budget else ""
        super().__init__(f"{kind} bundle: {self.count} entr{'y' if self.count == 1 else 'ies'} failed{over}: "
                         f"{'; '.join(parts)}{earlier}")


class UndoError(FhirMigrationError):
    """ctx.undo() cannot revert this migration (nothing recorded what it wrote)."""

    def __init__(self, script_name: str, revision: str, problem: str):
        self.revision = revision
        super().__init__(
            f"ctx.undo() cannot revert {script_name} ({revision}): {problem} Nothing was reverted.",
            "Write its downgrade by hand, or record it as reverted without running it "
            "(`{downgrade} --fake`) if its data may stay as it is.",
        )


class UndoConflictError(FhirMigrationError):
    """Resources the migration wrote were changed since: undo writes nothing."""

    def __init__(self, script_name: str, revision: str, changed: Sequence[tuple[str, str]], total: int):
        # changed: (Type/id, what happened) for the first ones; total: how many in all
        self.revision = revision
        self.changed = list(changed)
        self.total = total
        shown = "; ".join(f"{ref} ({what})" for ref, what in self.changed)
        more = f" and {total - len(self.changed)} more" if total > len(self.changed) else ""
        super().__init__(
            f"ctx.undo() of {script_name} ({revision}) wrote nothing: {total} resource(s) it wrote "
            f"were changed since the migration left them, and reverting them would overwrite "
            f"those changes: {shown}{more}.",
            "Decide in the migration's downgrade: `ctx.undo(force=True)` reverts the others and "
            "leaves these as they are now, or write the downgrade by hand for them (then "
            "`{downgrade}` again).",
        )


class WriterError(FhirMigrationError):
    def __init__(self, name: str, problem: str, remedy: str = ""):
        self.name = name
        self.problem = problem
        super().__init__(f"Cannot create migration {name!r}: {problem}", remedy)
