"""One scrubbing for every text that leaves the process, and one cleaning for server text.

Two jobs, both about text we do not fully control:

* `scrub(text)` removes credentials. The auth objects register every secret they hold or
  receive (configured tokens and passwords, the basic header's base64, private keys, SMART
  access tokens and client assertions) in a process-wide registry, so any text can be scrubbed
  without knowing which connection it came from: error messages, log records (a filter on our
  loggers), AuditEvents, the admin page, tracebacks. Known patterns (`Bearer ...`,
  `password=...`, PEM blocks, URL user:password) are masked too, for secrets never registered.
* `printable(text)` makes a string that a server sent safe to print: control characters (ANSI
  escapes, carriage returns that overwrite a terminal line, NULs) are dropped and the length is
  bounded. Every server-derived string we show goes through it.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import deque

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter strings would mask ordinary words
MAX_REMEMBERED = 200  # issued tokens are remembered this long (most recent first)

_PATTERNS = [
    # A token after "Bearer": long and not a plain word ("a bearer token is ..." stays readable).
    re.compile(r"(?i)(bearer\s+)(?=[A-Za-z0-9\-._~+/]{12,})(?=[A-Za-z]*[0-9\-._~+/])[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[A-Za-z0-9+/]+=*"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(?i)((?:password|passwd|secret|token|client_assertion|access_token)[\"']?\s*[:=]\s*[\"']?)"
               r"[^\s\"',&]+"),
    re.compile(r"(?i)(//[^/\s:@]+:)[^@\s/]+(@)"),
]
# ANSI escape sequences (CSI and OSC), then lone C0/C1 controls: what a terminal acts upon.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_AND_NEWLINES = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: deque[str] = deque(maxlen=MAX_REMEMBERED)

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            for secret in secrets:
                if secret and len(secret) >= MIN_SECRET_LENGTH and secret not in self._secrets:
                    self._secrets.appendleft(secret)

    def snapshot(self) -> tuple[str, ...]:
        with self._lock:
            # Longest first: a secret that contains another is masked whole.
            return tuple(sorted(self._secrets, key=len, reverse=True))


_registry = _Registry()


def register_secret(*secrets: str | None) -> None:
    """Remember secrets so that `scrub` removes them from any text, for the process's life."""
    _registry.add(*secrets)


def _masked(match: re.Match[str]) -> str:
    groups = match.re.groups
    if groups == 0:
        return MASK
    return match.group(1) + MASK + (match.group(2) if groups > 1 else "")


def scrub(text: str, extra: tuple[str, ...] = ()) -> str:
    """`text` without any registered (or `extra`) secret and without credential-looking parts."""
    if not text:
        return text
    for secret in (*extra, *_registry.snapshot()):
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(_masked, text)
    return text


def printable(value: object, limit: int = 300, *, single_line: bool = True) -> str:
    """A server-sent value as safe text: no control characters, at most `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    text = (_CONTROL_AND_NEWLINES if single_line else _CONTROL).sub("", _ANSI.sub("", text))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def scrubbed_traceback(exc: BaseException) -> str:
    """The full traceback of `exc` (with its chained causes), scrubbed."""
    return scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class ScrubbingFilter(logging.Filter):
    """Renders each record's message once and scrubs it (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as it is
            return True
        record.msg = scrub(message)
        record.args = ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = scrubbed_traceback(record.exc_info[1]).rstrip("\n")
        return True


LOGGERS = ("django_fhir_migrations", "django_fhir_migrations.scripts")


def install_log_filter() -> None:
    """Attach the filter to our loggers (idempotent). A logger's filters see the records logged
    to it directly, so each logger we log to gets one."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrubbingFilter) for f in logger.filters):
            logger.addFilter(ScrubbingFilter())


install_log_filter()
