"""RFC 6902 JSON Patch, applied here: for servers that take no JSON Patch inside a bundle.

Some servers (Helios FHIR Server 0.2.7: "Binary JSON Patch in R4 Bundle is not implemented",
501) accept a JSON Patch as a plain PATCH but not as a bundle entry, where FHIR R4 can only
carry it as a Binary. There the journal reads the resource, applies the patch with this
module, and sends a version-aware PUT of the result instead: the same change, If-Match the
version read, with the same Provenance, resume and undo. `test` operations are honoured (a
failed test is a failed write), so a patch that guards itself keeps its guard.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any


class JsonPatchError(ValueError):
    """The patch cannot be applied to this resource (a path that does not exist, a failed test)."""


def apply(document: dict[str, Any], operations: Sequence[Any]) -> dict[str, Any]:
    """A patched copy of `document` (the original is not changed)."""
    result: Any = copy.deepcopy(document)
    for number, operation in enumerate(operations, 1):
        if not isinstance(operation, dict) or not isinstance(operation.get("op"), str) \
                or not isinstance(operation.get("path"), str):
            raise JsonPatchError(f"operation {number} is not an object with 'op' and 'path'")
        op, path = operation["op"], operation["path"]
        if op == "add":
            result = _add(result, path, copy.deepcopy(_value(operation, number)))
        elif op == "remove":
            result, _ = _remove(result, path)
        elif op == "replace":
            result, _ = _remove(result, path)
            result = _add(result, path, copy.deepcopy(_value(operation, number)))
        elif op in ("move", "copy"):
            source = operation.get("from")
            if not isinstance(source, str):
                raise JsonPatchError(f"operation {number} ({op}) has no 'from'")
            if op == "move":
                result, value = _remove(result, source)
            else:
                value = copy.deepcopy(_get(result, source))
            result = _add(result, path, value)
        elif op == "test":
            if _get(result, path) != _value(operation, number):
                raise JsonPatchError(f"operation {number} (test of {path}) failed")
        else:
            raise JsonPatchError(f"operation {number} has the unknown op {op!r}")
    if not isinstance(result, dict):
        raise JsonPatchError("the patch replaced the whole resource with something else")
    return result


def _value(operation: dict[str, Any], number: int) -> Any:
    if "value" not in operation:
        raise JsonPatchError(f"operation {number} ({operation['op']}) has no 'value'")
    return operation["value"]


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"{path!r} is not a JSON Pointer")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, end_ok: bool) -> int:
    if token == "-" and end_ok:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise JsonPatchError(f"{token!r} is not an array index")
    index = int(token)
    if index > len(container) or (index == len(container) and not end_ok):
        raise JsonPatchError(f"index {index} is past the end of the array")
    return index


def _parent(document: Any, tokens: list[str]) -> Any:
    node = document
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise JsonPatchError(f"/{'/'.join(tokens)} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, end_ok=False)]
        else:
            raise JsonPatchError(f"/{'/'.join(tokens)} does not exist")
    return node


def _get(document: Any, path: str) -> Any:
    tokens = _tokens(path)
    return _parent(document, tokens) if tokens else document


def _add(document: Any, path: str, value: Any) -> Any:
    tokens = _tokens(path)
    if not tokens:
        return value
    parent, last = _parent(document, tokens[:-1]), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, end_ok=True), value)
    else:
        raise JsonPatchError(f"{path} has no parent to add to")
    return document


def _remove(document: Any, path: str) -> tuple[Any, Any]:
    tokens = _tokens(path)
    if not tokens:
        return None, document
    parent, last = _parent(document, tokens[:-1]), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise JsonPatchError(f"{path} does not exist")
        return document, parent.pop(last)
    if isinstance(parent, list):
        return document, parent.pop(_index(parent, last, end_ok=False))
    raise JsonPatchError(f"{path} does not exist")


__all__ = ["JsonPatchError", "apply"]
