"""What a person sees: engine events as lines, one yes/no prompt, errors with their remedy.

Every front door (the manage.py commands, the `fhir-migrations` CLI, the Flask blueprint, the
seed facade) builds one `Console` with its own `Vocabulary` (what its commands are called:
`fhirmigrate`, `fhir-migrations migrate`, `flask upgrade`), its own way of writing a line and
styling it, and subscribes `Console.on_event` to the engine's events. So the words a user
reads are the same everywhere, and a remedy names the command they would actually type.
No Django or click here: front ends pass their writers and stylers in.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .engine.errors import PLAIN_NAMES, ChecksumMismatchError, ConfigurationError, FhirMigrationError
from .engine.events import (
    Adopted,
    ApplyFailed,
    ApplyStart,
    ApplySuccess,
    BreakLockQuestion,
    BulkJobForgotten,
    BulkJobKept,
    BundleFailures,
    BundleIntercepted,
    CancelKept,
    Cancelled,
    CancelQuestion,
    ChecksumsAccepted,
    ChecksumWarning,
    Confirm,
    DryRunDone,
    DryRunScript,
    DryRunStart,
    Event,
    ForgetBulkJobQuestion,
    LockBroken,
    LockFree,
    LockKept,
    LockTakenOver,
    LockWait,
    NothingRunning,
    NothingToDo,
    OutOfOrder,
    Paused,
    Plan,
    Progress,
    Question,
    RecordsIgnored,
    Reset,
    Resumed,
    RetryStart,
    RunDone,
    RunStart,
    ScriptCreated,
    StopPending,
    StopRequested,
    Throttle,
    VerifyOnly,
    VerifyStart,
    WriteIntercepted,
)
from .engine.redaction import scrub

Output = Callable[[str], None]  # writes one line
Styler = Callable[[str, str], str]  # (kind, text) -> styled text

LOGGER = "django_fhir_migrations"
PROGRESS_LINE_EVERY = 10.0  # seconds between progress lines when there is no terminal
PROMPT = "Type 'yes' to continue, or 'no' to cancel: "


@dataclass(frozen=True)
class Vocabulary:
    """How one front door names things: its command per verb and its flags (PLAIN_NAMES' keys)."""

    names: Mapping[str, str]
    example: str  # how to name a new migration, e.g. "fhirmakemigration add_mrn"

    def command(self, verb: str) -> str:
        return self.names.get(verb, verb)


DJANGO = Vocabulary(
    {**PLAIN_NAMES, "makemigration": "fhirmakemigration", "migrate": "fhirmigrate",
     "downgrade": "fhirdowngrade", "reset": "fhirreset", "showmigrations": "fhirshowmigrations",
     "history": "fhirhistory", "folder_flag": "--app"},
    example="fhirmakemigration add_mrn",
)
CLI = Vocabulary(
    {**PLAIN_NAMES, **{verb: f"fhir-migrations {verb}" for verb in
                       ("makemigration", "migrate", "downgrade", "reset", "showmigrations", "history")},
     "folder_flag": "--dir FOLDER"},
    example="fhir-migrations makemigration add_mrn",
)
FLASK = Vocabulary(
    {**PLAIN_NAMES, "makemigration": "flask migrate", "migrate": "flask upgrade",
     "downgrade": "flask downgrade", "reset": "flask reset", "showmigrations": "flask showmigrations",
     "history": "flask history", "folder_flag": "--dir FOLDER", "noinput_flag": "--yes"},
    example="flask migrate add_mrn",
)
PLAIN = Vocabulary(dict(PLAIN_NAMES), example="makemigration add_mrn")


@dataclass
class DryRunSummary:
    """A dry run's intercepted writes, per method and resource type: how many, and the first
    few `Type/id` (2,000 creates are one line, not 2,000)."""

    EXAMPLES = 3
    groups: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # -> [count, ids]
    bundles: int = 0

    def add(self, event: WriteIntercepted) -> None:
        group = self.groups.setdefault((event.method, event.resource_type), [0, []])
        group[0] += event.count
        if event.resource_id and len(group[1]) < self.EXAMPLES:
            group[1].append(f"{event.resource_type}/{event.resource_id}")

    @property
    def total(self) -> int:
        return sum(count for count, _ in self.groups.values())

    def lines(self) -> list[str]:
        lines = []
        for (method, resource_type), (count, examples) in self.groups.items():
            shown = ""
            if examples:
                more = f" and {count - len(examples):,} more" if count > len(examples) else ""
                shown = f" ({', '.join(examples)}{more})"
            lines.append(f"[dry-run] {method} {resource_type or '(base URL)'}: {count:,}{shown}")
        return lines


def _label(script: Any) -> str:
    return f"{script.label}/{script.name} ({script.short})"


def _listed(labels: Sequence[str], count: int) -> str:
    """`a, b, c and 12 more`: the first few of `count` things."""
    more = f" and {count - len(labels)} more" if count > len(labels) else ""
    return f"{', '.join(labels)}{more}"


@dataclass
class Console:
    """Lines to stdout/stderr at a verbosity (Django's meaning: 0 errors only ... 3 debug)."""

    vocabulary: Vocabulary
    out: Output
    err: Output
    verbosity: int = 1
    styler: Styler | None = None
    interactive: bool = True
    ask: Callable[[str], str] = input
    stream: IO[str] | None = None  # the terminal, if any, for progress bars
    _bars: dict[str, Any] = field(default_factory=dict)
    _dry_run: DryRunSummary = field(default_factory=lambda: DryRunSummary())
    _last_line: dict[str, float] = field(default_factory=dict)

    # --- writing ---------------------------------------------------------------------------

    def line(self, kind: str, text: str, level: int = 1, *, to_stdout: bool = False) -> None:
        """One line of `kind` (heading, info, success, warning, error), scrubbed and styled;
        errors go to stderr unless the line is part of a report (`to_stdout`)."""
        if self.verbosity < level:
            return
        text = scrub(text)
        if self.styler is not None:
            text = self.styler(kind, text)
        (self.err if kind == "error" and not to_stdout else self.out)(text)

    def error_text(self, exc: FhirMigrationError, renames: Mapping[str, str] | None = None) -> str:
        """The error's paragraph, its remedy naming this front door's commands and, for a
        setting, the name the user gave it (a flag, an app.config key)."""
        if isinstance(exc, ConfigurationError) and renames and exc.setting in renames:
            exc = ConfigurationError(renames[exc.setting], exc.problem)
        return scrub(exc.render(dict(self.vocabulary.names)))

    def report(self, exc: FhirMigrationError, renames: Mapping[str, str] | None = None) -> int:
        """Say the error, once, as one paragraph on stderr; its exit status."""
        self.line("error", f"Error: {self.error_text(exc, renames)}", 0)
        return exc.exit_code

    # --- asking ------------------------------------------------------------------------------

    def confirm(self) -> Confirm | None:
        """A yes/no prompt for the engine's questions, or None (meaning yes) when not
        interactive (--noinput, --yes)."""
        if not self.interactive:
            return None

        def ask(question: Question) -> bool:
            self.out(self.question_text(question))
            try:
                answer = self.ask(PROMPT)
            except (EOFError, OSError):
                self.line("error", f"No answer (stdin closed); pass {self.command('noinput_flag')} "
                                   "to confirm without asking.", 0)
                return False
            return answer.strip().lower() == "yes"

        return ask

    def question_text(self, question: Question) -> str:
        if isinstance(question, BreakLockQuestion):
            return (f"The migration lock on state {question.state_id!r} is held by "
                    f"{question.holder}: {question.condition}. Break it? If that process is still "
                    "running, it will stop before recording anything more.")
        if isinstance(question, CancelQuestion):
            names = ", ".join(question.names) or "the running migration"
            return (f"This stops {names} on state {question.state_id!r} and reverts every resource "
                    "its unfinished application wrote. Cancel it?")
        if isinstance(question, ForgetBulkJobQuestion):
            return (f"An interrupted migration on state {question.state_id!r} started a bulk job on "
                    f"the server, or may have ({question.jobs}). If it still runs, the next run "
                    "would patch its resources a second time. Forget it?")
        migrate = self.command("migrate")
        return (f"This forgets which FHIR migrations are applied on state {question.state_id!r} at "
                f"{question.base_url}. No resource data is changed, but the next `{migrate}` will "
                "run every migration again, and ctx.undo() of migrations applied so far will not "
                f"be possible until they are applied again or re-adopted with `{migrate} --fake`.")

    def command(self, verb: str) -> str:
        """The front door's name of a verb (`fhirmigrate`) or flag (PLAIN_NAMES' keys)."""
        return self.vocabulary.command(verb)

    # --- engine events: one handler per action (events.EVENTS) --------------------------------

    def on_event(self, event: Event) -> None:
        getattr(self, f"_on_{event.action}")(event)

    def _on_nothing_to_do(self, event: NothingToDo) -> None:
        if event.direction == "downgrade":
            self.line("info", "No migrations to revert.")
        elif event.reason == "another_process":
            self.line("info", "No migrations to apply (another process applied them).")
        elif event.reason == "below_head" and event.script is not None:
            self.line("info", f"No migrations to apply: {_label(event.script)} is below the head, "
                              "so everything up to it is applied. To go back to it, run "
                              f"`{self.command('downgrade')} {event.script.name}`.")
        else:
            self.line("info", "No migrations to apply.")

    def _on_plan(self, event: Plan) -> None:
        self.line("heading", "Unapplied migrations:" if event.check else "Planned operations:")
        for script in event.scripts:
            doc = f": {script.doc}" if script.doc else ""
            self.line("info", f"  {event.direction} {script.label}/{script.name} ({script.revision}){doc}")

    def _on_run_start(self, event: RunStart) -> None:
        verb = ({"upgrade": "Applying", "downgrade": "Reverting"} if not event.fake
                else {"upgrade": "Faking", "downgrade": "Unfaking"})[event.direction]
        self.line("heading", f"{verb} {len(event.scripts)} migration(s) on state {event.state_id!r}:")

    def _on_apply_start(self, event: ApplyStart) -> None:
        verb = {"upgrade": "Applying", "downgrade": "Reverting"}[event.direction]
        self.line("info", f"  {verb} {_label(event.script)}...")

    def _on_apply_success(self, event: ApplySuccess) -> None:
        failures = event.failures
        counted = f", {failures:,} failure{'' if failures == 1 else 's'}" if failures else ""
        self.line("success", f"    {'FAKED' if event.fake else 'OK'} ({event.duration:.2f}s{counted})")
        if event.fake or event.direction != "upgrade":
            return
        if event.retried is not None:
            accepted = (f"; its edited checksum {event.accepted_checksum} is accepted"
                        if event.accepted_checksum else "")
            self.line("info", f"    Retried {event.retried} failed resource(s): {failures} still "
                              f"fail{accepted}.")
        elif failures:
            self.line("info", f"    With {failures} failure(s) within its budget.")

    def _on_apply_failed(self, event: ApplyFailed) -> None:
        """Nothing here: the error is raised to the front door, which says it once."""

    def _on_verify_start(self, event: VerifyStart) -> None:
        self.line("info", "    verifying...", 2)

    def _on_verify_only(self, event: VerifyOnly) -> None:
        self.line("info", "    upgrade() already ran with this script; running verify() again")

    def _on_run_done(self, event: RunDone) -> None:
        verb = ({"upgrade": "Applied", "downgrade": "Reverted"} if not event.fake
                else {"upgrade": "Faked", "downgrade": "Unfaked"})[event.direction]
        count = len(event.scripts)
        self.line("success", f"{verb} {count} migration{'' if count == 1 else 's'} in "
                             f"{event.duration:.1f} s.")

    def _on_throttle(self, event: Throttle) -> None:
        self.line("warning", f"    {event.change}")

    def _on_stop_requested(self, event: StopRequested) -> None:
        self.line("info", f"Asked the migration run by {event.holder} to {event.stop}; it stops at "
                          "its next bundle (within a few seconds)...")

    def _on_stop_pending(self, event: StopPending) -> None:
        if event.stop == "finished":
            self.line("info", "The run finished before it could pause: nothing is paused.")
        else:
            self.line("warning", f"The running migration has not stopped yet; it will {event.stop} "
                                 "at its next bundle.")

    def _on_nothing_running(self, event: NothingRunning) -> None:
        self.line("info", f"No migration is running or unfinished on state {event.state_id!r}: "
                          "nothing to pause or cancel.")

    def _on_paused(self, event: Paused) -> None:
        what = _label(event.script) if event.script is not None else "the migration"
        asked = event.when or f"at the request of {event.by}"
        self.line("success", f"    Paused {what} {asked} after {event.count:,} resource(s). "
                             f"`{self.command('migrate')}` continues it.")

    def _on_cancelled(self, event: Cancelled) -> None:
        if event.by_running_process:
            self.line("success", "Cancelled: the running migration reverted what it had written.")
            return
        what = _label(event.script) if event.script is not None else "the migration"
        self.line("success", f"    Cancelled {what}: {event.count:,} resource(s) it wrote were "
                             "reverted; nothing is recorded as applied.")

    def _on_cancel_kept(self, event: CancelKept) -> None:
        self.line("info", "Cancel cancelled: nothing was changed.")

    def _on_retry_start(self, event: RetryStart) -> None:
        edited = (" The script was edited since it was applied: its new checksum will be accepted "
                  "and recorded." if event.edited else "")
        self.line("heading", f"Retrying {_label(event.script)} over the {event.count:,} resource(s) "
                             f"it left as failures.{edited}")

    def _on_dry_run_start(self, event: DryRunStart) -> None:
        self.line("heading", f"Dry run: {len(event.scripts)} migration(s), writes are printed and "
                             "not sent, nothing is recorded:")

    def _on_dry_run_script(self, event: DryRunScript) -> None:
        self.line("info", f"  {event.direction} {_label(event.script)}")
        self._dry_run = DryRunSummary()

    def _on_bundle_intercepted(self, event: BundleIntercepted) -> None:
        self._dry_run.bundles += 1
        self.line("info", f"  [dry-run] {event.kind} bundle of {event.count:,} entries:", 2)

    def _on_write_intercepted(self, event: WriteIntercepted) -> None:
        self._dry_run.add(event)
        self.line("info", f"  [dry-run] {event.request}", 2)

    def _on_dry_run_done(self, event: DryRunDone) -> None:
        for line in self._dry_run.lines():
            self.line("info", f"    {line}")
        summary, self._dry_run = self._dry_run, DryRunSummary()
        bundles = f" in {summary.bundles:,} bundle(s)" if summary.bundles else ""
        listed = "" if self.verbosity >= 2 or not summary.total else "; -v 2 lists each one"
        self.line("info", f"    {summary.total:,} write(s) intercepted{bundles}{listed}")

    def _on_checksum_warning(self, event: ChecksumWarning) -> None:
        if event.direction == "downgrade":
            edited = ", ".join(f"{s.name} ({s.short})" for s in event.scripts)
            self.line("warning", f"Warning: {edited} was edited since it was applied: its downgrade "
                                 "runs as the file is now.")
        else:
            self.line("warning", f"Warning: {self.error_text(ChecksumMismatchError(event.scripts))}")

    def _on_out_of_order(self, event: OutOfOrder) -> None:
        script = event.script
        self.line("warning", f"Warning: {script.name} ({script.revision}) sits below migrations that "
                             "are already applied; it will be applied now, out of order.")

    def _on_lock_wait(self, event: LockWait) -> None:
        self.line("warning", f"Waiting up to {event.timeout:.0f}s for the migration lock held by "
                             f"{event.holder}...")

    def _on_lock_free(self, event: LockFree) -> None:
        self.line("info", f"No process holds the migration lock on state {event.state_id!r}.")

    def _on_lock_kept(self, event: LockKept) -> None:
        self.line("info", "Lock left in place.")

    def _on_lock_taken_over(self, event: LockTakenOver) -> None:
        why = (f"its process (pid {event.pid}) is no longer running on this host"
               if event.reason == "holder_gone" else "its lease expired")
        self.line("warning", f"Took over the migration lock held by {event.holder}: {why}.")

    def _on_lock_broken(self, event: LockBroken) -> None:
        self.line("success", f"Broke the migration lock held by {event.holder}.")

    def _on_reset(self, event: Reset) -> None:
        self.line("success", f"Migration state {event.state_id!r} reset: no migration is recorded "
                             "as applied.")

    def _on_script_created(self, event: ScriptCreated) -> None:
        self.line("success", f"Created {event.path} (revision {event.revision}, revises "
                             f"{', '.join(event.parents) or 'None'}).")

    def _on_checksums_accepted(self, event: ChecksumsAccepted) -> None:
        if not event.scripts:
            self.line("info", "No applied migration was edited: there is no checksum to accept.")
            return
        for script in event.scripts:
            self.line("success", f"Accepted the edited {_label(script)}: its checksum is now "
                                 f"{script.checksum}.")

    def _on_resumed(self, event: Resumed) -> None:
        self.line("warning", f"    Resuming an interrupted attempt: {event.count:,} resource(s) it "
                             "wrote are skipped.")
        if event.ignored_count:
            self.line("warning", f"    Warning: {event.ignored_count} record(s) tagged with the "
                                 "interrupted attempt could not be verified as this tool's and were "
                                 f"ignored: {_listed(event.ignored, event.ignored_count)}.")

    def _on_records_ignored(self, event: RecordsIgnored) -> None:
        self.line("warning", f"    Warning: undo ignored {event.count} record(s) or target(s) it "
                             "cannot prove this tool wrote for this migration: "
                             f"{_listed(event.labels, event.count)}.")

    def _on_adopted(self, event: Adopted) -> None:
        name = event.script.name
        if event.attempts:
            self.line("info", f"    Adopted the recorded writes of {event.attempts} earlier "
                              f"attempt(s) of {name} ({event.resources:,} resource(s), recorded "
                              f"{event.first} to {event.last}): ctx.undo() can revert them.")
        else:
            self.line("info", f"    No earlier application of {name} to adopt ({event.why}): "
                              "ctx.undo() cannot revert it.")

    def _on_bulk_job_forgotten(self, event: BulkJobForgotten) -> None:
        if not event.jobs:
            self.line("info", "No interrupted migration has a bulk job to forget.")
            return
        self.line("success", f"Forgot the bulk job ({event.jobs}); the next "
                             f"`{self.command('migrate')}` starts a new one.")

    def _on_bulk_job_kept(self, event: BulkJobKept) -> None:
        self.line("info", "Bulk job kept.")

    def _on_bundle_failures(self, event: BundleFailures) -> None:
        groups = "; ".join(f"{count} x {status} {message} ({', '.join(examples)})".replace("  ", " ")
                           for status, count, message, examples in event.groups)
        entries = f"{event.count} entr{'y' if event.count == 1 else 'ies'}"
        self.line("warning", f"    Warning: {entries} refused, within the budget of {event.budget}"
                             f"{': ' + groups if groups else ''}.")

    def _on_progress(self, event: Progress) -> None:
        """A bar on a terminal when tqdm (the [progress] extra) is installed; otherwise a line
        every PROGRESS_LINE_EVERY seconds. Either way the end is one line with the count and
        the rate (the bar's own final state, or a line), however short the run was."""
        key = event.label
        if event.final:
            self._last_line.pop(key, None)
            if not self._close_bar(key, event.count):
                self.line("info", f"    {progress_summary(event)}")
            return
        counted = event.count is not None and (event.count > 0 or event.total is not None)
        if counted and self._terminal() and self._bar(event, key):
            return
        now = time.monotonic()
        last = self._last_line.setdefault(key, now)
        if now - last >= PROGRESS_LINE_EVERY:
            self._last_line[key] = now
            self.line("info", f"    {progress_summary(event)}")

    def _terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(self.verbosity >= 1 and isatty and isatty())

    def _bar(self, event: Progress, key: str) -> bool:
        """Draw (or advance) the bar; False when tqdm is not installed."""
        try:
            from tqdm import tqdm
        except ImportError:  # the [progress] extra is not installed: lines instead
            self.stream = None
            return False
        bar = self._bars.get(key)
        if bar is None:
            bar = self._bars[key] = tqdm(total=event.total, desc=key, file=self.stream, leave=True)
        bar.update((event.count or 0) - bar.n)
        return True

    def _close_bar(self, key: str, count: int | None) -> bool:
        """Close the bar of `key` at its final count (that state, with the rate, stays on
        screen); False when there was none."""
        bar = self._bars.pop(key, None)
        if bar is None:
            return False
        bar.update((count or 0) - bar.n)
        bar.close()
        return True


def progress_summary(event: Progress) -> str:
    """`MRN: 1,200/2,000 done (310/s, about 3 s left)` while running, `MRN: 2,000 done in 6.4s
    (312/s)` at the end;
    a progress without a count (a server's bulk job) says only what it is and how long."""
    elapsed = event.duration or 0.0
    if event.count is None or (not event.final and not event.count and event.total is None):
        return f"{event.label} in {elapsed:.1f}s" if event.final else f"{event.label} ({elapsed:.0f}s)"
    of = f"/{event.total:,}" if event.total and not event.final else ""
    per_second = event.count / elapsed if elapsed > 0 else 0.0
    left = ""
    if not event.final and event.total and per_second > 0 and event.total > event.count:
        left = f", about {format_seconds((event.total - event.count) / per_second)} left"
    rate = f" ({per_second:,.0f}/s{left})" if per_second > 0 else ""
    took = f" in {elapsed:.1f}s" if event.final else ""
    return f"{event.label}: {event.count:,}{of} done{took}{rate}"


def format_seconds(seconds: float) -> str:
    """'45 s', '12 min', '3 h 20 min': how long, as a person says it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def configure_logging(verbosity: int, stream: IO[str] | None = None) -> None:
    """-v 2 shows the engine's INFO log lines on stderr, -v 3 its DEBUG lines too.

    Left alone when the application configured logging itself (any handler present).
    """
    logger = logging.getLogger(LOGGER)
    if verbosity < 2 or logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity >= 3 else logging.INFO)


def stream_writer(stream: IO[str]) -> Output:
    """An Output for a plain text stream: one line, flushed (so progress shows in CI logs)."""

    def write(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    return write


def plain_console(vocabulary: Vocabulary = PLAIN, *, stdout: IO[str] | None = None,
                  stderr: IO[str] | None = None, verbosity: int = 1, styler: Styler | None = None,
                  interactive: bool = True) -> Console:
    """A console on two text streams (the CLI and the seed facade)."""
    out = stdout or sys.stdout
    return Console(vocabulary, out=stream_writer(out), err=stream_writer(stderr or sys.stderr),
                   verbosity=verbosity, styler=styler, interactive=interactive, stream=out)
