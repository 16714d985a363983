"""Micro-batching: gather the queries of concurrent requests into one search call.

Requests put their queries on an asyncio queue. One worker coroutine takes what waits (up to `max_batch_size`
queries, and at most its stream's share of the requests in play) and runs a single `search(texts, k)` on a
search stream: one single-threaded executor per stream, so up to that many calls run at once (CPU serving runs
several streams). A call goes to the idle stream with the lowest number, so a lone client is always served by
stream 0 (which `before_call` may give every core) and the other streams only run under load.
It never sleeps when it could be searching: while calls run, new requests pile up and form the next batch,
so batches grow with the load by themselves (continuous batching); an optional `max_wait_ms` waits for
company before a call.
A request larger than `max_batch_size` is cut into slices of `max_batch_size` queries (Search-R1 sends 2,560
queries at once; a careless client 100,000), so no single call holds more than that many queries' vectors and
hits. Such a request's slices wait in a lane of its own, and the lanes take turns with the one-slice requests:
a freed stream serves the waiting one-slice requests and the next big request's part alternately, and the big
requests round-robin among themselves. So a one-query request sent beside a 20,000-query one waits for the
calls already running, not for the big request. A big request keeps at most `WINDOW` slices queued or running
(memory), queuing the next when its oldest is answered, and `stream` hands the slices out in order as they are
done, so a big answer never has to be held whole.
With batching disabled each request (or slice) gets its own call, the baseline `benchmarks/serve_load.py` can
compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from embedkit.passage import Passage

#: `search(texts, k)`, or `search(texts, k, target)` for requests submitted with a `target` (see `stream`).
SearchFn = Callable[..., list[list[Passage]]]
# Runs on the stream's thread before each call: (stream number, calls sharing the cores: the calls running
# with this one, or every stream while the server is under load or more work waits).
BeforeCall = Callable[[int, int], None]
MIN_SPLIT = 16  # smallest part a request is split into to use several streams
# Calls that overlapped this recently mean the server is under load: a call that starts alone now will soon
# have company, so it is sized as if every stream ran (see `before_call`).
LOAD_MEMORY_S = 0.1
GATHER_POLL_S = 0.0002
# Gathering stops at this many queries: a CPU forward pass over 8 short queries already costs per query about
# what one over 256 does (MiniLM, 2 cores: 13-15 ms each alone on a core vs 20-27 ms for one query alone), and
# under heavy load the queue fills calls without help.
GATHER_QUERIES = 8
#: Slices of one request queued or running at once: two keep every stream busy on a lone big request (the next
#: slice waits while the current one runs) while its answer is held at most two slices at a time.
WINDOW = 2


@dataclass
class _Request:
    queries: list[str]
    k: int
    future: asyncio.Future
    part: bool = False  # one part of a split request: searched as a call of its own
    target: Any = None  # what to search (e.g. the index state the request started on); None: the default
    bulk: bool = False  # a slice (or part of one) of a request of several slices: waits in its request's lane


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
    """`await batcher.submit(queries, k)` → hits per query; calls `search` with batches on `executors`.

    Each executor is one search stream and should have one thread.
    """

    search: SearchFn
    executors: Sequence[Executor]
    max_batch_size: int = 256
    max_wait_ms: float = 0.0
    enabled: bool = True
    before_call: BeforeCall | None = None  # e.g. size the stream's threads by the calls running
    gather_ms: float = 0.0  # how long a freed stream waits for the clients it expects back (see _next_batch)
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        if not self.executors:
            raise ValueError("MicroBatcher needs at least one executor")
        self._running = 0  # calls dispatched and not finished
        self._pending = 0  # requests submitted and not answered
        self._in_calls = 0  # requests in the calls that run
        self._peak, self._peak_at = 0, float("-inf")  # most requests pending at once lately, and when
        self._overlapped_at = float("-inf")  # loop time when two calls last ran at once
        self._queue: asyncio.Queue[_Request] | None = None  # one-slice requests, in arrival order
        self._held: _Request | None = None  # arrived, but would have overfilled the previous batch
        self._lanes: deque[deque[_Request]] = deque()  # big requests with parts waiting, in turn order
        self._lanes_next = False  # whose turn when both wait: a big request's part (True) or the one-slice requests
        self._arrived = asyncio.Event()  # set when anything is queued
        self._worker: asyncio.Task | None = None

    @property
    def concurrency(self) -> int:
        """Search calls that can run at once: one per stream."""
        return len(self.executors)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="embedkit-microbatcher")

    async def warm_up(self, queries: list[str]) -> None:
        """Run one call on every stream (loads the model, starts the JVM, sizes each stream's threads)."""
        loop = asyncio.get_running_loop()
        for stream, executor in enumerate(self.executors):
            await loop.run_in_executor(executor, self._invoke, queries, 1, stream, 1, None)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Hits per query, all at once (see `stream` for a big request's answer slice by slice)."""
        async with contextlib.aclosing(self.stream(queries, k)) as parts:
            return [hits async for part in parts for hits in part]

    async def stream(self, queries: Sequence[str], k: int, *, size: int | None = None,
                     target: Any = None) -> AsyncGenerator[list[list[Passage]], None]:
        """Hits per query, in slices of `size` queries (default `max_batch_size`), in order, each once it is done.

        At most `WINDOW` slices of this request wait or run at once (see the module docstring). Closing the
        iterator early (the client went away) drops the slices not yet searched. With a `target`, every slice
        is searched as `search(texts, k, target)`, in calls shared only with requests of the same target: the
        service passes the index a request started on, so a reload never switches indexes inside a request.
        """
        if not queries:
            return
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        queries = list(queries)
        size = size or self.max_batch_size
        cut = [queries[start:start + size] for start in range(0, len(queries), size)]
        slices = iter(cut)
        window: deque[list[asyncio.Future]] = deque()
        lane: deque[_Request] | None = deque() if len(cut) > 1 else None

        def fill() -> None:
            while len(window) < WINDOW and (part := next(slices, None)) is not None:
                window.append(self._enqueue(part, k, target, lane))

        loop = asyncio.get_running_loop()
        self._pending += 1
        now = loop.time()
        if self._pending >= self._peak or now - self._peak_at > LOAD_MEMORY_S:
            self._peak, self._peak_at = self._pending, now
        try:
            fill()
            while window:
                futures = window[0]
                done = await futures[0] if len(futures) == 1 else await asyncio.gather(*futures)
                window.popleft()
                fill()  # the next slice queues now, behind the requests that arrived while this one ran
                yield done if len(futures) == 1 else [hits for part in done for hits in part]
        finally:
            self._pending -= 1
            for futures in window:
                for future in futures:
                    future.cancel()  # the worker skips cancelled requests
            if lane:
                self._lanes = deque(other for other in self._lanes if other is not lane)

    def _enqueue(self, queries: list[str], k: int, target: Any, lane: deque[_Request] | None) -> list[asyncio.Future]:
        """Queue one slice as one request, or as parts spread over the streams (256 queries on 2: two of 128).

        A slice of a request of several goes to its `lane`, which joins the turns when it gets work.
        """
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        step = len(queries)
        if self.enabled and self.concurrency > 1:
            step = max(MIN_SPLIT, -(-len(queries) // self.concurrency))
        futures = []
        for start in range(0, len(queries), step):
            future = loop.create_future()
            request = _Request(queries[start:start + step], k, future, part=step < len(queries), target=target,
                               bulk=lane is not None)
            if lane is None:
                self._queue.put_nowait(request)
            else:
                if not lane:
                    self._lanes.append(lane)  # a lane is in the turns exactly while it has work
                lane.append(request)
            futures.append(future)
        self._arrived.set()
        return futures

    async def _first(self) -> _Request:
        """The request the next call starts with: one-slice requests and big requests' parts take turns."""
        assert self._queue is not None
        while True:
            waiting = self._held is not None or not self._queue.empty()
            if self._lanes and (self._lanes_next or not waiting):
                self._lanes_next = False
                lane = self._lanes.popleft()
                request = lane.popleft()
                if lane:
                    self._lanes.append(lane)  # its next part waits for the other big requests' turns
                return request
            if waiting:
                self._lanes_next = True
                if self._held is not None:
                    request, self._held = self._held, None
                    return request
                return self._queue.get_nowait()
            self._arrived.clear()
            await self._arrived.wait()

    async def _next_batch(self) -> list[_Request]:
        assert self._queue is not None
        first = await self._first()
        batch, size = [first], len(first.queries)
        if not self.enabled or first.part or first.bulk:
            return batch
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.max_wait_ms / 1000
        # Closed-loop clients (an RL rollout, an agent, a load generator) send their next query right after
        # their answer: the requests pending lately that are neither queued nor in a running call are on their
        # way back. Waiting up to `gather_ms` for them turns a stream of one-query calls into one call per
        # group, which costs a CPU forward pass little more than one query. A lone client is never waited for.
        expected = self._peak - self._in_calls
        # A call takes only its stream's share of the requests in play (pending now or lately): two calls side
        # by side keep both cores busy while each one's clients are answered, where one call of everything
        # leaves the other stream idle and then alternates big and small calls (uneven latency at 64 clients).
        share = -(-max(self._peak, self._queue.qsize() + 1) // self.concurrency)  # the peak includes all pending
        gather_until = start + self.gather_ms / 1000
        while size < self.max_batch_size and len(batch) < share:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                now = loop.time()
                if len(batch) < expected and size < GATHER_QUERIES and now < gather_until:
                    await asyncio.sleep(GATHER_POLL_S)
                    continue
                remaining = deadline - now
                if remaining <= 0:
                    break
                # Sleep, then drain: cancelling a pending queue.get() on timeout can lose an item.
                await asyncio.sleep(remaining)
                continue
            if item.part or item.target is not first.target or size + len(item.queries) > self.max_batch_size:
                self._held = item
                break
            batch.append(item)
            size += len(item.queries)
        return batch

    async def _run(self) -> None:
        # The next batch forms from whatever waits when a stream frees up.
        idle = list(range(self.concurrency))  # a heap: the lowest-numbered idle stream goes first
        freed = asyncio.Event()
        running: set[asyncio.Task] = set()
        try:
            while True:
                while not idle:
                    freed.clear()
                    await freed.wait()
                batch = await self._next_batch()
                live = [item for item in batch if not item.future.done()]  # a client may have gone away
                if not live:
                    continue
                stream = heapq.heappop(idle)  # chosen now: a lower stream may have freed while the batch formed
                task = asyncio.create_task(self._call(live, stream, self._dispatch(live), idle, freed))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    def _invoke(self, texts: list[str], k: int, stream: int, sharing: int, target: Any) -> list[list[Passage]]:
        if self.before_call is not None:
            self.before_call(stream, sharing)
        return self.search(texts, k) if target is None else self.search(texts, k, target)

    def _dispatch(self, live: list[_Request]) -> int:
        """Count a call as running (before its task starts: the next batch may form first); return its sharing."""
        queries = sum(len(item.queries) for item in live)
        self.stats.requests += len(live)
        self.stats.queries += queries
        self.stats.calls += 1
        self.stats.largest_call = max(self.stats.largest_call, queries)
        self._running += 1
        self._in_calls += len(live)
        now = asyncio.get_running_loop().time()
        if self._running > 1:
            self._overlapped_at = now
        # Work left waiting (the other half of a split request, more clients) starts beside this call at once.
        waiting = self._held is not None or bool(self._lanes) or (self._queue is not None and not self._queue.empty())
        loaded = waiting or now - self._overlapped_at < LOAD_MEMORY_S
        return self.concurrency if loaded else self._running

    async def _call(self, live: list[_Request], stream: int, sharing: int, idle: list[int],
                    freed: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        texts = [query for item in live for query in item.queries]
        k = max(item.k for item in live)
        try:
            results = await loop.run_in_executor(self.executors[stream], self._invoke, texts, k, stream, sharing,
                                                 live[0].target)  # a call's requests share their target
        except Exception as error:  # handed to every waiting request; the worker keeps serving
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._running -= 1
            self._in_calls -= len(live)
            heapq.heappush(idle, stream)
            freed.set()
        start = 0
        for item in live:
            part = results[start:start + len(item.queries)]
            start += len(item.queries)
            if not item.future.done():
                item.future.set_result([hits[:item.k] for hits in part])
