"""The retrieval service behind the HTTP routes: opened indexes, one micro-batcher per index, fusion, reloading.

Threads: the event loop only parses, validates and answers requests. Dense searches run on `search_streams`
worker threads, one per stream. On a CPU, several single-threaded streams beat one multi-threaded stream under
load: torch's OpenMP threads synchronise at every operator, and when the event loop or a client takes a core
from one of them, all of them wait (on a 2-core machine serving 64 clients that stall was the throughput
collapse), while independent streams only slow down in proportion. A lone call, though, would leave cores idle:
so stream 0, which serves every call that runs alone, sets its OpenMP threads (torch's and FAISS's; both are
per-thread settings; the onnx encoder backend runs as many ONNX Runtime threads as torch's setting says) to
CPUs / calls sharing them before each call (every stream counts while calls overlapped in the last 100 ms),
and the other streams use CPUs / streams. The streams encode in parallel (`Encoder.encode_queries` is
thread-safe: it tokenizes under the encoder's lock; with `encoder_backend: onnx` the forward pass also runs
without the GIL) and take turns for the FAISS search and the document lookup, which are fast.
BM25 searches run on their own single thread (the JVM and bm25s are used from one thread).

Reloading: a background task stats each served folder's `manifest.json` every `reload.poll_seconds`. When
`embedkit index add/remove/compact` swaps in a new folder, the manifest changes (new inode, size or mtime);
the new index is opened and warmed up on the worker thread while the old one keeps answering, then the
service switches to it in one assignment on the event loop. Every file of the new index is opened from one
state of the folder (`embedkit.index.consistent`): an update that lands while it opens makes it start over on
the newer state, never mix the two or call the folder damaged. A segmented dense folder (`embedkit.index.segments`)
is reopened with `embedkit.index.reopen`: the segments whose files did not change stay as they are (mapped or in
memory, shared with the state still answering), a segment with a new deletion file reads only that file, and
only new segments are read whole; `/health` and `/info` show the counts of the last reload. A request that
already came in finishes, every
slice of it, on the index it came in on (its slices share search calls only with requests on the same index);
every later request sees the new one. A folder that cannot be opened (mid-update, damaged) keeps the old index
serving and the error is logged and shown in `/health` and `/info`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import os
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.hybrid.fusion import FusionConfig, fuse_hits
from embedkit.index.base import Index
from embedkit.index.consistent import FolderChangingError, read_consistent
from embedkit.index.reopen import SegmentReuse, reopen_index
from embedkit.passage import Passage
from embedkit.server.batching import MicroBatcher
from embedkit.server.config import Mode, ServerConfig, index_slot

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DOCUMENT_SAMPLE = 512
#: JSON around one hit besides its document's id, title and text (keys, quotes, score, rank), rounded up.
HIT_OVERHEAD_BYTES = 96
#: Hits (documents with their text) one slice of a request may hold: 256 queries x 100. Deeper searches (a
#: /search filtered by include_ids looks 1,000 deep) get slices of fewer queries, so memory stays per hit.
SLICE_HITS = 25_600


@dataclass(frozen=True)
class ManifestStamp:
    """What a cheap `stat` says about a manifest file; any change means the folder was swapped or updated."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, folder: Path) -> ManifestStamp | None:
        try:
            info = os.stat(folder / MANIFEST_NAME)
        except OSError:
            return None  # mid-swap (folder renamed away) or removed: keep serving what we have
        return cls(info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass
class Served:
    """One opened index and what it was opened from."""

    index: Index
    stamp: ManifestStamp | None
    version: str
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    #: How the segments of a reopened segmented folder were obtained (kept, refreshed, read); None otherwise.
    reuse: SegmentReuse | None = None
    #: Mean size of one document in an answer (id, title, text; UTF-8), to size an answer before searching.
    document_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.document_bytes = mean_document_bytes(self.index)

    def describe(self) -> dict[str, Any]:
        history = getattr(self.index.manifest, "history", None) or []
        out = {"path": str(self.index.path), "documents": len(self.index), "version": self.version,
               "updated_at": getattr(history[-1], "at", None) if history else None, "loaded_at": self.loaded_at,
               "document_bytes": self.document_bytes}
        if self.reuse is not None:
            out["segments"] = self.reuse.as_dict()
        return out


def mean_document_bytes(index: Index, sample: int = DOCUMENT_SAMPLE) -> int:
    """The mean UTF-8 size of id + title + text over up to `sample` documents spread over the index's rows."""
    rows = getattr(index.manifest, "next_row", None) or len(index)
    picked = np.unique(np.random.default_rng(0).integers(0, max(rows, 1), size=min(sample, max(rows, 1))))
    documents = list(index.docstore.by_rows(picked.tolist()).values())
    if not documents:  # rows mostly removed: the first ones will do
        documents = [doc for _, doc in itertools.islice(index.docstore.iter_documents(), sample)]
    if not documents:
        return 0
    total = sum(len(doc.id.encode("utf-8", "replace")) + len(doc.title.encode("utf-8", "replace"))
                + len(doc.text.encode("utf-8", "replace")) for doc in documents)
    return -(-total // len(documents))


def manifest_version(folder: Path) -> str:
    """The first 16 hex digits of the manifest's sha-256: changes with every update of the folder."""
    try:
        return hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    except OSError:
        return "unknown"


class RetrievalService:
    """`indexes` maps "dense"/"bm25" to an opened index (tests pass their own; `from_config` opens folders).

    `opener(path, previous)` reopens a folder after a swap; by default `Index.load` with the config's options,
    reusing the previous index's encoder when the weights are unchanged.
    """

    def __init__(self, config: ServerConfig, indexes: Mapping[str, Index | Served],
                 opener: Callable[[Path, Index | None], Index] | None = None) -> None:
        if not indexes:
            raise EmbedkitError("the server needs at least one index")
        self.config = config
        self.served: dict[str, Served] = {}
        for kind, given in indexes.items():
            if isinstance(given, Served):  # opened with the stamp of the very state it holds (`open_served`)
                self.served[kind] = given
            else:
                path = Path(given.path)
                self.served[kind] = Served(given, ManifestStamp.of(path), manifest_version(path))
        self.modes: list[Mode] = [m for m in ("dense", "bm25") if m in indexes]
        if "dense" in indexes and "bm25" in indexes:
            self.modes.append("hybrid")
        # /retrieve's default is the kind of the main index (`index`; "dense" or "bm25"), whichever is beside it.
        self.default_mode: Mode = config.retrieve_mode or self._main_slot() or self.modes[0]
        if self.default_mode not in self.modes:
            raise EmbedkitError(f"retrieve mode '{self.default_mode}' needs an index this server was not given "
                                f"(available: {', '.join(self.modes)})")
        # The default opener also reports which segments it kept (`reopen_served`); a given one opens whole.
        self.opener: Callable[[Path, Index | None], Index | tuple[Index, SegmentReuse | None]] = \
            opener or (lambda path, previous: reopen_served(path, config, previous))
        self.reload_errors: dict[str, str] = {}
        self.reloads = 0
        #: Segments of all reloads so far: kept as they were, kept with a new deletion file, read from disk.
        self.reload_segments = {"kept": 0, "refreshed": 0, "read": 0}
        self.streams = self._dense_streams() if "dense" in indexes else 1
        self.torch_threads = config.torch_threads
        self.cpus = os.cpu_count() or 1
        # One single-threaded executor per search stream: a stream's OpenMP threads belong to its thread.
        self.executors = {
            kind: [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embedkit-{kind}-{stream}")
                   for stream in range(self.streams if kind == "dense" else 1)]
            for kind in indexes
        }
        self._search_locks = {kind: threading.Lock() for kind in indexes}
        self._stream_threads = threading.local()
        # On a GPU the threads only feed the device; on a CPU they are the compute.
        adaptive = "dense" in indexes and (self.torch_threads is not None or not self._gpu())
        self.batchers = {
            kind: MicroBatcher(self._search_fn(kind), self.executors[kind],
                               max_batch_size=config.batching.max_batch_size, max_wait_ms=config.batching.max_wait_ms,
                               gather_ms=config.batching.gather_ms, enabled=config.batching.enabled,
                               before_call=self._size_threads if kind == "dense" and adaptive else None)
            for kind in indexes
        }
        self._watcher: asyncio.Task | None = None
        self._switch_interval: float | None = None
        self._main_torch_threads: int | None = None

    def _size_threads(self, stream: int, sharing: int) -> None:
        """On a search thread, before a call: how many OpenMP threads (torch and FAISS) this call uses.

        Stream 0 takes CPUs / calls sharing them, so a lone call gets every core; the other streams run only
        under load and take CPUs / streams. Only stream 0 ever runs a multi-threaded team of its own, so idle
        teams never spin on the cores a call needs. `torch_threads` fixes the number instead.
        """
        if self.torch_threads is not None:
            threads = self.torch_threads
        elif stream == 0:
            threads = max(1, self.cpus // max(1, sharing))
        else:
            threads = max(1, self.cpus // self.streams)
        if getattr(self._stream_threads, "n", None) != threads:
            _set_stream_threads(threads)
            self._stream_threads.n = threads

    def _gpu(self) -> bool:
        # The onnx encoder backend encodes on the CPU whatever `device` says ("auto" means the CPU for it).
        encodes_on_gpu = self.config.encoder_backend == "torch" and _gpu_encoding(self.config.device)
        return self.config.backend == "faiss-gpu" or encodes_on_gpu

    def _dense_streams(self) -> int:
        if self.config.search_streams is not None:
            return self.config.search_streams
        if self._gpu():
            return 1  # a GPU batches by itself; one stream keeps its batches large
        return max(1, min(4, os.cpu_count() or 1))

    def _main_slot(self) -> Mode | None:
        """The slot serving the config's main index folder (`index`), if that folder is served here."""
        if self.config.index is None:
            return None
        for slot, served in self.served.items():
            try:
                if os.path.samefile(served.index.path, self.config.index):
                    return slot  # type: ignore[return-value]
            except OSError:
                continue
        return None

    @classmethod
    def from_config(cls, config: ServerConfig) -> RetrievalService:
        from embedkit.index.kinds import kind_of

        # Each folder's slot comes from its manifest, so the options can be checked before anything is loaded.
        folders: dict[str, Path] = {}
        for path in (config.index, config.bm25):
            if path is None:
                continue
            slot = index_slot(kind_of(path).name)
            if slot in folders:
                raise EmbedkitError(f"two {slot} indexes given ({folders[slot]} and {path}); give one of each")
            folders[slot] = Path(path)
        config.check_dense_settings({slot: str(path) for slot, path in folders.items()})
        return cls(config, {slot: open_served(path, functools.partial(open_index, path, config, None))
                            for slot, path in folders.items()})

    @property
    def indexes(self) -> dict[str, Index]:
        return {kind: served.index for kind, served in self.served.items()}

    def _search_fn(self, kind: str):
        lock = self._search_locks[kind]

        def search(texts: list[str], k: int, index: Index | None = None) -> list[list[Passage]]:
            if index is None:  # a warm-up: the index served now
                index = self.served[kind].index
            k = min(k, max(len(index), 1))
            # RL loops send each prompt's query from several rollouts (Search-R1: n_agent copies): encode
            # and search each distinct text once.
            positions: dict[str, int] = {}
            for text in texts:
                positions.setdefault(text, len(positions))
            distinct = list(positions)
            encoder = getattr(index, "encoder", None) if self.streams > 1 else None
            if encoder is not None and hasattr(index, "search_vectors") and getattr(encoder, "thread_safe", False):
                vectors = encoder.encode_queries(distinct)  # in parallel with the other streams
                with lock:
                    found = index.search_vectors(vectors, k)
            else:
                with lock:
                    found = index.search(distinct, k)
            if len(distinct) == len(texts):
                return found
            return [found[positions[text]] for text in texts]

        return search

    async def start(self) -> None:
        if self.config.switch_interval_ms is not None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(self.config.switch_interval_ms / 1000)
        if self.batchers.get("dense") is not None and self.batchers["dense"].before_call is not None:
            import torch

            # Worker threads set their own count; restore this thread's at stop in case a library shares it.
            self._main_torch_threads = torch.get_num_threads()
        for batcher in self.batchers.values():
            await batcher.start()
        # Load the model / start the JVM now, not on the first user request; warm up every stream.
        for batcher in self.batchers.values():
            await batcher.warm_up(["warm up"])
        if self.config.reload.enabled:
            self._watcher = asyncio.create_task(self._watch(), name="embedkit-index-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
            self._watcher = None
        for batcher in self.batchers.values():
            await batcher.stop()
        for executors in self.executors.values():
            for executor in executors:
                executor.shutdown(wait=False, cancel_futures=True)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        if self._main_torch_threads is not None:
            _set_stream_threads(self._main_torch_threads)
            self._main_torch_threads = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload.poll_seconds)
            for kind in list(self.served):
                try:
                    await self.reload_if_changed(kind)
                except asyncio.CancelledError:
                    raise
                except FolderChangingError as error:  # not a failure: the next poll tries again
                    log.info("the %s index is being updated continuously; will reload it later: %s", kind, error)
                except Exception as error:  # keep serving the old index; say why in /health
                    message = f"{type(error).__name__}: {error}"
                    if self.reload_errors.get(kind) != message:
                        log.error("reloading the %s index failed; still serving the previous state: %s", kind, message)
                    self.reload_errors[kind] = message

    async def reload_if_changed(self, kind: str) -> bool:
        """Reopen `kind`'s folder if its manifest changed since it was loaded; True when it switched."""
        current = self.served[kind]
        path = Path(current.index.path)
        stamp = ManifestStamp.of(path)
        if stamp is None or stamp == current.stamp:
            return False
        loop = asyncio.get_running_loop()
        # Opening and warming up run on stream 0's thread, between its search calls.
        served = await loop.run_in_executor(self.executors[kind][0], self._open_warm, kind, path, current.index)
        self.served[kind] = served  # one assignment: the next call searches the new state
        self.reload_errors.pop(kind, None)
        self.reloads += 1
        if served.reuse is not None:
            for key, count in served.reuse.as_dict().items():
                self.reload_segments[key] += count
        log.info("serving the updated %s index %s: %d documents (manifest %s)", kind, path, len(served.index),
                 served.version)
        return True

    def _open_warm(self, kind: str, path: Path, previous: Index) -> Served:
        def open_and_warm() -> Index | tuple[Index, SegmentReuse | None]:
            opened = self.opener(path, previous)
            index = opened[0] if isinstance(opened, tuple) else opened
            # Kept segments are shared with the index still answering: the search lock keeps FAISS's search
            # parameters (set on the index object) from changing under one of its searches.
            with self._search_locks[kind]:
                index.search(["warm up"], 1)  # also opens what a kind reads lazily (e.g. a BM25 searcher)
            return opened

        return open_served(path, open_and_warm)

    def mode(self, mode: Mode | None) -> Mode:
        """`mode`, or the server's default; refused if this server lacks the index it needs."""
        mode = mode or self.default_mode
        if mode not in self.modes:
            raise EmbedkitError(f"mode '{mode}' is not available on this server (available: {', '.join(self.modes)})")
        return mode

    def response_bytes(self, queries: int, k: int, mode: Mode | None = None) -> int:
        """About how many bytes the answer to `queries` queries of `k` hits takes (mean document size), unsearched."""
        kinds = ("dense", "bm25") if self.mode(mode) == "hybrid" else (self.mode(mode),)
        hits = min(k, max(len(self.served[kind].index) for kind in kinds))
        document = max(self.served[kind].document_bytes for kind in kinds)
        return queries * hits * (document + HIT_OVERHEAD_BYTES)

    async def search(self, queries: Sequence[str], k: int, mode: Mode | None = None,
                     fusion: FusionConfig | None = None) -> list[list[Passage]]:
        """Hits per query, all at once."""
        async with contextlib.aclosing(self.search_slices(queries, k, mode, fusion)) as slices:
            return [hits async for part in slices for hits in part]

    async def search_slices(self, queries: Sequence[str], k: int, mode: Mode | None = None,
                            fusion: FusionConfig | None = None) -> AsyncGenerator[list[list[Passage]], None]:
        """Hits per query in slices of up to `batching.max_batch_size` queries (fewer for deep searches, see
        `SLICE_HITS`), in order, each once it is done.

        A big request's slices take turns with other requests (`MicroBatcher.stream`), and the caller can send
        each slice on and drop it, so the answer is never held whole.
        """
        mode = self.mode(mode)
        depth = max(k, self.config.hybrid_depth) if mode == "hybrid" else k
        size = max(1, min(self.config.batching.max_batch_size, SLICE_HITS // depth))
        # Every slice searches the index served when the request came in: a reload switches between requests.
        index = {kind: served.index for kind, served in self.served.items()}
        if mode != "hybrid":
            async with contextlib.aclosing(self.batchers[mode].stream(queries, k, size=size,
                                                                      target=index[mode])) as slices:
                async for part in slices:
                    yield part
            return
        config = fusion or self.config.fusion
        async with contextlib.aclosing(self.batchers["dense"].stream(queries, depth, size=size,
                                                                     target=index["dense"])) as dense, \
                contextlib.aclosing(self.batchers["bm25"].stream(queries, depth, size=size,
                                                                 target=index["bm25"])) as bm25:
            while True:
                # Both indexes search each slice at once; the same slicing gives them the same queries.
                dense_part, bm25_part = await asyncio.gather(anext(dense, None), anext(bm25, None))
                if dense_part is None or bm25_part is None:
                    if dense_part is not bm25_part:
                        raise RuntimeError("the dense and BM25 searches returned different numbers of slices")
                    return
                yield [fuse_hits([d, b], config, k) for d, b in zip(dense_part, bm25_part, strict=True)]

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "modes": self.modes,
                               "documents": {kind: len(served.index) for kind, served in self.served.items()},
                               "indexes": {kind: served.describe() for kind, served in self.served.items()}}
        if self.reload_errors:
            out["reload_errors"] = dict(self.reload_errors)
        return out

    def info(self) -> dict[str, Any]:
        from embedkit import __version__

        return {
            "embedkit_version": __version__,
            "modes": self.modes,
            "retrieve_mode": self.default_mode,
            "indexes": {kind: {**served.describe(), "manifest": served.index.manifest.model_dump(mode="json")}
                        for kind, served in self.served.items()},
            "limits": self.config.limits.model_dump(),
            "default_topk": self.config.default_topk,
            "fusion": self.config.fusion.model_dump(mode="json"),
            "batching": {**self.config.batching.model_dump(),
                         "stats": {kind: b.stats.as_dict() for kind, b in self.batchers.items()}},
            "reload": {**self.config.reload.model_dump(), "reloads": self.reloads, "errors": dict(self.reload_errors),
                       "segments": dict(self.reload_segments)},
            "backend": self.config.backend,
            "encoder_backend": self.config.encoder_backend,
            "search_streams": self.streams,
            "torch_threads": self.torch_threads,  # the setting: a number, or null for the rule below
            "threads_per_call": f"{self.torch_threads} (torch_threads)" if self.torch_threads is not None
            else f"CPUs ({self.cpus}) / calls sharing them",
            "auth": self.config.resolved_api_key() is not None,
        }


def _set_stream_threads(threads: int) -> None:
    import faiss
    import torch

    # OpenMP settings are per thread: each search thread sets its own. FAISS ships its own OpenMP runtime,
    # whose threads would otherwise spin beside torch's on the cores the other streams use.
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def _gpu_encoding(device: str) -> bool:
    if device.startswith(("cuda", "mps")):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def open_served(path: Path, open_fn: Callable[[], Index | tuple[Index, SegmentReuse | None]]) -> Served:
    """`open_fn()`'s index (and how it reused segments, when it says) with the manifest stamp and version of the
    very folder state it opened.

    A stamp read before or after opening could belong to another state if an update landed in between: the
    watcher would then skip a state it never served, or `/health` name a version it does not serve.
    """
    def read() -> Served:
        stamp, version = ManifestStamp.of(path), manifest_version(path)
        opened = open_fn()
        if isinstance(opened, tuple):
            return Served(opened[0], stamp, version, reuse=opened[1])
        return Served(opened, stamp, version)

    return read_consistent(path, read)


def open_index(path: Path, config: ServerConfig, previous: Index | None) -> Index:
    """Open a folder with the server's options; a dense reopen reuses `previous`'s encoder if the weights match
    and its unchanged segments (`reopen_served`)."""
    return reopen_served(path, config, previous)[0]


def reopen_served(path: Path, config: ServerConfig, previous: Index | None) -> tuple[Index, SegmentReuse | None]:
    """`open_index`, also saying which segments came from `previous` (`embedkit.index.reopen`)."""
    from embedkit.index.kinds import kind_of

    options = config.open_options(index_slot(kind_of(path).name))
    encoder = getattr(previous, "encoder", None) if previous is not None else None
    if encoder is not None:
        from embedkit.errors import ModelMismatchError

        try:
            index, reuse = reopen_index(path, previous, encoder=encoder, **options)
        except ModelMismatchError:  # the folder now holds another model's vectors: load that model
            index, reuse = reopen_index(path, previous, **options)
    else:
        index, reuse = reopen_index(path, previous, **options)
    if config.backend == "faiss-gpu":
        from embedkit.index.dense import DenseIndex
        from embedkit.server.gpu import clone_to_gpus

        # FAISS indexes are cached properties (a DenseIndex's, or each segment's): put the GPU copies there.
        # Segments handed over from `previous` already hold theirs.
        if isinstance(index, DenseIndex) and index.manifest.segments:
            for segment in index.segments:
                if reuse is None or segment.record.id in reuse.fresh:
                    vars(segment)["faiss_index"] = clone_to_gpus(segment.faiss_index)
        elif isinstance(index, DenseIndex):
            vars(index)["faiss_index"] = clone_to_gpus(index.faiss_index)
    return index, reuse
