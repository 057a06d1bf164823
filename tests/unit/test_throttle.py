"""The throttle's arithmetic (MAX_RATE slots and the adaptive back-off), without a server."""

from __future__ import annotations

import threading
import time

from django_fhir_migrations.engine import throttle as throttle_module
from django_fhir_migrations.engine.throttle import (
    BASELINE_SENDS,
    HEALTHY_SENDS,
    MIN_BUNDLE,
    PROBE_BASELINE,
    PROBE_CALM,
    Throttle,
)


def test_max_rate_spreads_sends_over_the_clock_whatever_their_size():
    throttle = Throttle(max_rate=1000, adaptive=False, workers=2)
    started = time.monotonic()
    for entries in (100, 100, 100):
        throttle.settle(throttle.admit(entries))
    assert time.monotonic() - started >= 0.3  # 300 resources at 1,000 per second


def test_a_slow_server_gets_fewer_workers_then_smaller_bundles_then_pauses_then_recovers():
    said: list[str] = []
    throttle = Throttle(max_rate=None, adaptive=True, workers=2, notify=said.append)
    for _ in range(BASELINE_SENDS):
        throttle.observe(1.0, 100)  # 10 ms per entry: normal
    assert throttle.workers(2) == 2 and throttle.pause == 0 and throttle.bundle_size(100) == 100

    def slow_sends() -> None:
        for _ in range(6):  # ten times slower: the sends that settle a change, then three judged
            throttle.observe(10.0, 100)

    slow_sends()
    assert throttle.workers(2) == 1 and throttle.bundle_size(100) == 100
    assert said[0] == "server slow: 2 workers → 1 worker"
    slow_sends()
    assert throttle.bundle_size(100) == 50 and throttle.bundle_size(30) == 15
    assert said[-1] == "server slow: 1 worker → 1 worker, half-size bundles"
    slow_sends()
    assert throttle.bundle_size(100) == 25 and throttle.bundle_size(12) == MIN_BUNDLE
    assert throttle.bundle_size(4) == 4 and throttle.pause == 0
    slow_sends()
    # A pause is a share of the time a send takes (the moving average of the last ones).
    assert throttle.pause > 0 and "between sends" in said[-1]
    first_pause = throttle.pause
    slow_sends()
    assert throttle.pause > first_pause
    for _ in range(HEALTHY_SENDS * 10):
        throttle.observe(1.0, 100)
    assert throttle.workers(2) == 2 and throttle.pause == 0 and throttle.bundle_size(100) == 100
    assert said[-1] == "server well again: 1 worker → 2 workers"


def test_a_smaller_bundle_is_slow_only_when_it_takes_longer_than_a_full_one_did():
    """A bundle's fixed cost (the request, the commit) raises the time per entry of a smaller one
    though the server is no slower: a quarter-size bundle taking nearly as long as a full one is
    no reason to step down; one taking several times as long is."""
    said: list[str] = []
    throttle = Throttle(max_rate=None, adaptive=True, workers=1, notify=said.append)
    for _ in range(BASELINE_SENDS):
        throttle.observe(1.0, 100)  # bundles of 100 in 1 s: the server's normal
    for _ in range(20):
        throttle.observe(0.9, 25)  # 36 ms per entry, 3.6 x; the whole send faster than a full one
    assert said == [] and throttle.bundle_size(100) == 100
    for _ in range(4):
        throttle.observe(4.0, 25)  # a quarter of the work, four times the time: slow
    assert said == ["server slow: 1 worker → 1 worker, half-size bundles"]


def test_one_stalled_send_is_no_slow_server():
    """A checkpoint or a collection stalls one send now and then: the median of the last sends
    is judged, so it takes more than one to step down."""
    said: list[str] = []
    throttle = Throttle(max_rate=None, adaptive=True, workers=2, notify=said.append)
    for _ in range(BASELINE_SENDS):
        throttle.observe(1.0, 100)
    for _ in range(30):
        throttle.observe(1.0, 100)
        throttle.observe(1.1, 100)
        throttle.observe(20.0, 100)  # one in three stalled
    assert said == []
    throttle.observe(20.0, 100)  # three of the last five: the server is slow
    assert said == ["server slow: 2 workers → 1 worker"]


def test_429_or_503_slows_down_at_once_and_no_latency_is_judged_before_the_baseline():
    throttle = Throttle(max_rate=None, adaptive=True, workers=3)
    throttle.observe(50.0, 1)  # one slow send before any baseline: not judged
    assert throttle.workers(3) == 3
    throttle.on_response("POST", "http://fhir.test/fhir/", 503)
    assert throttle.workers(3) == 2
    throttle.on_response("GET", "http://fhir.test/fhir/Patient", 200)
    assert throttle.workers(3) == 2


def test_without_the_back_off_nothing_changes():
    throttle = Throttle(max_rate=None, adaptive=False, workers=2)
    for _ in range(20):
        throttle.observe(100.0, 1)
    throttle.busy()
    assert throttle.workers(2) == 2 and throttle.pause == 0 and throttle.bundle_size(100) == 100


class Probes:
    """A clinician's search whose time the test sets, counted."""

    def __init__(self, seconds: float = 0.001):
        self.seconds = seconds
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        time.sleep(self.seconds)


def probed(throttle: Throttle, seconds: float, times: int) -> None:
    """`times` searches of `seconds` each, as timed after the baseline (their timing is the
    test's, not the machine's: a loaded machine cannot make a calm one slow)."""
    for _ in range(times):
        throttle.observe_probe(seconds)


def probing_throttle(said: list[str]) -> Throttle:
    """Two workers, past the baselines of its own sends and of the others' searches (so started
    gently: one worker, half-size bundles)."""
    probes = Probes(0.01)
    throttle = Throttle(max_rate=None, adaptive=True, workers=2, notify=said.append, probe=probes)
    for _ in range(BASELINE_SENDS):
        throttle.observe(0.1, 100)
    throttle.admit(100)  # the first bundle: the baseline of the others' searches (10 ms)
    return throttle


def healthy_sends(throttle: Throttle) -> None:
    for _ in range(HEALTHY_SENDS + 5):  # past the sends that settle a change and fill the window
        throttle.observe(0.1, 100)


def climb(throttle: Throttle, steps: int = 1) -> None:
    """Calm searches and healthy sends, enough for `steps` steps up."""
    for _ in range(steps):
        probed(throttle, 0.01, PROBE_CALM)
        healthy_sends(throttle)


def test_a_run_starts_gently_and_climbs_as_others_searches_show_room():
    said: list[str] = []
    probes = Probes(0.01)
    throttle = Throttle(max_rate=None, adaptive=True, workers=2, notify=said.append, probe=probes)
    throttle.admit(5)  # small sends start no probing (a trivial migration costs no request)
    assert throttle.probe_baseline is None and probes.count == 0 and throttle.workers(2) == 2
    throttle.admit(100)  # the first bundle: PROBE_BASELINE probes in a row are the server's normal
    assert probes.count == PROBE_BASELINE and throttle.probe_baseline is not None
    assert said == ["a live server, starting gently: 2 workers → 1 worker, half-size bundles"]
    assert throttle.workers(2) == 1 and throttle.bundle_size(100) == 50
    for _ in range(BASELINE_SENDS):
        throttle.observe(0.05, 50)
    climb(throttle)
    assert said[-1] == "server well again: 1 worker, half-size bundles → 1 worker"
    climb(throttle)
    assert said[-1] == "server well again: 1 worker → 2 workers"
    assert throttle.workers(2) == 2 and throttle.bundle_size(100) == 100


def test_others_searches_getting_slow_slow_the_run_down_even_when_its_own_sends_are_not():
    said: list[str] = []
    throttle = probing_throttle(said)
    climb(throttle, 2)
    assert throttle.workers(2) == 2
    probed(throttle, 0.01, 20)  # as fast as idle: nothing changes
    probed(throttle, 0.2, 1)  # one slow search among ten is not yet a tail
    assert throttle.workers(2) == 2
    probed(throttle, 0.2, 1)
    assert throttle.workers(2) == 1 and said[-1] == "others' searches slow: 2 workers → 1 worker"


def test_a_step_up_waits_for_calm_searches_and_a_step_up_found_too_much_doubles_the_wait():
    said: list[str] = []
    throttle = probing_throttle(said)
    climb(throttle)
    assert throttle.workers(2) == 1 and throttle.bundle_size(100) == 100
    probed(throttle, 0.01, PROBE_CALM - 1)
    healthy_sends(throttle)
    assert throttle.workers(2) == 1  # its own sends are healthy, but not yet PROBE_CALM calm searches
    probed(throttle, 0.01, 1)
    healthy_sends(throttle)
    assert throttle.workers(2) == 2 and said[-1] == "server well again: 1 worker → 2 workers"
    probed(throttle, 0.2, 2)  # two workers were too much for the others
    assert throttle.workers(2) == 1
    climb(throttle)
    assert throttle.workers(2) == 1  # now it waits twice as long
    climb(throttle)
    assert throttle.workers(2) == 2


def test_no_bundle_goes_out_while_the_servers_normal_is_measured(monkeypatch):
    monkeypatch.setattr(throttle_module, "PROBE_BASELINE", 5)
    probes = Probes(0.02)
    throttle = Throttle(max_rate=None, adaptive=True, workers=2, probe=probes)
    first = threading.Thread(target=throttle.admit, args=(100,))
    first.start()
    time.sleep(0.01)  # the first sender is measuring the baseline
    throttle.admit(100)  # a second sender waits for it
    assert probes.count == 5 and throttle.probe_baseline is not None
    first.join()


def test_others_searches_alone_stop_at_one_worker_and_half_bundles_a_slow_server_goes_further():
    said: list[str] = []
    throttle = probing_throttle(said)
    climb(throttle, 2)
    probed(throttle, 0.2, 30)  # the others stay slow however little the run sends
    assert throttle.workers(2) == 1 and throttle.bundle_size(100) == 50 and throttle.pause == 0
    assert said[-2:] == ["others' searches slow: 2 workers → 1 worker",
                         "others' searches slow: 1 worker → 1 worker, half-size bundles"]
    # no further: at least half the throughput is kept for a reason the run cannot see
    for _ in range(6):  # the sends that settle the last change, then three judged
        throttle.observe(1.0, 100)  # its own sends ten times slower: the server itself is slow
    assert throttle.bundle_size(100) == 25


def test_a_server_that_refuses_the_search_is_not_asked_again_and_again():
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise RuntimeError("403 Forbidden")

    throttle = Throttle(max_rate=None, adaptive=True, workers=2, probe=refused)
    throttle.admit(100)  # the baseline: every search refused
    assert throttle.probe_baseline is None and len(calls) == PROBE_BASELINE
    for _ in range(5):
        throttle._probed_at = 0.0
        throttle.admit(100)
    assert len(calls) == PROBE_BASELINE and throttle.workers(2) == 2
