"""Render a new migration script and write it next to the others.

The file is `<number>_<name>.py` (`0003_add_mrn.py`, Django's convention: `ls` lists files in
the order they apply; the seed tool's unnumbered `<name>.py` files are still read). The name
must be a plain Python identifier, not a keyword, not already used (with or without a number).
The new script's down_revision is the head of the graph (or, for a merge, the tuple of all
heads). The file is created exclusively: two people generating at once cannot overwrite each
other. The default downgrade body is `ctx.undo()`: it reverts every write the upgrade made
through ctx, from their Provenance.
"""

from __future__ import annotations

import ast
import keyword
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from .clock import isoformat, utcnow
from .config import ScriptLocation
from .errors import WriterError
from .redaction import printable
from .script import bare_name

MAX_NAME_LENGTH = 80
NUMBER_WIDTH = 4
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {"head", "heads", "zero", "base", "none", "true", "false"}

TEMPLATE = '''"""{message}

Revision: {revision}   Revises: {revises}   Created: {created}
"""

revision = "{revision}"
down_revision = {down_revision}{extra}


def upgrade(ctx):
    """Change the data. `ctx` has search/read/create/update/delete/batch/transaction helpers."""
    pass


def downgrade(ctx):
    """Revert every write upgrade() made through ctx (from their Provenance)."""
    ctx.undo()


# def verify(ctx):
#     """Optional: runs after upgrade(ctx), under the lock. If it raises, the migration is not
#     recorded as applied, and the next run repeats only verify() (unless this file changed)."""
#     assert ctx.count("Patient", identifier="http://hospital.example.org/mrn|") == 0
'''


@dataclass(frozen=True)
class NewScript:
    path: Path
    revision: str
    down_revisions: tuple[str, ...]


def validate_name(name: str, existing: set[str]) -> str:
    name = (name or "").strip()
    if not name:
        raise WriterError(name, "a migration needs a name, e.g. add_mrn_identifier.")
    if len(name) > MAX_NAME_LENGTH:
        raise WriterError(name[:40] + "...", f"names are limited to {MAX_NAME_LENGTH} characters.")
    if not _NAME.match(name):
        raise WriterError(
            name, "use letters, digits and underscores only, not starting with a digit "
            "(the name becomes the file name, so no '/', '.', '-' or spaces)."
        )
    if keyword.iskeyword(name) or name.lower() in _RESERVED or name.startswith("_"):
        raise WriterError(
            name, "that word is reserved (Python keywords, names starting with '_', "
            f"and {', '.join(sorted(_RESERVED))} are not allowed)."
        )
    if name in existing or name in {bare_name(stem) for stem in existing}:
        raise WriterError(name, "a migration with that name already exists.")
    return name


def docstring_line(message: str) -> str:
    """The -m message as one safe line of a triple-quoted docstring.

    It is the user's text, but it lands in Python source: without this, `-m 'x\"\"\"\nimport os'`
    would end the docstring and put code in the script. Control characters and line breaks
    become spaces, and backslashes and quotes are escaped so the docstring cannot end early.
    """
    line = " ".join(printable(message, 200, single_line=False).split())
    return line.replace("\\", "\\\\").replace('"', '\\"')


def render(name: str, revision: str, down_revisions: tuple[str, ...], message: str = "") -> str:
    if not down_revisions:
        down = "None"
    elif len(down_revisions) == 1:
        down = f'"{down_revisions[0]}"'
    else:
        down = "(" + ", ".join(f'"{r}"' for r in down_revisions) + ")"
    source = TEMPLATE.format(
        message=docstring_line(message) or name.replace("_", " ").capitalize() + ".",
        revision=revision,
        revises=", ".join(down_revisions) or "None",
        created=isoformat(utcnow()),
        down_revision=down,
        extra="" if len(down_revisions) < 2 else "  # a merge of the heads above: usually nothing to do",
    )
    _check_rendered(source, revision)
    return source


def _check_rendered(source: str, revision: str) -> None:
    """The rendered script must be exactly the template's statements (defence in depth)."""
    tree = ast.parse(source)
    kinds = [type(node).__name__ for node in tree.body]
    assigned = [t.id for node in tree.body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    if (kinds[0] != "Expr" or kinds.count("Expr") != 1 or assigned != ["revision", "down_revision"]
            or functions != ["upgrade", "downgrade"] or len(tree.body) != 5):
        raise WriterError(revision, "the rendered script does not have the expected shape; "
                                    "check the -m message.")


def write_script(location: ScriptLocation, name: str, down_revisions: tuple[str, ...],
                 message: str = "", *, number: int | None = None) -> NewScript:
    revision = uuid.uuid4().hex
    stem = f"{number:0{NUMBER_WIDTH}d}_{name}" if number is not None else name
    path = location.path / f"{stem}.py"
    location.path.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(render(name, revision, down_revisions, message))
    except FileExistsError:
        raise WriterError(name, f"{path} already exists.") from None
    return NewScript(path=path, revision=revision, down_revisions=down_revisions)
