"""pipeline.stages: the thread/queue runtime on plain Python stages (order, busy time, errors, early stops)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.stages import StageChain, batched


def running_stage_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("usgan-") and thread.is_alive()]


def slow(items, seconds: float):
    for item in items:
        time.sleep(seconds)
        yield item


def test_items_pass_every_stage_in_order_and_busy_time_is_measured():
    chain = StageChain(queue_size=2)
    chain.add("count", lambda _: range(20))
    chain.add("square", lambda numbers: (n * n for n in slow(numbers, 0.01)))
    with chain.running() as results:
        assert list(results) == [n * n for n in range(20)]
    busy = chain.busy_seconds()
    assert list(busy) == ["count", "square"]
    assert busy["square"] >= 0.15 and busy["count"] < busy["square"]  # waiting on a full queue is not busy
    assert not running_stage_threads()


def test_a_failing_stage_stops_every_thread_and_its_error_is_raised_in_the_caller():
    def explode(numbers):
        for n in numbers:
            if n == 5:
                raise RuntimeError("stage exploded")
            yield n

    chain = StageChain(queue_size=1)
    chain.add("count", lambda _: iter(range(10**9)))  # endless: only the stop ends it
    chain.add("explode", explode)
    received = []
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="stage exploded"):
        with chain.running() as results:
            received.extend(results)
    assert received == list(range(len(received))) and len(received) <= 5  # in order, none after the failure
    assert time.perf_counter() - started < 10
    assert not running_stage_threads()


def test_the_consumers_own_error_passes_through_and_stops_the_stages():
    chain = StageChain(queue_size=1)
    chain.add("count", lambda _: iter(range(10**9)))
    with pytest.raises(KeyboardInterrupt):
        with chain.running() as results:
            for n in results:
                if n == 3:
                    raise KeyboardInterrupt
    assert not running_stage_threads() and not chain.errors


def test_a_consumer_that_stops_early_stops_the_stages():
    def consume(chain: StageChain):
        with chain.running() as results:
            yield from results

    chain = StageChain(queue_size=1)
    chain.add("count", lambda _: iter(range(10**9)))
    consumer = consume(chain)
    assert [next(consumer) for _ in range(3)] == [0, 1, 2]
    consumer.close()
    assert not running_stage_threads()


@pytest.mark.parametrize("weights, expected", [
    ([1, 1, 1, 0, 1, 1, 1], [[1, 1, 1], [0, 1, 1], [1]]),  # 3 weight, then 3 items, then the rest
    ([2, 2, 0], [[2, 2], [0]]),
    ([0, 0, 0, 0], [[0, 0, 0], [0]]),
    ([], []),
])
def test_batched_ends_a_group_at_size_weight_or_size_items(weights, expected):
    assert list(batched(weights, 3, lambda weight: weight)) == expected
