"""Micro-batching: gather the queries of concurrent requests into one search call.

Requests put their queries on an asyncio queue. One worker coroutine takes everything waiting (up to
`max_batch_size` queries) and runs a single `search(texts, k)` on a worker thread; with `concurrency` > 1
up to that many calls run at once on as many threads (CPU serving runs several single-threaded streams).
It never sleeps when it could be searching: while calls run, new requests pile up and form the next batch,
so batches grow with the load by themselves (continuous batching); an optional `max_wait_ms` waits for
company before a call. A request larger than `max_batch_size` is split into several calls (Search-R1 sends
2,560 queries at once), so no single call holds more than `max_batch_size` queries' vectors and hits.
With batching disabled each request gets its own call, the baseline `benchmarks/serve_load.py` can compare.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from embedkit.passage import Passage

SearchFn = Callable[[list[str], int], list[list[Passage]]]
MIN_SPLIT = 16  # smallest part a request is split into to use several streams


@dataclass
class _Request:
    queries: list[str]
    k: int
    future: asyncio.Future
    part: bool = False  # one part of a split request: searched as a call of its own


@dataclass
class BatchStats:
    requests: int = 0
    queries: int = 0
    calls: int = 0
    largest_call: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "queries": self.queries, "calls": self.calls,
                "largest_call": self.largest_call,
                "mean_queries_per_call": round(self.queries / self.calls, 2) if self.calls else 0.0}


@dataclass
class MicroBatcher:
    """`await batcher.submit(queries, k)` → hits per query; calls `search` on `executor` with batches."""

    search: SearchFn
    executor: Executor
    max_batch_size: int = 256
    max_wait_ms: float = 0.0
    enabled: bool = True
    concurrency: int = 1  # search calls in flight at once (the executor needs as many threads)
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[_Request] | None = None
        self._held: _Request | None = None  # arrived, but would have overfilled the previous batch
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="embedkit-microbatcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        queries = list(queries)
        step = self.max_batch_size if self.enabled else len(queries)
        if self.enabled and self.concurrency > 1:
            # Spread a large request over the streams (256 queries on 2 streams: two calls of 128 at once).
            step = min(step, max(MIN_SPLIT, -(-len(queries) // self.concurrency)))
        futures = []
        for start in range(0, len(queries), step):
            future = loop.create_future()
            self._queue.put_nowait(_Request(queries[start:start + step], k, future, part=step < len(queries)))
            futures.append(future)
        if len(futures) == 1:
            return await futures[0]
        parts = await asyncio.gather(*futures)
        return [hits for part in parts for hits in part]

    async def _next_batch(self) -> list[_Request]:
        assert self._queue is not None
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        batch, size = [first], len(first.queries)
        if not self.enabled or first.part:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_ms / 1000
        while size < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or self.max_wait_ms <= 0:
                    break
                # Sleep, then drain: cancelling a pending queue.get() on timeout can lose an item.
                await asyncio.sleep(remaining)
                continue
            if item.part or size + len(item.queries) > self.max_batch_size:
                self._held = item
                break
            batch.append(item)
            size += len(item.queries)
        return batch

    async def _run(self) -> None:
        # Up to `concurrency` calls run at once (one per search stream); the next batch forms from whatever
        # waits when a stream frees up.
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task] = set()
        try:
            while True:
                await slots.acquire()
                batch = await self._next_batch()
                live = [item for item in batch if not item.future.done()]  # a client may have gone away
                if not live:
                    slots.release()
                    continue
                task = asyncio.create_task(self._call(live, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    async def _call(self, live: list[_Request], slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        texts = [query for item in live for query in item.queries]
        k = max(item.k for item in live)
        self.stats.requests += len(live)
        self.stats.queries += len(texts)
        self.stats.calls += 1
        self.stats.largest_call = max(self.stats.largest_call, len(texts))
        try:
            results = await loop.run_in_executor(self.executor, self.search, texts, k)
        except Exception as error:  # handed to every waiting request; the worker keeps serving
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            slots.release()
        start = 0
        for item in live:
            part = results[start:start + len(item.queries)]
            start += len(item.queries)
            if not item.future.done():
                item.future.set_result([hits[:item.k] for hits in part])
