"""The benchmark's settings, read from BENCH_* environment variables (see benchmarks/README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django_fhir_migrations.engine.config import DEFAULTS

from .patients import BenchError

# tool_vs_sequential in the RESULT line is (e) at the WORKERS the engine ships / (d), chosen from
# the figures of record in benchmarks/README.md. BENCH_DEFAULT_WORKERS overrides.
SHIPPED_WORKERS = int(DEFAULTS["WORKERS"])


class ConfigError(BenchError):
    pass


@dataclass(frozen=True)
class Config:
    n: int
    n_large: int
    size: int
    extra_sizes: tuple[int, ...]
    transactions: bool
    graph_scripts: int
    cleanup: bool | None
    json_path: Path | None
    workers: tuple[int, ...] = (1, 2, 4)
    default_workers: int = SHIPPED_WORKERS
    passes: int = 2
    provenance_off: bool = True
    bulk: bool = True
    load_scripts: tuple[int, ...] = (2000, 20000)
    load_rounds: int = 5
    history: int = 2000
    clinicians: int = 20000  # resources per migration of the clinicians row (0: skipped)

    @property
    def n_throughput(self) -> int:
        return self.n

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ = os.environ) -> Config:
        n = _int(environ, "BENCH_N", 5000, minimum=1)
        n_large = _int(environ, "BENCH_N_LARGE", 10 * n, minimum=0)
        if _flag(environ, "BENCH_SKIP_LARGE", False):
            n_large = 0
        size = _int(environ, "BENCH_BUNDLE_SIZE", 100, minimum=1, maximum=1000)
        raw = environ.get("BENCH_EXTRA_SIZES", "500")
        extra = []
        for part in filter(None, (p.strip() for p in raw.split(","))):
            if not part.isdigit() or not 1 <= int(part) <= 1000:
                raise ConfigError(f"BENCH_EXTRA_SIZES={raw!r}: expected comma-separated bundle sizes "
                                  "between 1 and 1000 (HAPI's largest page), e.g. '500', or empty.")
            if int(part) != size:
                extra.append(int(part))
        cleanup = _flag(environ, "BENCH_CLEANUP", None)
        json_path = Path(environ["BENCH_JSON"]) if environ.get("BENCH_JSON") else None
        transactions = _flag(environ, "BENCH_TRANSACTIONS", True)
        default_workers = _int(environ, "BENCH_DEFAULT_WORKERS", SHIPPED_WORKERS, minimum=1, maximum=64)
        workers = _ints(environ, "BENCH_WORKERS", (1, 2, 4), minimum=1, maximum=64)
        if default_workers not in workers:
            workers = tuple(sorted({*workers, default_workers}))
        return cls(n, n_large, size, tuple(extra), transactions,
                   _int(environ, "BENCH_GRAPH_SCRIPTS", 2000, minimum=2), cleanup, json_path,
                   workers=workers, default_workers=default_workers,
                   passes=_int(environ, "BENCH_PASSES", 2, minimum=1, maximum=10),
                   provenance_off=bool(_flag(environ, "BENCH_PROVENANCE_OFF", True)),
                   bulk=bool(_flag(environ, "BENCH_BULK", True)),
                   load_scripts=_ints(environ, "BENCH_LOAD_SCRIPTS", (2000, 20000), minimum=2, empty=True),
                   load_rounds=_int(environ, "BENCH_LOAD_ROUNDS", 5, minimum=1),
                   history=_int(environ, "BENCH_HISTORY", 2000, minimum=0),
                   clinicians=_int(environ, "BENCH_CLINICIANS_N", 20000, minimum=0))


def _ints(environ: Any, name: str, default: tuple[int, ...], *, minimum: int, maximum: int | None = None,
          empty: bool = False) -> tuple[int, ...]:
    """A comma-separated list of whole numbers (`empty`: an empty value means none)."""
    if name not in environ:
        return default
    parts = [p.strip().replace("_", "") for p in environ[name].split(",") if p.strip()]
    if not parts and empty:
        return ()
    if not parts or not all(p.isdigit() and int(p) >= minimum and (maximum is None or int(p) <= maximum)
                            for p in parts):
        bounds = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
        raise ConfigError(f"{name}={environ[name]!r}: expected comma-separated whole numbers {bounds}"
                          + (", or empty for none." if empty else "."))
    return tuple(dict.fromkeys(int(p) for p in parts))


def _flag(environ: Any, name: str, default: bool | None) -> bool | None:
    raw = environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"{name}={raw!r}: expected 1 or 0.")
    return raw in ("1", "true", "yes", "on")


def _int(environ: Any, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
        raise ConfigError(f"{name}={raw!r}: expected a whole number {bounds}.")
    return value
