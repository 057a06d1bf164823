"""The engine's settings: one validated value object, built from a mapping plus the environment.

Django (`conf.py`), Flask, the CLI and the seed facade all turn their own configuration into a
`Settings` through `Settings.build`, so every front door validates the same way and environment
variables override the same keys (twelve-factor deploys).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .signing import Signer

DEFAULTS: dict[str, Any] = {
    "BASE_URL": None,
    "AUTH": None,
    "SCRIPTS_DIRS": [],
    "STATE_ID": "default",
    "AUDIT_EVENTS": True,
    "LOCK_TIMEOUT": 300,
    "LOCK_TTL": 60,
    "TIMEOUT": 30,
    "RETRIES": 3,
    "VERIFY_TLS": True,
    "PAGE_SIZE": 100,
    "BUNDLE_SIZE": 100,
    "MAX_RUN_TIME": None,
    "MAX_RESPONSE_MB": 64,
    "PROVENANCE": True,
    "WORKERS": 2,  # measured: benchmarks/README.md, run 12
    "MAX_RATE": None,  # resources written per second, across all workers (None: no limit)
    "ADAPTIVE_BACKOFF": True,  # send less when the server's latency rises well above its normal
    "MAX_FAILURES": 0,  # refused batch entries a migration may leave behind (count, or fraction < 1)
    "SIGNING_KEY": None,  # Django: SECRET_KEY; signs the Provenance undo and resume trust
    "SIGNING_KEY_FALLBACKS": [],  # Django: SECRET_KEY_FALLBACKS; still accepted (rotation)
}

# Upper bounds: a value past them is a typo or a unit mistake (ms for s), and some would
# overflow a date or exhaust the machine (LOCK_TTL=1e308, WORKERS=100000).
MAXIMUM: dict[str, float] = {
    "LOCK_TIMEOUT": 7 * 86400,
    "LOCK_TTL": 86400,
    "TIMEOUT": 3600,
    "RETRIES": 20,
    "PAGE_SIZE": 10_000,
    "BUNDLE_SIZE": 10_000,
    "MAX_RUN_TIME": 30 * 86400,
    "MAX_RESPONSE_MB": 4096,
    "WORKERS": 32,
    "MAX_RATE": 1_000_000,
}

# Environment variable -> settings key. Seed-tool names come first where they exist.
ENV_VARS: dict[str, str] = {
    "FHIR_BASE_URL": "BASE_URL",
    "MIGRATION_RESOURCE_ID": "STATE_ID",
    "FHIR_MIGRATIONS_STATE_ID": "STATE_ID",
    "FHIR_MIGRATIONS_AUTH": "AUTH",
    "FHIR_MIGRATIONS_AUDIT_EVENTS": "AUDIT_EVENTS",
    "FHIR_MIGRATIONS_LOCK_TIMEOUT": "LOCK_TIMEOUT",
    "FHIR_MIGRATIONS_LOCK_TTL": "LOCK_TTL",
    "FHIR_MIGRATIONS_TIMEOUT": "TIMEOUT",
    "FHIR_MIGRATIONS_RETRIES": "RETRIES",
    "FHIR_MIGRATIONS_VERIFY_TLS": "VERIFY_TLS",
    "FHIR_MIGRATIONS_PAGE_SIZE": "PAGE_SIZE",
    "FHIR_MIGRATIONS_BUNDLE_SIZE": "BUNDLE_SIZE",
    "FHIR_MIGRATIONS_MAX_RUN_TIME": "MAX_RUN_TIME",
    "FHIR_MIGRATIONS_MAX_RESPONSE_MB": "MAX_RESPONSE_MB",
    "FHIR_MIGRATIONS_PROVENANCE": "PROVENANCE",
    "FHIR_MIGRATIONS_WORKERS": "WORKERS",
    "FHIR_MIGRATIONS_MAX_FAILURES": "MAX_FAILURES",
    "FHIR_MIGRATIONS_MAX_RATE": "MAX_RATE",
    "FHIR_MIGRATIONS_ADAPTIVE_BACKOFF": "ADAPTIVE_BACKOFF",
    "FHIR_MIGRATIONS_SIGNING_KEY": "SIGNING_KEY",
    "FHIR_MIGRATIONS_SIGNING_KEY_FALLBACKS": "SIGNING_KEY_FALLBACKS",
}
SCRIPTS_DIR_ENV = "MIGRATION_SCRIPTS_DIR"
AUTH_TYPES = ("bearer", "basic", "smart-backend")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class ScriptLocation:
    """A folder that holds migration scripts, and a label for it (an app label or 'dir')."""

    path: Path
    label: str


@dataclass(frozen=True)
class Settings:
    """Every setting the engine reads, validated and immutable (`with_overrides` copies).

    Front doors never construct it field by field: `Settings.build` merges the defaults, their
    own configuration (Django's FHIR_MIGRATIONS, Flask's app.config, CLI flags, the facade's
    keyword arguments) and the environment, and names the setting at fault in any error.
    """

    base_url: str | None
    auth: Mapping[str, Any] | None = field(default=None, repr=False)  # holds secrets
    locations: tuple[ScriptLocation, ...] = ()
    state_id: str = "default"
    audit_events: bool = True
    lock_timeout: float = 300.0
    lock_ttl: float = 60.0
    timeout: float = 30.0
    retries: int = 3
    verify_tls: bool | str = True
    page_size: int = 100
    bundle_size: int = 100
    max_run_time: float | None = None  # seconds per migration; None: no limit
    max_response_bytes: int = 64 * 1024 * 1024
    provenance: bool = True  # every ctx write recorded as Provenance: resume and undo
    workers: int = 2  # bundles sent at once by ctx.batch()/transaction() (updates only; see bundles.py)
    signing_keys: tuple[str, ...] = field(default=(), repr=False)  # secrets: the first signs
    max_failures: float = 0  # a count (>= 1, whole) or a fraction (0 < f < 1) of a batch's entries
    max_rate: float | None = None  # resources written per second across all workers
    adaptive_backoff: bool = True  # fewer workers, then pauses, while the server is slow
    applied_by: str | None = None
    source: str = field(default="settings")  # where the values came from, for messages

    @classmethod
    def build(
        cls,
        values: Mapping[str, Any] | None = None,
        *,
        app_locations: tuple[ScriptLocation, ...] = (),
        environ: Mapping[str, str] | None = None,
        source: str = "FHIR_MIGRATIONS",
    ) -> Settings:
        """Merge defaults, `values` and the environment; validate; return Settings."""
        environ = os.environ if environ is None else environ
        merged = dict(DEFAULTS)
        for key, value in (values or {}).items():
            if key not in DEFAULTS:
                raise ConfigurationError(
                    f"{source}[{key!r}]",
                    f"unknown key. Known keys: {', '.join(sorted(DEFAULTS))}.",
                )
            merged[key] = value
        origin = {key: f"{source}[{key!r}]" for key in merged}
        for env, key in ENV_VARS.items():
            if environ.get(env) not in (None, ""):
                merged[key] = environ[env]
                origin[key] = f"environment variable {env}"

        def setting(key: str) -> str:
            return origin[key]

        def number(key: str, *, minimum: float, integer: bool = False) -> float:
            return _number(merged[key], setting(key), minimum=minimum, maximum=MAXIMUM[key],
                           integer=integer)

        base_url = _validate_url(merged["BASE_URL"], setting("BASE_URL"))
        auth = _validate_auth(merged["AUTH"], setting("AUTH"))
        locations = list(app_locations)
        for raw in _as_list(merged["SCRIPTS_DIRS"], setting("SCRIPTS_DIRS")):
            locations.append(_existing_dir(raw, setting("SCRIPTS_DIRS"), label="dir"))
        if environ.get(SCRIPTS_DIR_ENV):
            for raw in environ[SCRIPTS_DIR_ENV].split(os.pathsep):
                if raw:
                    locations.append(
                        _existing_dir(raw, f"environment variable {SCRIPTS_DIR_ENV}", label="dir")
                    )
        state_id = str(merged["STATE_ID"]).strip()
        if not state_id or any(c in state_id for c in "|,$ \t\n"):
            raise ConfigurationError(
                setting("STATE_ID"),
                f"{state_id!r} is not usable as an identifier value (empty, or contains '|', ',', "
                "'$' or whitespace).",
            )
        return cls(
            base_url=base_url,
            auth=auth,
            locations=_dedupe(locations),
            state_id=state_id,
            audit_events=_boolean(merged["AUDIT_EVENTS"], setting("AUDIT_EVENTS")),
            lock_timeout=number("LOCK_TIMEOUT", minimum=0),
            lock_ttl=number("LOCK_TTL", minimum=3),
            timeout=number("TIMEOUT", minimum=0.1),
            retries=int(number("RETRIES", minimum=0, integer=True)),
            verify_tls=_verify(merged["VERIFY_TLS"], setting("VERIFY_TLS")),
            page_size=int(number("PAGE_SIZE", minimum=1, integer=True)),
            bundle_size=int(number("BUNDLE_SIZE", minimum=1, integer=True)),
            max_run_time=(None if merged["MAX_RUN_TIME"] in (None, "", "none", "None")
                          else number("MAX_RUN_TIME", minimum=1)),
            max_response_bytes=int(number("MAX_RESPONSE_MB", minimum=1) * 1024 * 1024),
            provenance=_boolean(merged["PROVENANCE"], setting("PROVENANCE")),
            workers=int(number("WORKERS", minimum=1, integer=True)),
            max_rate=(None if merged["MAX_RATE"] in (None, "", "none", "None")
                      else number("MAX_RATE", minimum=0.01)),
            adaptive_backoff=_boolean(merged["ADAPTIVE_BACKOFF"], setting("ADAPTIVE_BACKOFF")),
            max_failures=failure_budget(merged["MAX_FAILURES"], setting("MAX_FAILURES")),
            signing_keys=_signing_keys(merged["SIGNING_KEY"], merged["SIGNING_KEY_FALLBACKS"],
                                       setting("SIGNING_KEY"), setting("SIGNING_KEY_FALLBACKS")),
            applied_by=environ.get("FHIR_MIGRATIONS_USER") or None,
            source=source,
        )

    def with_overrides(self, **changes: Any) -> Settings:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known and v is not None})

    @cached_property
    def signer(self) -> Signer:
        """What signs and verifies the Provenance of ctx's writes (ConfigurationError: no key)."""
        if not self.signing_keys:
            raise ConfigurationError(
                f"{self.source}['SIGNING_KEY']",
                "no key to sign the Provenance of this migration's writes with (PROVENANCE is "
                "on). Undo and resume act only on records signed with it, so it must be a "
                "secret kept with the project (Django uses SECRET_KEY unless SIGNING_KEY is "
                "set); give SIGNING_KEY or the environment variable FHIR_MIGRATIONS_SIGNING_KEY, "
                "or turn PROVENANCE off.",
            )
        return Signer(self.signing_keys)

    def require_base_url(self) -> str:
        if not self.base_url:
            raise ConfigurationError(
                f"{self.source}['BASE_URL']",
                "no FHIR server is configured. Set it (e.g. 'http://127.0.0.1:8080/fhir') or "
                "the environment variable FHIR_BASE_URL.",
            )
        return self.base_url


def _validate_url(value: Any, setting: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigurationError(setting, f"must be a URL string, got {type(value).__name__}.")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            setting,
            f"{_redact_url(value)!r} is not an http(s) URL of a FHIR server "
            "(expected something like 'https://fhir.example.org/fhir').",
        )
    if parts.username or parts.password:
        raise ConfigurationError(
            setting,
            "credentials must not be written into the URL; use the AUTH setting instead.",
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ConfigurationError(
            setting,
            "the base URL must not have a query string or fragment ('?...' or '#...'); give the "
            "server's base only, e.g. 'https://fhir.example.org/fhir'.",
        )
    if any(c.isspace() or ord(c) < 32 for c in value.strip()):
        raise ConfigurationError(setting, "the base URL contains spaces or control characters.")
    return value.strip().rstrip("/")


def _redact_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.password:
        return value.replace(parts.password, "***")
    return value


def _validate_auth(value: Any, setting: str) -> Mapping[str, Any] | None:
    if value in (None, "", {}):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigurationError(setting, "must be a JSON object such as {\"type\": \"bearer\", ...}.") from None
    if not isinstance(value, Mapping):
        raise ConfigurationError(setting, "must be a mapping with a 'type' key, or None.")
    kind = value.get("type")
    if kind not in AUTH_TYPES:
        raise ConfigurationError(
            setting, f"unknown auth type {kind!r}; use one of {', '.join(AUTH_TYPES)}."
        )
    required = {
        "bearer": ("token",),
        "basic": ("username", "password"),
        "smart-backend": ("client_id",),
    }[kind]
    missing = [key for key in required if not value.get(key)]
    if kind == "smart-backend" and not (value.get("private_key") or value.get("private_key_file")):
        missing.append("private_key or private_key_file")
    if missing:
        raise ConfigurationError(setting, f"auth type {kind!r} needs {', '.join(missing)}.")
    return dict(value)


def _as_list(value: Any, setting: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ConfigurationError(setting, "must be a list of folder paths.")


def _existing_dir(raw: str, setting: str, label: str) -> ScriptLocation:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigurationError(setting, f"the scripts folder {raw!r} does not exist or is not a folder.")
    return ScriptLocation(path=path.resolve(), label=label)


def _dedupe(locations: list[ScriptLocation]) -> tuple[ScriptLocation, ...]:
    seen: set[Path] = set()
    result = []
    for location in locations:
        if location.path not in seen:
            seen.add(location.path)
            result.append(location)
    return tuple(result)


def _boolean(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(setting, f"must be true or false, got {value!r}.")


def _verify(value: Any, setting: str) -> bool | str:
    if isinstance(value, str) and value.strip().lower() not in _TRUE | _FALSE:
        if not Path(value).exists():
            raise ConfigurationError(setting, f"CA bundle {value!r} does not exist.")
        return value
    return _boolean(value, setting)


MAX_FAILURE_COUNT = 1_000_000


def failure_budget(value: Any, setting: str) -> float:
    """MAX_FAILURES / ctx.batch(max_failures=): a whole count of refused entries, or a
    fraction below 1 of the entries sent (0.01: one in a hundred)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or number > MAX_FAILURE_COUNT \
            or (number >= 1 and not number.is_integer()):
        raise ConfigurationError(setting, f"must be a whole number of failures (0 to {MAX_FAILURE_COUNT:,}) "
                                          f"or a fraction below 1 (0.01: one entry in a hundred), got "
                                          f"{value!r}.")
    return int(number) if number >= 1 or number == 0 else number


def _signing_keys(key: Any, fallbacks: Any, setting: str, fallbacks_setting: str) -> tuple[str, ...]:
    """The signing key first, then the fallbacks (JSON list or one key in the environment)."""
    if key in (None, ""):
        return ()
    if not isinstance(key, str):
        raise ConfigurationError(setting, f"must be a string (a secret), got {type(key).__name__}.")
    if isinstance(fallbacks, str):
        text = fallbacks.strip()
        if text.startswith("["):
            try:
                fallbacks = json.loads(text)
            except ValueError:
                raise ConfigurationError(fallbacks_setting, "must be a JSON list of strings.") from None
        else:
            fallbacks = [text] if text else []
    if fallbacks is None:
        fallbacks = []
    if not isinstance(fallbacks, (list, tuple)) or not all(isinstance(f, str) and f for f in fallbacks):
        raise ConfigurationError(fallbacks_setting, "must be a list of non-empty strings (secrets).")
    return (key, *[f for f in fallbacks if f != key])


def _number(value: Any, setting: str, *, minimum: float, maximum: float,
            integer: bool = False) -> float:
    try:
        number = int(value) if integer else float(value)
        if integer and isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if integer else "a number"
        raise ConfigurationError(setting, f"must be {kind}, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < minimum:
        raise ConfigurationError(setting, f"must be at least {minimum}, got {value!r}.")
    if number > maximum:
        raise ConfigurationError(setting, f"must be at most {maximum:g}, got {value!r}.")
    return number
