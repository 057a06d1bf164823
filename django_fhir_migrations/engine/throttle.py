"""How fast a migration may write to a server that clinicians are using at the same time.

Two brakes, both consulted by the journal before every send (a bundle, or a single write):

* **MAX_RATE** (resources per second, across all workers): each send reserves a slot of
  `entries / MAX_RATE` seconds on one shared clock and its sender waits for the slot to start,
  and after sending, for it to end. So N resources take at least N / MAX_RATE seconds, whatever
  the bundle size or the number of workers.
* **Adaptive back-off** (ADAPTIVE_BACKOFF, on by default), after GitLab's batched background
  migrations: the run learns the server's normal latency from its first sends (per entry, the
  median of the first BASELINE_SENDS), and when a moving average rises past SLOW times that, or
  the server answers 429/503, it sends less: first fewer workers, then a pause between sends
  (doubling up to MAX_PAUSE). It recovers one step at a time after HEALTHY_SENDS healthy sends
  in a row. After each change the next SETTLING_SENDS sends are not judged: a change needs a
  few sends to show, and judging at once would run the brakes all the way down. Each change
  is an event ("server slow: 2 → 1 worker") the progress output shows.

A migration's own sends are a poor gauge of what *other* users suffer: their latency is what
the migration itself causes from its first bundle on, so it stays flat while a clinician's
search gets slower. So the back-off also times a **probe**, the read a clinician makes (the
state resource, by id), every PROBE_EVERY seconds once the run sends bundles (PROBE_MIN_ENTRIES
or more entries; a trivial migration costs no probe): the first PROBE_BASELINE probes, in a row
before the first bundle, are the server's normal, and a probe slower than PROBE_SLOW times that
counts as a slow server.

The throttle is per run: the baselines learnt by the first migration hold for the next ones.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

BASELINE_SENDS = 5
SLOW = 3.0  # a moving average this many times the baseline is "slow"
WELL = 1.5  # below this many times the baseline is "healthy"
HEALTHY_SENDS = 10
SETTLING_SENDS = 3  # after a change, sends not judged: the change needs time to show
SMOOTHING = 0.3  # weight of the newest latency in the moving average
FIRST_PAUSE = 0.5
MAX_PAUSE = 8.0
PROBE_EVERY = 2.0  # seconds between probes
PROBE_MIN_ENTRIES = 10  # a send this large starts the probing
PROBE_BASELINE = 3  # probes whose median is the server's normal
PROBE_SLOW = 2.0  # a probe (moving average) this many times its baseline is "slow"
PROBE_WELL = 1.3

Notify = Callable[[str], None]


class Throttle:
    def __init__(self, *, max_rate: float | None, adaptive: bool, workers: int,
                 notify: Notify | None = None, probe: Callable[[], object] | None = None):
        self.max_rate = max_rate
        self.adaptive = adaptive
        self.full_workers = max(1, workers)
        self.notify = notify or (lambda text: None)
        self.level = 0  # 0: full speed; 1..workers-1: fewer workers; beyond: pauses between sends
        self._free_at = 0.0  # time.monotonic() when the MAX_RATE clock is free again
        self._first: list[float] = []
        self.baseline: float | None = None  # seconds per entry, when the server was well
        self._average: float | None = None
        self._healthy = 0
        self._settling = 0
        self.probe = probe  # a clinician's read; set once the run knows what to read
        self._probing = False
        self._probed_at = 0.0
        self._probe_first: list[float] = []
        self.probe_baseline: float | None = None
        self._probe_average: float | None = None
        self._mutex = threading.Lock()

    # --- what senders ask -----------------------------------------------------------------------

    def workers(self, wanted: int) -> int:
        """How many bundles may be in flight now (the block asked for `wanted`)."""
        return max(1, min(wanted, self.full_workers - self.level))

    @property
    def pause(self) -> float:
        steps = self.level - (self.full_workers - 1)
        return 0.0 if steps <= 0 else min(MAX_PAUSE, FIRST_PAUSE * 2 ** (steps - 1))

    def admit(self, entries: int) -> float:
        """Wait until a send of `entries` may start; returns when its MAX_RATE slot ends (0:
        no limit), for `settle`."""
        if self.adaptive and self.probe is not None and entries >= PROBE_MIN_ENTRIES:
            self._maybe_probe()
        pause = self.pause
        if pause:
            time.sleep(pause)
        if not self.max_rate or entries <= 0:
            return 0.0
        with self._mutex:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + entries / self.max_rate
            end = self._free_at
        if start > now:
            time.sleep(start - now)
        return end

    @staticmethod
    def settle(slot_end: float) -> None:
        """After a send: wait out the rest of its MAX_RATE slot."""
        wait = slot_end - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    # --- what the server tells --------------------------------------------------------------------

    def observe(self, seconds: float, entries: int) -> None:
        """A send of `entries` took `seconds`."""
        if not self.adaptive or entries <= 0:
            return
        latency = seconds / entries
        with self._mutex:
            if self.baseline is None:
                self._first.append(latency)
                if len(self._first) >= BASELINE_SENDS:
                    self.baseline = statistics.median(self._first)
                    self._average = self.baseline
                return
            assert self._average is not None
            self._average = SMOOTHING * latency + (1 - SMOOTHING) * self._average
            if self._settling:
                self._settling -= 1
            elif self._average > SLOW * self.baseline:
                self._healthy = 0
                self._slower("server slow")
                self._average = self.baseline * WELL  # judge the next sends afresh
            elif self._average < WELL * self.baseline:
                self._healthy += 1
                if self._healthy >= HEALTHY_SENDS and self.level > 0:
                    self._healthy = 0
                    self._faster()
            else:
                self._healthy = 0

    def _maybe_probe(self) -> None:
        """Time a clinician's read, at most every PROBE_EVERY s, by one sender at a time."""
        with self._mutex:
            now = time.monotonic()
            if self._probing or now - self._probed_at < PROBE_EVERY:
                return
            self._probing, self._probed_at = True, now
        try:
            # The first time: PROBE_BASELINE probes in a row, before this first bundle goes out,
            # are the server as others know it; then one every PROBE_EVERY seconds.
            for _ in range(PROBE_BASELINE if self.probe_baseline is None else 1):
                seconds = self._time_probe()
                if seconds is not None:
                    self.observe_probe(seconds)
        finally:
            self._probing = False

    def _time_probe(self) -> float | None:
        assert self.probe is not None
        started = time.monotonic()
        try:
            self.probe()
        except Exception:  # noqa: BLE001 - a failed probe says nothing about latency
            return None
        return time.monotonic() - started

    def observe_probe(self, seconds: float) -> None:
        with self._mutex:
            if self.probe_baseline is None:
                self._probe_first.append(seconds)
                if len(self._probe_first) >= PROBE_BASELINE:
                    self.probe_baseline = statistics.median(self._probe_first)
                    self._probe_average = self.probe_baseline
                return
            assert self._probe_average is not None
            self._probe_average = SMOOTHING * seconds + (1 - SMOOTHING) * self._probe_average
            if self._settling:
                return
            if self._probe_average > PROBE_SLOW * self.probe_baseline:
                self._healthy = 0
                self._slower("others' reads slow")
                self._probe_average = self.probe_baseline * PROBE_WELL
            elif self._probe_average >= PROBE_WELL * self.probe_baseline:
                self._healthy = 0  # not well enough to speed up again

    def busy(self) -> None:
        """The server answered 429 or 503: it asked for less, whatever the latency says."""
        if not self.adaptive:
            return
        with self._mutex:
            self._healthy = 0
            if not self._settling:
                self._slower("server busy (429/503)")

    def on_response(self, method: str, url: str, status: int | None) -> None:
        """A connection observer: every answer the run gets, for 429/503."""
        if status in (429, 503):
            self.busy()

    def _slower(self, why: str) -> None:
        before = self._describe()
        if self.pause >= MAX_PAUSE:
            return
        self.level += 1
        self._settling = SETTLING_SENDS
        self.notify(f"{why}: {before} → {self._describe()}")

    def _faster(self) -> None:
        before = self._describe()
        self.level -= 1
        self._settling = SETTLING_SENDS
        self.notify(f"server well again: {before} → {self._describe()}")

    def _describe(self) -> str:
        pause = self.pause
        workers = self.workers(self.full_workers)
        text = f"{workers} worker{'' if workers == 1 else 's'}"
        return f"{text}, {pause:g} s between sends" if pause else text


__all__ = ["Throttle"]
