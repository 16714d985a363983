"""What an index update costs as the index grows: whole `embedkit index add/remove/compact` commands and a
server's first answer after an update, on the pre-segments code ("before") and the working tree ("after").

    git worktree add --detach /tmp/bench_base a01bb91          # once: the code before segmented folders
    python benchmarks/index_updates.py --sizes 100k,400k,1.6M  # writes benchmarks/index_updates.md (+ .json)
    python benchmarks/index_updates.py --quick --out /tmp/u.md # a smoke run: tiny sizes, one repeat

The set-up of issue 24's table: N random unit vectors of MiniLM's size (384), a FAISS IndexFlatIP file, a corpus
of N short documents, and `embedkit index import --copy` with the bundled all-MiniLM-L6-v2 as the index's
encoder (so `index add` loads that model and encodes the new documents, as a user's add does). Every timing is
a whole command in a fresh interpreter (imports and model load included), run with PYTHONPATH naming the code
under test and the working folder outside both checkouts, so each variant runs its own `embedkit`.

Measured per size and variant: the imported folder's size; `index add` of 10 new documents and `index remove`
of 1 (median of --repeat runs, each with new ids); the peak disk the folder's parent held during each update
over what it held before (copies, temporary folders); `index compact`; then a running `embedkit serve` on the
folder (reload poll 0.2 s): an `index add` of one document and the time from that command's exit to the first
/retrieve answer that returns the new document. Then both variants' folders (which went through the same
updates) are searched with the same query vectors and their top-10 ids and scores compared, and a server's
reload is timed in-process on the working tree's folder (`RELOAD_SNIPPET`). `uptime` is recorded before and
after every size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DIM = 384
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BASE_REF = "a01bb91"
SIZES = "100k,400k,1.6M"
QUICK_SIZES = [200, 800]
SEED = 0
#: Top-k compared between the variants, and the score difference still counted as equal (float32 sums).
TOP_K = 10
SCORE_TOL = 1e-5

# Run inside each variant's interpreter: top-10 ids and scores of the given query vectors, as JSON.
SEARCH_SNIPPET = """
import json, sys
import numpy as np
from embedkit.index import Index
index = Index.load(sys.argv[1])
hits = index.search_vectors(np.load(sys.argv[2]), int(sys.argv[3]), with_text=False)
json.dump([[[hit.id, float(hit.score)] for hit in row] for row in hits], sys.stdout)
"""


# Run inside the working tree's interpreter (after everything else): how long a server's reload takes in-process.
# Opening the folder whole (what every reload did before segments), then after an add of 10 vectors (no model:
# add_vectors) reopening it with the served state handed over (`embedkit.index.reopen`), twice (a compacted
# one-segment folder's first add converts it, and its FAISS file is handed over; with --no-serve that is the first).
RELOAD_SNIPPET = """
import json, sys, time
import numpy as np
from embedkit.data.corpus import Document
from embedkit.index import Index
from embedkit.index.lifecycle import add_vectors
from embedkit.index.reopen import reopen_index
path, out = sys.argv[1], {}
started = time.perf_counter(); served = Index.load(path); out["open_whole_s"] = time.perf_counter() - started
rng = np.random.default_rng(7)
for step in ("first", "second"):
    vectors = rng.standard_normal((10, served.spec.dim)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    add_vectors(path, [Document(id=f"reload-{step}-{i}", title="", text="probe") for i in range(10)], vectors)
    started = time.perf_counter(); served, reuse = reopen_index(path, served)
    out[f"reopen_{step}_s"], out[f"reuse_{step}"] = time.perf_counter() - started, reuse.as_dict()
started = time.perf_counter(); Index.load(path); out["open_whole_after_s"] = time.perf_counter() - started
json.dump(out, sys.stdout)
"""


def parse_size(text: str) -> int:
    """`100k` -> 100000, `1.6M` -> 1600000, `5000` -> 5000."""
    text = text.strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return int(round(float(text[:-1] if scale > 1 else text) * scale))


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def folder_bytes(path: Path) -> int:
    """Bytes allocated on disk under `path` (hard links counted once), 0 if it is gone."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # removed while we walked
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


class DiskWatch:
    """Samples `folder_bytes(path)` on a thread while a command runs; `peak_extra` is the most it grew."""

    def __init__(self, path: Path, every_s: float = 0.02) -> None:
        self.path, self.every_s = path, every_s
        self.start_bytes = folder_bytes(path)
        self.peak = self.start_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, folder_bytes(self.path))
            self._stop.wait(self.every_s)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, folder_bytes(self.path))

    @property
    def peak_extra(self) -> int:
        return self.peak - self.start_bytes


@dataclass
class Variant:
    """One version of the code: its name and the folder that holds its `embedkit` package."""

    name: str
    code: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.code), "TOKENIZERS_PARALLELISM": "false",
                "EMBEDKIT_API_KEY": ""}

    def run(self, *args: str, cwd: Path) -> float:
        """Seconds one `embedkit` command took; its output is shown only when it fails."""
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "embedkit", *args], cwd=cwd, env=self.env(),
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"[{self.name}] embedkit {' '.join(args)} exited {done.returncode}:\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return seconds

    def package_file(self, cwd: Path) -> str:
        done = subprocess.run([sys.executable, "-c", "import embedkit; print(embedkit.__file__)"], cwd=cwd,
                              env=self.env(), capture_output=True, text=True, check=True)
        return done.stdout.strip()


@dataclass
class Result:
    """Everything measured for one size and one variant."""

    variant: str
    documents: int
    import_s: float = 0.0
    folder_bytes: int = 0
    add_s: list[float] = field(default_factory=list)
    add_disk_bytes: int = 0
    remove_s: list[float] = field(default_factory=list)
    remove_disk_bytes: int = 0
    folder_bytes_after_updates: int = 0
    files_after_updates: dict[str, int] = field(default_factory=dict)
    compact_s: float = 0.0
    compact_disk_bytes: int = 0
    serve_add_s: float | None = None
    first_answer_s: float | None = None
    failed_answers: int = 0
    uptime_before: str = ""


def make_data(folder: Path, n: int, dim: int) -> tuple[Path, Path]:
    """`vectors.faiss` (IndexFlatIP of n seeded random unit vectors) and `corpus.jsonl`; reused when present."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    index_file, corpus = folder / "vectors.faiss", folder / "corpus.jsonl"
    if index_file.exists() and corpus.exists():
        return index_file, corpus
    rng = np.random.default_rng(SEED)
    flat = faiss.IndexFlatIP(dim)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim)).astype(np.float32)
        flat.add(block / np.linalg.norm(block, axis=1, keepdims=True))
    tmp = folder / "vectors.faiss.tmp"
    faiss.write_index(flat, str(tmp))
    with open(folder / "corpus.jsonl.tmp", "w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({"_id": f"d{i}", "text": f"benchmark document {i}"}) + "\n")
    os.replace(tmp, index_file)
    os.replace(folder / "corpus.jsonl.tmp", corpus)
    return index_file, corpus


def write_new_documents(path: Path, round_: int, count: int) -> list[str]:
    """A corpus of `count` new documents with ids unique to `round_`; returns the ids."""
    ids = [f"new-{round_}-{j}" for j in range(count)]
    with open(path, "w", encoding="utf-8") as handle:
        for j, doc_id in enumerate(ids):
            text = f"update {round_} brings passage {j} about river deltas, lighthouses and winter wheat"
            handle.write(json.dumps({"_id": doc_id, "text": text}) + "\n")
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_answer_after_update(variant: Variant, index: Path, cwd: Path, result: Result) -> None:
    """Start `embedkit serve` on `index`, add one document, and time until /retrieve returns it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(cwd / f"serve-{variant.name}.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "embedkit", "serve", str(index), "--port", str(port),
                               "--device", "cpu", "--log-level", "warning", "--set", "reload.poll_seconds=0.2"],
                              cwd=cwd, env=variant.env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"[{variant.name}] embedkit serve exited {server.returncode}; see {log.name}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"[{variant.name}] embedkit serve did not come up in 600 s")
            time.sleep(0.2)
        corpus = cwd / "serve-new.jsonl"
        new_id = write_new_documents(corpus, 999, 1)[0]
        query = json.loads(corpus.read_text())["text"]
        result.serve_add_s = variant.run("index", "add", str(index), "--corpus", str(corpus), "-q", cwd=cwd)
        added = time.perf_counter()
        with httpx.Client(timeout=60) as client:
            while time.perf_counter() - added < 600:
                response = client.post(url + "/retrieve", json={"queries": [query], "topk": 1})
                if response.status_code != 200:
                    result.failed_answers += 1
                elif response.json()["result"][0][0]["id"] == new_id:
                    result.first_answer_s = time.perf_counter() - added
                    return
                time.sleep(0.02)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def measure(variant: Variant, n: int, data: tuple[Path, Path], work: Path, repeat: int, serve: bool,
            model: str) -> Result:
    faiss_file, corpus = data
    cwd = work / variant.name
    if cwd.exists():
        shutil.rmtree(cwd)
    cwd.mkdir(parents=True)
    parent = cwd / "folders"  # holds only the index and the writers' temporary siblings
    parent.mkdir()
    index = parent / "index"
    result = Result(variant.name, n, uptime_before=uptime())
    result.import_s = variant.run("index", "import", "--faiss", str(faiss_file), "--corpus", str(corpus),
                                  "--model", model, "--pooling", "mean", "--copy", "--out", str(index), "-q", cwd=cwd)
    result.folder_bytes = folder_bytes(index)
    for round_ in range(repeat):
        new = cwd / f"new-{round_}.jsonl"
        write_new_documents(new, round_, 10)
        with DiskWatch(parent) as watch:
            result.add_s.append(variant.run("index", "add", str(index), "--corpus", str(new), "-q", cwd=cwd))
        result.add_disk_bytes = max(result.add_disk_bytes, watch.peak_extra)
        with DiskWatch(parent) as watch:
            result.remove_s.append(variant.run("index", "remove", str(index), "--id", f"d{5 + round_}", cwd=cwd))
        result.remove_disk_bytes = max(result.remove_disk_bytes, watch.peak_extra)
    result.folder_bytes_after_updates = folder_bytes(index)
    result.files_after_updates = {str(p.relative_to(index)): p.stat().st_size
                                  for p in sorted(index.rglob("*")) if p.is_file()}
    with DiskWatch(parent) as watch:
        result.compact_s = variant.run("index", "compact", str(index), cwd=cwd)
    result.compact_disk_bytes = watch.peak_extra
    if serve:
        first_answer_after_update(variant, index, cwd, result)
    return result


def top_hits(variant: Variant, index: Path, queries: Path, cwd: Path) -> list[list[list]]:
    done = subprocess.run([sys.executable, "-c", SEARCH_SNIPPET, str(index), str(queries), str(TOP_K)], cwd=cwd,
                          env=variant.env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"[{variant.name}] search failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def compare_results(variants: list[Variant], n: int, data_dir: Path, work: Path) -> dict[str, object]:
    """Search both variants' updated folders with the same vectors: near existing, removed and random points."""
    import faiss

    if len(variants) < 2:
        return {}
    flat = faiss.read_index(str(data_dir / "vectors.faiss"))
    rng = np.random.default_rng(1)
    picked = sorted({5, 6, *rng.integers(0, n, 18).tolist()})  # d5, d6: removed in the first two rounds
    near = flat.reconstruct_batch(np.array(picked, dtype=np.int64)) + 0.05 * rng.standard_normal(
        (len(picked), flat.d)).astype(np.float32)
    queries = np.concatenate([near, rng.standard_normal((10, flat.d)).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    path = work / "queries.npy"
    np.save(path, queries.astype(np.float32))
    hits = [top_hits(v, work / v.name / "folders" / "index", path, work / v.name) for v in variants]
    same_ids = all([h[0] for h in a] == [h[0] for h in b] for a, b in zip(hits[0], hits[1], strict=True))
    diffs = [abs(x[1] - y[1]) for a, b in zip(hits[0], hits[1], strict=True) for x, y in zip(a, b, strict=False)]
    return {"queries": len(queries), "k": TOP_K, "same_ids": same_ids, "max_score_diff": max(diffs, default=0.0),
            "equal": same_ids and max(diffs, default=0.0) <= SCORE_TOL}


def reload_costs(variant: Variant, work: Path) -> dict[str, object]:
    """`RELOAD_SNIPPET` on the variant's folder (the working tree only: it uses `embedkit.index.reopen`)."""
    done = subprocess.run([sys.executable, "-c", RELOAD_SNIPPET, str(work / variant.name / "folders" / "index")],
                          cwd=work / variant.name, env=variant.env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"[{variant.name}] reload measurement failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def mb(value: float) -> str:
    if value < 1e6:
        return f"{value / 1e3:,.1f} kB"
    return f"{value / 1e6:,.1f} MB" if value < 1e9 else f"{value / 1e9:,.2f} GB"


def secs(values: list[float] | float | None) -> str:
    if values is None or values == []:
        return "-"
    value = statistics.median(values) if isinstance(values, list) else values
    return f"{value:.1f} s"


def both(results: dict[str, Result], show) -> str:
    return " / ".join(show(results[name]) if name in results else "-" for name in ("before", "after"))


def render(report: dict, command: str) -> str:
    lines = [
        "# Index updates as the index grows: before and after segmented folders (issue 24)",
        "",
        f"Command: `{command}`  ",
        f"The issue's full run (on a quiet machine): `python benchmarks/index_updates.py --sizes {SIZES}` (the "
        f"code before segments in /tmp/bench_base: `git worktree add --detach /tmp/bench_base {BASE_REF}`; about "
        "10 GB of scratch disk under /tmp/embedkit-bench at 1.6M).  ",
        f"Machine: {report['machine']}; started {report['started']}.  ",
        f"Code: before = {report['code'].get('before', '-')}, after = {report['code'].get('after', '-')}.  ",
        f"Load at start: `{report['uptime_start']}`  ",
        f"Load at end: `{report['uptime_end']}`",
        "",
        f"N random {report['dim']}-d unit vectors, IndexFlatIP, `embedkit index import --copy` with "
        f"{report['model']} as the encoder; "
        f"whole commands (fresh interpreter, model load included); add and remove: median of {report['repeat']} "
        "runs. *Peak disk* = the most the folder's parent grew during the command. *First answer* = from the exit "
        "of an `index add` of one document to the first /retrieve answer returning it (server polling every "
        "0.2 s). Each cell: before / after.",
        "",
        "| documents | folder | `index add` 10 docs | peak disk (add) | `index remove` 1 doc | peak disk (remove) "
        "| `index compact` | first answer after an add | equal results |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in report["sizes"]:
        results = {r["variant"]: Result(**r) for r in size["results"]}
        equal = size["comparison"]
        equal_cell = ("yes" if equal.get("equal") else f"NO (ids same: {equal.get('same_ids')}, max score diff "
                      f"{equal.get('max_score_diff'):.2g})") if equal else "-"
        lines.append(
            f"| {size['documents']:,} | {both(results, lambda r: mb(r.folder_bytes))} "
            f"| {both(results, lambda r: secs(r.add_s))} | {both(results, lambda r: mb(r.add_disk_bytes))} "
            f"| {both(results, lambda r: secs(r.remove_s))} | {both(results, lambda r: mb(r.remove_disk_bytes))} "
            f"| {both(results, lambda r: secs(r.compact_s))} | {both(results, lambda r: secs(r.first_answer_s))} "
            f"| {equal_cell} |")
    lines += ["", "Growth from the smallest to the largest size (target of issue 24: at most 1.5x for add and "
              "remove):", ""]
    first, last = report["sizes"][0], report["sizes"][-1]
    for name in ("before", "after"):
        a = {r["variant"]: Result(**r) for r in first["results"]}.get(name)
        b = {r["variant"]: Result(**r) for r in last["results"]}.get(name)
        if a is None or b is None or not a.add_s or not a.remove_s:
            continue
        lines.append(f"- {name}: `index add` {statistics.median(b.add_s) / statistics.median(a.add_s):.2f}x, "
                     f"`index remove` {statistics.median(b.remove_s) / statistics.median(a.remove_s):.2f}x "
                     f"({first['documents']:,} -> {last['documents']:,} documents)")
    lines += ["", "A server's reload in-process (working tree, its folder after all the above; files in the page "
              "cache): opening the folder whole, as every reload did before segments, and reopening it with the "
              "served state handed over after each of two adds of 10 vectors (how each segment was obtained in "
              "braces), then opening it whole again:", "",
              "| documents | open whole | reopen after an add | reopen after the next add | open whole again |",
              "|---|---|---|---|---|"]
    for s in report["sizes"]:
        r = s.get("reload") or {}
        if r:
            lines.append(f"| {s['documents']:,} | {r['open_whole_s']:.3f} s | {r['reopen_first_s']:.3f} s "
                         f"{r['reuse_first']} | {r['reopen_second_s']:.3f} s {r['reuse_second']} | "
                         f"{r['open_whole_after_s']:.3f} s |")
    lines += ["", "Load per size (uptime as each variant started, and at the end of the size; compare the cells of a "
              "row only where the load was similar):", ""]
    for s in report["sizes"]:
        starts = "; ".join(f"{r['variant']}: `{r.get('uptime_before') or '-'}`" for r in s["results"])
        lines.append(f"- {s['documents']:,}: {starts}; end: `{s['uptime_after']}`")
    lines += ["", "Files of each folder after the updates, before compact (largest size; bytes):", ""]
    for r in last["results"]:
        files = ", ".join(f"{name} {size:,}" for name, size in r["files_after_updates"].items())
        lines.append(f"- {r['variant']}: {files}")
    return "\n".join(lines) + "\n"


def ensure_base(base: Path, ref: str) -> Path:
    """The checkout of the code before segments: `base` if it holds embedkit, else a git worktree of `ref`."""
    if (base / "embedkit" / "__init__.py").exists():
        return base
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), ref], check=True)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=SIZES, help="documents per index, e.g. 100k,400k,1.6M")
    parser.add_argument("--out", type=Path, default=HERE / "index_updates.md", help="report (.md; a .json beside)")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK_SIZES}, one repeat (a smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of add and of remove per size (median)")
    parser.add_argument("--base", type=Path, default=Path("/tmp/bench_base"),
                        help="checkout of the code before segments (made with git worktree if missing)")
    parser.add_argument("--base-ref", default=BASE_REF, help="commit for --base when it must be made")
    parser.add_argument("--model", default=MODEL, help="the index's encoder (a smoke run may pass a tiny one)")
    parser.add_argument("--dim", type=int, default=DIM, help="vector size: the model's (384 for MiniLM)")
    parser.add_argument("--no-base", action="store_true", help="measure the working tree only")
    parser.add_argument("--no-serve", action="store_true", help="skip the server's first-answer measurement")
    parser.add_argument("--work", type=Path, default=Path("/tmp/embedkit-bench/index-updates"),
                        help="scratch folder (data cached per size)")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick and args.sizes == SIZES else [parse_size(s) for s in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    variants = [Variant("after", REPO)]
    if not args.no_base:
        variants.insert(0, Variant("before", ensure_base(args.base.resolve(), args.base_ref)))
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                    "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "uptime_start": uptime(),
                    "repeat": repeat, "model": args.model, "dim": args.dim, "code": {v.name: v.package_file(args.work) for v in variants}, "sizes": []}
    for n in sizes:
        data_dir = args.work / f"data-{n}"
        data = make_data(data_dir, n, args.dim)
        size: dict = {"documents": n, "uptime_before": uptime(), "results": []}
        for variant in variants:
            result = measure(variant, n, data, args.work / f"run-{n}", repeat, not args.no_serve, args.model)
            size["results"].append(asdict(result))
            print(f"{n:>9,} {variant.name:>6}: add {secs(result.add_s)}, remove {secs(result.remove_s)}, "
                  f"compact {secs(result.compact_s)}, first answer {secs(result.first_answer_s)}", flush=True)
        size["comparison"] = compare_results(variants, n, data_dir, args.work / f"run-{n}")
        size["reload"] = reload_costs(variants[-1], args.work / f"run-{n}")
        size["uptime_after"] = uptime()
        report["sizes"].append(size)
    report["uptime_end"] = uptime()
    command = "python benchmarks/index_updates.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report, command.strip()), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
