"""Keyed signatures on the records undo and resume act on (DESIGN, "Trust").

Anyone who may create a Provenance on the server can write one that looks like ours: our tags,
policy and agents are public. Undo deletes and overwrites what its records name, and resume
skips what they name, so a record is acted on only if the tool can prove it wrote it: each
Provenance the tool writes carries an HMAC-SHA256 over what undo and resume read from it
(provenance.py builds that message), keyed by a secret the server never sees.

The secret is the setting SIGNING_KEY (Django: `SECRET_KEY` unless set), with
SIGNING_KEY_FALLBACKS (Django: `SECRET_KEY_FALLBACKS`) still accepted when verifying, so a key
can be rotated without losing undo of what was signed with the old one. The key is never used
raw: it is first derived with a purpose string (as Django's signing salts its keys), so a
signature here cannot be replayed as anything else the project signs with the same secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from .redaction import register_secret

PURPOSE = b"django-fhir-migrations:provenance:v1"


class Signer:
    """Signs with the first key; verifies with any of them (rotation)."""

    def __init__(self, keys: Sequence[str]):
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("a Signer needs at least one non-empty key")
        register_secret(*keys)
        self._keys = tuple(hashlib.sha256(PURPOSE + b"\0" + k.encode()).digest() for k in keys)

    def __repr__(self) -> str:
        return f"Signer({len(self._keys)} key(s))"

    def sign(self, message: bytes) -> str:
        return base64.b64encode(hmac.new(self._keys[0], message, hashlib.sha256).digest()).decode()

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            given = base64.b64decode(signature.encode(), validate=True)
        except (ValueError, UnicodeEncodeError):
            return False
        return any(hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), given)
                   for key in self._keys)


__all__ = ["Signer"]
