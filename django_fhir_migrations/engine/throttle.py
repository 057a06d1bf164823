"""How fast a migration may write to a server that clinicians are using at the same time.

Two brakes, both consulted by the journal before every send (a bundle, or a single write):

* **MAX_RATE** (resources per second, across all workers): each send reserves a slot of
  `entries / MAX_RATE` seconds on one shared clock and its sender waits for the slot to start,
  and after sending, for it to end. So N resources take at least N / MAX_RATE seconds, whatever
  the bundle size or the number of workers.
* **Adaptive back-off** (ADAPTIVE_BACKOFF, on by default), after GitLab's batched background
  migrations: when the server is slow it sends less, one step at a time: first fewer workers,
  then smaller batch bundles (halved SHRINK_STEPS times, never below MIN_BUNDLE; a transaction
  keeps its size, it is what the script wants atomic), then a pause between sends (a share of
  the time a send takes, doubling, up to MAX_PAUSE). Each change is an event ("others' searches
  slow: 2 → 1 worker") the progress output shows.

What counts as slow, two gauges:

* **Others' searches** (the gauge that matters on a live server). A migration's own sends are
  a poor gauge of what *other* users suffer: their latency is what the migration itself causes
  from its first bundle on, so it stays flat while a clinician's search gets slower. So once
  the run sends bundles (PROBE_MIN_ENTRIES or more entries; a trivial migration costs no
  request) it times a **probe**, a search as clinicians make (the state, by identifier; their
  reads by id barely slow down, their searches do), every PROBE_EVERY seconds. The
  PROBE_BASELINE probes in a row before the first bundle (no other bundle goes out meanwhile)
  are the server's normal (their median); a probe over PROBE_SLOW times that is a slow one.
  The run steps down when PROBE_SLOW_COUNT of the last PROBE_WINDOW probes at its current step
  were slow, a tail statistic: what a clinician notices is the slow request, not the average
  one. Others' searches alone bring the run down to one worker and bundles halved
  PROBE_SHRINK_STEPS times, no further: that keeps at least about half the throughput, and a
  search can be slow for reasons the run does not cause. It steps back up only after
  PROBE_CALM probes in a row without a slow one (and its own sends healthy); a step up that is
  soon found too much doubles that wait, so the run settles on the fastest step others can live
  with instead of swinging around it.
  A run whose probe works **starts gently**: once the normal is measured it goes straight to
  that lowest step and climbs by the step-up rule, so a live server never meets the run's full
  speed before the run knows it can take it. Stepping down from full speed takes two slow
  probes per step, seconds at the load that hurts others most; learning that there is room
  costs only throughput.
* **Its own sends** and the server's word: the time per entry of the last SEND_WINDOW sends
  (their median, so one send stalled by a checkpoint or a collection does not count) rising
  past SLOW times the median of the first BASELINE_SENDS, or a 429/503, steps down too (after a
  change the next SETTLING_SENDS sends are not judged: a change needs a few sends to show, and
  the new step is judged by its own sends, at least SEND_JUDGED of them).
  A send smaller than those first ones is judged by its whole time, as if it held as many
  entries: a bundle carries a fixed cost (the request, the commit), so halving it raises the
  time per entry by up to two though the server is no slower; a half-size bundle is slow only
  when it takes longer than a full one did.
  Where no probe runs it steps up after HEALTHY_SENDS healthy sends in a row.

Measured on the 2-core test machine (benchmarks/README.md, the clinicians row): fewer workers
alone do not bring the clinicians' p95 back within 2x idle there; one worker with smaller
bundles does, at about two thirds of the throughput: a clinician's request that arrives while a
bundle commits waits for it, and a smaller bundle commits sooner.

The throttle is per run: the baselines learnt by the first migration hold for the next ones.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

BASELINE_SENDS = 5
SLOW = 3.0  # the last sends' median time per entry this many times the baseline is "slow"
WELL = 1.5  # below this many times the baseline is "healthy"
HEALTHY_SENDS = 10
SETTLING_SENDS = 3  # after a change, sends not judged: the change needs time to show
SMOOTHING = 0.3  # weight of the newest send in the moving average of a send's time (pauses)
SEND_WINDOW = 5  # the last sends at the current step whose median is judged ...
SEND_JUDGED = 3  # ... once there are this many
SHRINK_STEPS = 2  # after one worker: batch bundles halved, then quartered
MIN_BUNDLE = 10
PAUSE_SHARE = 0.5  # the first pause: half the time a send takes (sending two thirds of the time)
FIRST_PAUSE = 0.5  # before any send was timed (a 429 on the first one)
MIN_PAUSE = 0.05
MAX_PAUSE = 8.0
PAUSE_STEPS = 8
PROBE_EVERY = 0.25  # seconds between probes
PROBE_MIN_ENTRIES = 10  # a send this large starts the probing
PROBE_BASELINE = 10  # probes in a row whose median is the server's normal
PROBE_SLOW = 2.0  # a probe this many times the normal is a slow one (idle p95: ~1.3 x the median)
PROBE_WINDOW = 10  # the last probes judged at the current step ...
PROBE_SLOW_COUNT = 2  # ... of which this many slow ones step down (a tail of ~20 %)
PROBE_SHRINK_STEPS = 1  # others' searches alone bring the run down to one worker, half bundles
PROBE_CALM = 120  # probes in a row without a slow one before a step up
PROBE_CALM_MAX = 480

Notify = Callable[[str], None]


class Throttle:
    def __init__(self, *, max_rate: float | None, adaptive: bool, workers: int,
                 notify: Notify | None = None, probe: Callable[[], object] | None = None):
        self.max_rate = max_rate
        self.adaptive = adaptive
        self.full_workers = max(1, workers)
        self.notify = notify or (lambda text: None)
        # 0: full speed; then one step per worker less, per bundle halving, per pause doubling
        self.level = 0
        self._free_at = 0.0  # time.monotonic() when the MAX_RATE clock is free again
        self._first: list[tuple[float, int]] = []  # (seconds, entries) of the first sends
        self.baseline: float | None = None  # seconds per entry, when the server was well
        self._baseline_entries = 1  # the usual size of those sends
        self._recent_sends: deque[float] = deque(maxlen=SEND_WINDOW)  # seconds per entry, this step
        self._send_seconds: float | None = None  # moving average of a whole send's time
        self._healthy = 0
        self._settling = 0
        self.probe = probe  # a clinician's read; set once the run knows what to read
        self._probing = False
        self._probed_at = 0.0
        self._probe_first: list[float] = []
        self.probe_baseline: float | None = None
        self._recent_probes: deque[bool] = deque(maxlen=PROBE_WINDOW)  # slow? at this step
        self._calm_probes = 0  # probes in a row without a slow one, at this step
        self._calm_needed = PROBE_CALM
        self._probe_gave_up = False  # the baseline could not be measured: no probing this run
        self._stepped_up = False  # the last change was a step up
        self._baseline_measured = threading.Event()
        self._mutex = threading.Lock()

    # --- the steps ----------------------------------------------------------------------------

    @property
    def _shrink(self) -> int:
        return max(0, min(SHRINK_STEPS, self.level - (self.full_workers - 1)))

    @property
    def _probe_floor(self) -> int:
        """The deepest step others' searches alone may bring the run to: one worker, bundles
        halved PROBE_SHRINK_STEPS times."""
        return self.full_workers - 1 + PROBE_SHRINK_STEPS

    @property
    def _pause_steps(self) -> int:
        return max(0, self.level - (self.full_workers - 1) - SHRINK_STEPS)

    # --- what senders ask -----------------------------------------------------------------------

    def workers(self, wanted: int) -> int:
        """How many bundles may be in flight now (the block asked for `wanted`)."""
        return max(1, min(wanted, self.full_workers - self.level))

    def bundle_size(self, wanted: int) -> int:
        """How many entries a batch bundle may hold now (the block asked for `wanted`)."""
        return max(min(wanted, MIN_BUNDLE), wanted >> self._shrink)

    @property
    def pause(self) -> float:
        steps = self._pause_steps
        if steps <= 0:
            return 0.0
        first = FIRST_PAUSE if self._send_seconds is None else self._send_seconds * PAUSE_SHARE
        return min(MAX_PAUSE, max(MIN_PAUSE, first * 2 ** (steps - 1)))

    def admit(self, entries: int) -> float:
        """Wait until a send of `entries` may start; returns when its MAX_RATE slot ends (0:
        no limit), for `settle`."""
        if (self.adaptive and self.probe is not None and not self._probe_gave_up
                and entries >= PROBE_MIN_ENTRIES):
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
        with self._mutex:
            self._send_seconds = (seconds if self._send_seconds is None
                                  else SMOOTHING * seconds + (1 - SMOOTHING) * self._send_seconds)
            if self.baseline is None:
                self._first.append((seconds, entries))
                if len(self._first) >= BASELINE_SENDS:
                    self.baseline = statistics.median(s / n for s, n in self._first)
                    self._baseline_entries = int(statistics.median_low(n for _, n in self._first))
                return
            # A smaller send is judged by its whole time (see the docstring: a bundle's fixed cost)
            latency = seconds / max(entries, self._baseline_entries)
            if self._settling:
                self._settling -= 1
                return
            self._recent_sends.append(latency)
            if len(self._recent_sends) < SEND_JUDGED:
                return
            typical = statistics.median(self._recent_sends)
            if typical > SLOW * self.baseline:
                self._slower("server slow")
            elif typical < WELL * self.baseline:
                self._healthy += 1
                if self._healthy >= HEALTHY_SENDS and self.level > 0 and self._others_calm():
                    self._faster()
            else:
                self._healthy = 0

    def _others_calm(self) -> bool:
        """No probe runs, or the last `_calm_needed` probes at this step were none of them slow."""
        return self.probe_baseline is None or self._calm_probes >= self._calm_needed

    def _maybe_probe(self) -> None:
        """Time a clinician's search, at most every PROBE_EVERY s, by one sender at a time."""
        with self._mutex:
            now = time.monotonic()
            first = self.probe_baseline is None
            due = not self._probing and now - self._probed_at >= PROBE_EVERY
            if due:
                self._probing, self._probed_at = True, now
        if not due:
            if first:
                # The baseline is being measured: no bundle goes out until it is, or the
                # server's normal would be measured under this run's own load.
                self._baseline_measured.wait(timeout=10 * PROBE_BASELINE)
            return
        try:
            # The first time: PROBE_BASELINE probes in a row, before the first bundle goes out,
            # are the server as others know it; then one every PROBE_EVERY seconds.
            for _ in range(PROBE_BASELINE if first else 1):
                seconds = self._time_probe()
                if seconds is not None:
                    self.observe_probe(seconds)
        finally:
            self._probing = False
            if first:
                # A server that refuses the search gives no baseline: stop asking it, rather
                # than PROBE_BASELINE failing searches every PROBE_EVERY seconds.
                self._probe_gave_up = self.probe_baseline is None
                self._baseline_measured.set()

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
                    if self.level < self._probe_floor:  # start gently (see the docstring)
                        self._change(self._probe_floor - self.level, "a live server, starting gently")
                return
            slow = seconds > PROBE_SLOW * self.probe_baseline
            self._recent_probes.append(slow)
            self._calm_probes = 0 if slow else self._calm_probes + 1
            if self.level >= self._probe_floor:
                return  # deeper steps are for a server that is slow itself (see the docstring)
            if sum(self._recent_probes) >= PROBE_SLOW_COUNT:
                if self._stepped_up:  # the step up was too much: wait longer before the next
                    self._calm_needed = min(PROBE_CALM_MAX, self._calm_needed * 2)
                self._slower("others' searches slow")

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
        self._healthy = 0
        if self._pause_steps >= PAUSE_STEPS:
            return
        self._change(+1, why)
        self._stepped_up = False

    def _faster(self) -> None:
        self._change(-1, "server well again")
        self._stepped_up = True

    def _change(self, step: int, why: str) -> None:
        before = self._describe()
        self.level += step
        self._healthy = 0
        self._settling = SETTLING_SENDS
        self._recent_probes.clear()  # the new step is judged by its own probes and sends
        self._recent_sends.clear()
        self._calm_probes = 0
        self.notify(f"{why}: {before} → {self._describe()}")

    def _describe(self) -> str:
        workers = self.workers(self.full_workers)
        parts = [f"{workers} worker{'' if workers == 1 else 's'}"]
        if self._shrink:  # each block's own size, halved: the wording holds whatever size it asked
            parts.append({1: "half", 2: "quarter"}.get(self._shrink, f"1/{2 ** self._shrink}") + "-size bundles")
        if self.pause:
            parts.append(f"{self.pause:.2g} s between sends")
        return ", ".join(parts)


__all__ = ["Throttle"]
