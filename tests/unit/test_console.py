"""The Console: every event the engine emits has its handler, and every line, prompt and error
it prints names the commands of the front door in use, never a bare verb."""

from __future__ import annotations

import ast
import re
import tempfile
import types
import typing
from pathlib import Path

import pytest

import django_fhir_migrations
from django_fhir_migrations.console import CLI, DJANGO, FLASK, Console, Vocabulary
from django_fhir_migrations.engine import errors, events
from django_fhir_migrations.engine.events import (
    EVENTS,
    QUESTIONS,
    ApplySuccess,
    BundleFailures,
    ChecksumWarning,
    EventStream,
    NothingToDo,
    ResetQuestion,
    Resumed,
)
from django_fhir_migrations.engine.script import MigrationScript

VOCABULARIES = {"django": DJANGO, "cli": CLI, "flask": FLASK}
VERB = r"(?:makemigration|migrate|downgrade|reset|showmigrations|history)"
# A verb as a command: in backquotes, or followed by one of its flags.
BARE_VERB = re.compile(rf"(?<![\w{{/.-]){VERB}(?= --[a-z])|`{VERB}\b")


def bare_verbs(text: str, vocabulary: Vocabulary) -> list[str]:
    """The verbs `text` names without the front door's own name for them."""
    for verb in ("makemigration", "migrate", "downgrade", "reset", "showmigrations", "history"):
        text = text.replace(vocabulary.command(verb), "<command>")
    return BARE_VERB.findall(text)


SCRIPTS = Path(tempfile.mkdtemp(prefix="console-"))


def one_script(name: str = "add_mrn") -> MigrationScript:
    path = SCRIPTS / f"{name}.py"
    path.write_text(f"revision = {'3f2a' * 8!r}\ndown_revision = {'9c1b' * 8!r}\n"
                    "def upgrade(ctx):\n    pass\n\n\ndef downgrade(ctx):\n    pass\n")
    return MigrationScript(path, "records", "3f2a" * 8, ("9c1b" * 8,))


def sample(kind: typing.Any) -> typing.Any:
    """A value of the annotated type, for building any event or question from its fields."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is MigrationScript:
        return one_script()
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return args[-1]
    if origin is tuple:
        return (sample(args[0]),) if len(args) == 2 and args[1] is Ellipsis else tuple(sample(a) for a in args)
    return {str: "Patient/1", int: 2, float: 1.5, bool: True}[kind]


def instance(cls: type) -> typing.Any:
    hints = typing.get_type_hints(cls, {**vars(events), "MigrationScript": MigrationScript})
    return cls(**{name: sample(kind) for name, kind in hints.items() if name != "action"})


def console(vocabulary: Vocabulary = DJANGO, **options) -> tuple[Console, list[str]]:
    lines: list[str] = []
    return Console(vocabulary, out=lines.append, err=lines.append, verbosity=3, **options), lines


# --- every action is rendered ----------------------------------------------------------------


def test_every_event_action_has_a_console_handler():
    missing = [cls.action for cls in EVENTS if not callable(getattr(Console, f"_on_{cls.action}", None))]
    assert not missing
    assert len({cls.action for cls in EVENTS}) == len(EVENTS)  # one class per action


@pytest.mark.parametrize("door", VOCABULARIES)
@pytest.mark.parametrize("cls", EVENTS, ids=lambda cls: cls.action)
def test_no_event_message_names_a_bare_verb_or_ends_in_two_dots(door, cls):
    vocabulary = VOCABULARIES[door]
    shown, lines = console(vocabulary)
    shown.on_event(instance(cls))
    for line in lines:
        assert not bare_verbs(line, vocabulary), line
        assert not re.search(r"[^.]\.\.$", line), line  # an ellipsis is fine, a doubled stop is not


@pytest.mark.parametrize("door", VOCABULARIES)
@pytest.mark.parametrize("cls", QUESTIONS, ids=lambda cls: cls.__name__)
def test_every_question_is_worded_in_the_front_doors_commands(door, cls):
    vocabulary = VOCABULARIES[door]
    shown, lines = console(vocabulary, ask=lambda prompt: "no")
    confirm = shown.confirm()
    assert confirm is not None and confirm(instance(cls)) is False
    assert lines and not bare_verbs("\n".join(lines), vocabulary)


def test_the_reset_question_names_the_front_doors_migrate():
    for vocabulary, named in ((DJANGO, "`fhirmigrate --fake`"), (CLI, "`fhir-migrations migrate --fake`"),
                              (FLASK, "`flask upgrade --fake`")):
        shown, lines = console(vocabulary, ask=lambda prompt: "yes")
        confirm = shown.confirm()
        assert confirm is not None and confirm(ResetQuestion("clinic", "http://fhir.test/fhir"))
        assert named in lines[0] and "'clinic'" in lines[0]


def test_without_input_the_prompt_says_the_front_doors_flag_and_answers_no():
    def closed(prompt: str) -> str:
        raise EOFError

    for vocabulary, flag in ((DJANGO, "--noinput"), (FLASK, "--yes")):
        shown, lines = console(vocabulary, ask=closed)
        confirm = shown.confirm()
        assert confirm is not None and confirm(ResetQuestion("clinic", "")) is False
        assert f"pass {flag} to confirm" in lines[-1]
    assert console(interactive=False)[0].confirm() is None  # --noinput: yes without asking


# --- the facts become the words --------------------------------------------------------------


def test_a_checksum_warning_names_the_django_command_not_djangos_own_migrate():
    shown, lines = console(DJANGO)
    shown.on_event(ChecksumWarning((one_script(),)))
    [line] = lines
    assert "`fhirmigrate --accept-checksums`" in line and "`migrate" not in line


def test_a_downgrade_of_an_edited_script_warns_that_it_runs_as_it_is_now():
    shown, lines = console()
    shown.on_event(ChecksumWarning((one_script(),), direction="downgrade"))
    assert lines == ["Warning: add_mrn (3f2a3f2a3f2a) was edited since it was applied: its downgrade "
                     "runs as the file is now."]


def test_nothing_to_do_below_the_head_tells_how_to_go_back_in_each_vocabulary():
    for vocabulary, command in ((DJANGO, "fhirdowngrade"), (FLASK, "flask downgrade")):
        shown, lines = console(vocabulary)
        shown.on_event(NothingToDo(reason="below_head", script=one_script()))
        assert f"run `{command} add_mrn`" in lines[0]


def test_failures_within_the_budget_are_one_warning_with_their_groups():
    shown, lines = console()
    shown.on_event(BundleFailures(one_script(), 3, "5 failures",
                                  (("422", 2, "bad code", ("Observation/1", "Observation/2")),
                                   ("409", 1, "", ("Patient/9",)))))
    assert lines == ["    Warning: 3 entries refused, within the budget of 5 failures: 2 x 422 bad code "
                     "(Observation/1, Observation/2); 1 x 409 (Patient/9)."]


def test_a_migration_applied_with_failures_and_a_retry_say_so_once():
    shown, lines = console()
    shown.on_event(ApplySuccess("upgrade", one_script(), 1.234, failures=2))
    shown.on_event(ApplySuccess("upgrade", one_script(), 0.5, failures=0, retried=2,
                                accepted_checksum="abc123"))
    assert lines == ["    OK (1.23s, 2 failures)", "    With 2 failure(s) within its budget.",
                     "    OK (0.50s)", "    Retried 2 failed resource(s): 0 still fail; its edited "
                                       "checksum abc123 is accepted."]


def test_records_resume_would_not_trust_are_listed_with_how_many_more():
    shown, lines = console()
    shown.on_event(Resumed(one_script(), 40, ignored=("Patient/1", "Patient/2"), ignored_count=5))
    assert lines[1].endswith("were ignored: Patient/1, Patient/2 and 3 more.")


def test_a_listener_that_raises_does_not_stop_the_others(caplog):
    seen: list[str] = []

    def broken(event):
        raise RuntimeError("display down")

    EventStream([broken, lambda event: seen.append(event.action)]).emit(NothingToDo())
    assert seen == ["nothing_to_do"] and "display down" in caplog.text


# --- every error is one paragraph in the front door's words ----------------------------------


def all_error_classes() -> set[type]:
    import django_fhir_migrations.commands  # noqa: F401 - UsageError
    import django_fhir_migrations.engine.bulk  # noqa: F401
    import django_fhir_migrations.engine.journal  # noqa: F401
    import django_fhir_migrations.engine.resume  # noqa: F401
    import django_fhir_migrations.testserver  # noqa: F401

    found, todo = set(), [errors.FhirMigrationError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def error_instances() -> list[errors.FhirMigrationError]:
    script = one_script()
    made: list[errors.FhirMigrationError] = [
        errors.MultipleHeadsError([script, one_script("other")]),
        errors.UnknownTargetError("add_mnr", ["add_mrn"]),
        errors.AmbiguousTargetError("add", [script, script], matched_by="name"),
        errors.UnknownStateRevisionError("clinic", ["dead"], "http://fhir.test/fhir/Basic/1"),
        errors.ChecksumMismatchError([script]),
        errors.LockTimeoutError("clinic", "bob@web-2 (pid 7)", 30),
        errors.LeaseLostError("clinic", "taken over"),
        errors.VerificationError(script, AssertionError("3 left"), "AssertionError: 3 left"),
        errors.UndoError("add_mrn", script.revision, "nothing recorded its writes."),
        errors.UndoConflictError("add_mrn", script.revision, [("Patient/1", "updated")], 3),
        errors.MigrationFailedError(script, "upgrade", ValueError("no such code")),
        errors.MigrationFailedError(script, "upgrade", errors.LeaseLostError("clinic", "lost")),
        errors.BundleError("batch", [("422", 1, "bad", ["Patient/1"])]),
        errors.WriterError("x", "exists", "Pick another name, or `{makemigration} --merge`."),
    ]
    remedied = {type(error) for error in made}
    for cls in all_error_classes() - remedied:  # the rest: whatever remedy a raise site gives
        error = cls.__new__(cls)
        errors.FhirMigrationError.__init__(error, "Something is wrong.",
                                           "Run `{migrate} --fake`, or `{makemigration} --merge`, "
                                           "or `{downgrade} --fake`.")
        made.append(error)
    return made


@pytest.mark.parametrize("door", VOCABULARIES)
def test_no_error_message_names_a_bare_verb(door):
    vocabulary = VOCABULARIES[door]
    shown, lines = console(vocabulary)
    for error in error_instances():
        text = shown.error_text(error)
        assert "\n" not in text and not bare_verbs(text, vocabulary), (type(error).__name__, text)
    assert str(errors.MultipleHeadsError([one_script()])).count("`makemigration --merge") == 1  # plain


def test_an_error_is_reported_once_with_its_exit_status():
    shown, lines = console(CLI)
    assert shown.report(errors.LockTimeoutError("clinic", "bob", 5)) == 3
    [line] = lines
    assert line.startswith("Error: Timed out") and "`fhir-migrations migrate --break-lock`" in line


def test_no_message_in_the_source_names_a_bare_verb():
    """Remedies are templates (`{migrate} --break-lock`), rendered per front door; a string
    literal that writes a verb out would be read by every front door as it is."""
    root = Path(django_fhir_migrations.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        skipped = {id(node.body[0].value) for node in ast.walk(tree)  # docstrings
                   if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                   and isinstance(node.body[0], ast.Expr)}
        skipped |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                    for part in node.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # an f-string: `{PROG} migrate` names its command
                text = "".join(part.value if isinstance(part, ast.Constant) else "\0"
                               for part in node.values).replace("\0 ", "X_").replace("\0", "X")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
                text = node.value
            else:
                continue
            if BARE_VERB.search(text):
                found.append(f"{path.name}:{node.lineno}: {text!r}")
    assert not found
