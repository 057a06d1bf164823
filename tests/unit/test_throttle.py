"""The throttle's arithmetic (MAX_RATE slots and the adaptive back-off), without a server."""

from __future__ import annotations

import time

from django_fhir_migrations.engine.throttle import BASELINE_SENDS, HEALTHY_SENDS, Throttle


def test_max_rate_spreads_sends_over_the_clock_whatever_their_size():
    throttle = Throttle(max_rate=1000, adaptive=False, workers=2)
    started = time.monotonic()
    for entries in (100, 100, 100):
        throttle.settle(throttle.admit(entries))
    assert time.monotonic() - started >= 0.3  # 300 resources at 1,000 per second


def test_a_slow_server_gets_fewer_workers_then_pauses_then_recovers_step_by_step():
    said: list[str] = []
    throttle = Throttle(max_rate=None, adaptive=True, workers=2, notify=said.append)
    for _ in range(BASELINE_SENDS):
        throttle.observe(1.0, 100)  # 10 ms per entry: normal
    assert throttle.workers(2) == 2 and throttle.pause == 0
    for _ in range(3):
        throttle.observe(10.0, 100)  # ten times slower
    assert throttle.workers(2) == 1
    assert said[0] == "server slow: 2 workers → 1 worker"
    for _ in range(3):
        throttle.observe(10.0, 100)
    assert throttle.pause > 0 and "between sends" in said[-1]
    for _ in range(HEALTHY_SENDS * 3):
        throttle.observe(1.0, 100)
    assert throttle.workers(2) == 2 and throttle.pause == 0
    assert said[-1] == "server well again: 1 worker → 2 workers"


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
    assert throttle.workers(2) == 2 and throttle.pause == 0


def test_reads_of_other_users_getting_slow_slow_the_run_down_even_when_its_own_sends_are_not():
    said: list[str] = []
    probes = iter([0.01, 0.01, 0.01] + [0.2] * 20)
    throttle = Throttle(max_rate=None, adaptive=True, workers=2, notify=said.append,
                        probe=lambda: time.sleep(next(probes)))
    throttle.admit(5)  # small sends start no probing (a trivial migration costs no request)
    assert throttle.probe_baseline is None
    throttle.admit(100)  # the first bundle: three probes in a row are the server's normal
    assert throttle.probe_baseline is not None and throttle.probe_baseline < 0.1
    for _ in range(3):
        throttle._probed_at = 0.0  # as if PROBE_EVERY had passed
        throttle.admit(100)
    assert throttle.workers(2) == 1 and said[0] == "others' reads slow: 2 workers → 1 worker"
