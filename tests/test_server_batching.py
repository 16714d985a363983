"""Micro-batching: requests that arrive while a search runs share the next call, and get their own answers."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from embedkit.index.base import Hit
from embedkit.server.batching import MicroBatcher


class RecordingSearch:
    """A search function that records each call's queries; the first call blocks until released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, texts: list[str], k: int) -> list[list[Hit]]:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.release.wait(timeout=30)
        if "boom" in texts:
            raise ValueError("search failed")
        return [[Hit(id=f"{text}#{i}", score=float(k - i), rank=i + 1) for i in range(k)] for text in texts]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("enabled", [True, False])
def test_waiting_requests_are_gathered_into_one_call(enabled):
    search = RecordingSearch()

    async def scenario():
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1)], max_batch_size=64, max_wait_ms=0, enabled=enabled)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(["q0"], 1))
        while not search.calls:  # the first call is running (and blocked) on the worker thread
            await asyncio.sleep(0.005)
        rest = [asyncio.create_task(batcher.submit([f"q{i}", f"q{i}b"], k=i)) for i in range(1, 8)]
        await asyncio.sleep(0.05)  # all seven are queued behind the running call
        search.release.set()
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return answers, batcher.stats

    answers, stats = run(scenario())
    if enabled:
        assert search.calls[1] == [q for i in range(1, 8) for q in (f"q{i}", f"q{i}b")]  # one call for seven requests
        assert stats.calls == 2 and stats.largest_call == 14
    else:
        assert len(search.calls) == 8 and stats.calls == 8
    # every request gets its own queries' hits, cut to its own k
    assert [h.id for h in answers[0][0]] == ["q0#0"]
    for i, answer in enumerate(answers[1:], start=1):
        assert [[h.id for h in hits] for hits in answer] == [[f"q{i}#{j}" for j in range(i)],
                                                             [f"q{i}b#{j}" for j in range(i)]]


def test_batches_respect_the_size_limit_and_errors_reach_only_their_batch():
    search = RecordingSearch()
    search.release.set()

    async def scenario():
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1)], max_batch_size=4, max_wait_ms=20)
        await batcher.start()
        results = await asyncio.gather(*[batcher.submit([f"a{i}", f"b{i}"], 1) for i in range(5)],
                                       return_exceptions=True)
        failed = await asyncio.gather(batcher.submit(["boom"], 1), return_exceptions=True)
        after = await batcher.submit(["fine"], 1)  # the worker survives a failing search
        await batcher.stop()
        return results, failed, after

    results, failed, after = run(scenario())
    assert all(len(call) <= 4 for call in search.calls)
    assert [[h.id for h in hits] for hits in results[3]] == [["a3#0"], ["b3#0"]]
    assert isinstance(failed[0], ValueError)
    assert after[0][0].id == "fine#0"


def test_a_request_larger_than_a_batch_is_split_and_reassembled_in_order():
    search = RecordingSearch()
    search.release.set()

    async def scenario():
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1)], max_batch_size=4)
        await batcher.start()
        big = await batcher.submit([f"q{i}" for i in range(10)], 1)
        await batcher.stop()
        return big

    big = run(scenario())
    assert [len(call) for call in search.calls] == [4, 4, 2]
    assert [hits[0].id for hits in big] == [f"q{i}#0" for i in range(10)]


def test_concurrency_runs_that_many_calls_at_once():
    both_running = threading.Barrier(2, timeout=30)
    calls: list[list[str]] = []

    def search(texts, k):
        calls.append(list(texts))
        both_running.wait()  # returns only when a second call runs beside this one
        return [[Hit(id=f"{text}#0", score=1.0, rank=1)] for text in texts]

    async def scenario():
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1), ThreadPoolExecutor(1)], max_batch_size=1)
        await batcher.start()
        answers = await asyncio.gather(batcher.submit(["a"], 1), batcher.submit(["b"], 1))
        await batcher.stop()
        return answers

    answers = run(scenario())
    assert [hits[0][0].id for hits in answers] == ["a#0", "b#0"] and len(calls) == 2


def test_a_large_request_is_spread_over_the_streams():
    search = RecordingSearch()
    search.release.set()

    async def scenario():
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1), ThreadPoolExecutor(1)], max_batch_size=256)
        await batcher.start()
        answer = await batcher.submit([f"q{i}" for i in range(100)], 1)
        await batcher.stop()
        return answer

    answer = run(scenario())
    assert sorted(len(call) for call in search.calls) == [50, 50]
    assert [hits[0].id for hits in answer] == [f"q{i}#0" for i in range(100)]


def test_a_lone_call_runs_on_stream_0_and_overlapping_calls_count_as_load():
    """Stream 0 serves every call that runs alone; `before_call` learns how many calls share the cores."""
    seen: list[tuple[int, int, str]] = []
    gate = threading.Event()

    def search(texts, k):
        if texts == ["slow"]:
            gate.wait(timeout=30)
        return [[Hit(id=f"{text}#0", score=1.0, rank=1)] for text in texts]

    def before_call(stream, sharing):
        seen.append((stream, sharing, threading.current_thread().name))

    async def scenario():
        executors = [ThreadPoolExecutor(1, thread_name_prefix=f"s{i}") for i in range(2)]
        batcher = MicroBatcher(search, executors, max_batch_size=1, before_call=before_call)
        await batcher.start()
        for text in ("a", "b"):  # one after the other: alone, on stream 0
            await batcher.submit([text], 1)
        slow = asyncio.create_task(batcher.submit(["slow"], 1))
        while len(seen) < 3:
            await asyncio.sleep(0.005)
        await batcher.submit(["beside"], 1)  # stream 0 is busy: stream 1, two calls share the cores
        gate.set()
        await slow
        await batcher.submit(["after"], 1)  # alone again, but right after an overlap: still counted as load
        await batcher.stop()

    run(scenario())
    assert [(stream, sharing) for stream, sharing, _ in seen] == [(0, 1), (0, 1), (0, 1), (1, 2), (0, 2)]
    assert {name.split("_")[0] for stream, _, name in seen if stream == 0} == {"s0"}
    assert {name.split("_")[0] for stream, _, name in seen if stream == 1} == {"s1"}


def test_the_parts_of_a_split_request_are_sized_as_sharing_the_cores():
    """A request split over two streams: stream 0 must not take every core while stream 1 runs the other part."""
    seen: list[tuple[int, int]] = []
    search = RecordingSearch()
    search.release.set()

    async def scenario():
        executors = [ThreadPoolExecutor(1) for _ in range(2)]
        batcher = MicroBatcher(search, executors, max_batch_size=256,
                               before_call=lambda stream, sharing: seen.append((stream, sharing)))
        await batcher.start()
        await batcher.submit([f"q{i}" for i in range(64)], 1)
        await batcher.stop()

    run(scenario())
    assert sorted(seen) == [(0, 2), (1, 2)]


def test_a_freed_stream_gathers_the_clients_it_just_answered():
    """Closed-loop clients come back one after another; with gather_ms they share one call, without it they don't."""

    async def scenario(gather_ms):
        search = RecordingSearch()
        search.release.set()
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1)], gather_ms=gather_ms)
        await batcher.start()

        async def client(i):
            await batcher.submit([f"c{i}-first"], 1)  # all four arrive together: one call
            await asyncio.sleep(0.02 * i)  # then they come back staggered, as clients do after their answers
            await batcher.submit([f"c{i}-second"], 1)

        await asyncio.gather(*(client(i) for i in range(4)))
        await batcher.stop()
        return [len(call) for call in search.calls]

    assert run(scenario(gather_ms=5000)) == [4, 4]
    assert run(scenario(gather_ms=0)) == [4, 1, 1, 1, 1]


def test_a_lone_client_is_never_kept_waiting_for_company():
    search = RecordingSearch()
    search.release.set()

    async def scenario():
        batcher = MicroBatcher(search, [ThreadPoolExecutor(1)], gather_ms=60_000)
        await batcher.start()
        for i in range(3):  # one client, one request at a time: a minute's gather would time these out
            await asyncio.wait_for(batcher.submit([f"q{i}"], 1), timeout=10)
        await batcher.stop()

    run(scenario())
    assert [len(call) for call in search.calls] == [1, 1, 1]


def test_requests_waiting_for_two_idle_streams_are_split_between_them():
    """Eight queued requests and two idle streams: two calls of four side by side, not one call of eight."""
    started = threading.Barrier(2, timeout=10)
    calls: list[tuple[str, list[str]]] = []

    def search(texts, k):
        calls.append((threading.current_thread().name, list(texts)))
        if len(calls) <= 2:
            started.wait()  # returns only if both calls run at once
        return [[Hit(id=text, score=1.0, rank=1)] for text in texts]

    async def scenario():
        streams = [ThreadPoolExecutor(1, thread_name_prefix=f"stream{i}") for i in range(2)]
        batcher = MicroBatcher(search, streams)
        await batcher.start()
        # Queued before the worker first looks: the batch forms with both streams idle.
        answers = await asyncio.gather(*(batcher.submit([f"q{i}"], 1) for i in range(8)))
        await batcher.stop()
        return answers

    answers = run(scenario())
    assert [hits[0][0].id for hits in answers] == [f"q{i}" for i in range(8)]
    assert sorted(len(texts) for _, texts in calls[:2]) == [4, 4]
    assert {name.split("_")[0] for name, _ in calls[:2]} == {"stream0", "stream1"}
    assert sorted(q for _, texts in calls for q in texts) == sorted(f"q{i}" for i in range(8))
