"""Load test of `embedkit serve` on loopback, with the encoder-only throughput measured in the same run.

Setting (issue 12): MiniLM (all-MiniLM-L6-v2), the 4,858 HotpotQA dev500 paragraphs in a FAISS Flat index,
the 500 HotpotQA questions as queries. One section per encoder backend (`--encoder-backends`, default: onnx
and torch), each with its own baseline:

- encoder only: `Index.encoder.encode_queries` on 256-query batches in a fresh process (no HTTP, no search),
  with that backend; and in-process search (`Index.search`: encode + FAISS + document store) on the same batches;
- the server with N = 1, 8, 32, 64 concurrent clients, each sending Search-R1 `/retrieve` requests with ONE
  query (topk 3, return_scores) back to back over a keep-alive connection;
- the server with one client sending 256-query requests back to back.

Per row: queries/s, p50 and p99 request latency, errors (non-200 or a wrong number of hits), the share of
the encoder-only throughput of the same backend, and the server's mean queries per search call. Targets, checked
per backend: at >= 8 clients >= 80 % of encoder-only; no collapse at 64 clients (p99 <= 3 x p50); one client
p50 <= 20 ms.

The load generator is a minimal HTTP/1.1 client on asyncio streams (about 50 us of CPU per request), so on a
2-core machine the client takes as little as possible from the server it measures. Run it on a quiet machine
(`uptime` is recorded before and after; nothing else running):

    .venv/bin/python benchmarks/serve_load.py                      # ~9 min (+ ~3 min to build the index once)
    .venv/bin/python benchmarks/serve_load.py --seconds 5 --levels 1 8 --encoder-backends onnx   # a quick look
    .venv/bin/python benchmarks/serve_load.py --server-args --torch-threads 1   # any `embedkit serve` options

Writes benchmarks/serve_load.md and benchmarks/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INDEX = ROOT / "indexes" / "hotpotqa500-minilm-flat"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BATCH = 256


def shared_data() -> Path:
    sys.path.insert(0, str(ROOT))
    from embedkit.paths import shared_data_dir

    folder = shared_data_dir()
    if folder is None:
        sys.exit("../shared/data is not available (set EMBEDKIT_SHARED_DATA)")
    return folder


def ensure_index(index: Path) -> None:
    if (index / "manifest.json").exists():
        return
    corpus = shared_data() / "hotpotqa_dev500" / "beir" / "corpus.jsonl"
    print(f"building {index} from {corpus} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "embedkit", "index", "build", "--corpus", str(corpus), "--model", MODEL,
                    "--index-factory", "Flat", "--device", "cpu", "--out", str(index), "-q"], check=True, cwd=ROOT)


def load_queries(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# --- encoder only (runs in its own process, like the server) -------------------------------------------


def encoder_only(index_path: Path, queries: list[str], seconds: float, threads: int | None, backend: str) -> dict:
    import torch

    from embedkit.index import Index

    if threads is not None:
        torch.set_num_threads(threads)
    index = Index.load(index_path, device="cpu", encoder_backend=backend)
    batches = [queries[i:i + BATCH] for i in range(0, len(queries), BATCH)]
    batches = [b for b in batches if len(b) == BATCH] or batches
    index.search(batches[0][:8], 3)  # load and warm up

    def rate(fn) -> float:
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds or done == 0:
            batch = batches[i % len(batches)]
            fn(batch)
            done += len(batch)
            i += 1
        return done / (time.perf_counter() - start)

    encode = rate(index.encoder.encode_queries)
    search = rate(lambda batch: index.search(batch, 3))
    return {"encode_qps": round(encode, 1), "search_qps": round(search, 1), "torch_threads": torch.get_num_threads(),
            "encoder_backend": index.encoder.config.backend}


# --- the server and a lean load generator ----------------------------------------------------------------


def start_server(index: Path, port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "embedkit", "serve", str(index), "--port", str(port), "--log-level", "warning",
               "--device", "cpu", *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "EMBEDKIT_API_KEY": ""}
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("server did not come up within 300 s")


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads Content-Length responses."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        data = await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load_level(port: int, clients: int, queries: list[str], per_request: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    answered = 0
    stop_at = time.perf_counter() + seconds

    async def client(worker: int) -> None:
        nonlocal errors, answered
        connection = Connection(port)
        i = worker * per_request
        while time.perf_counter() < stop_at:
            batch = [queries[(i + j) % len(queries)] for j in range(per_request)]
            i += clients * per_request
            body = json.dumps({"queries": batch, "topk": 3, "return_scores": True}).encode()
            start = time.perf_counter()
            try:
                status, data = await connection.post("/retrieve", body)
                result = json.loads(data)["result"] if status == 200 else None
                ok = result is not None and len(result) == per_request and all(len(hits) == 3 for hits in result)
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
                ok = False
                await connection.close()
            if ok:
                latencies.append(time.perf_counter() - start)
                answered += per_request
            else:
                errors += 1
        await connection.close()

    begin = time.perf_counter()
    await asyncio.gather(*(client(w) for w in range(clients)))
    elapsed = time.perf_counter() - begin
    return {"clients": clients, "queries_per_request": per_request, "requests": len(latencies) + errors,
            "errors": errors, "seconds": round(elapsed, 2), "qps": round(answered / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1), "p99_ms": round(percentile(latencies, 0.99) * 1000, 1)}


def batch_stats(port: int) -> dict:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/info", timeout=60).json()["batching"]["stats"]["dense"]


def run_server_rows(index: Path, queries: list[str], server_args: list[str],
                    args: argparse.Namespace) -> tuple[list[dict], dict]:
    port = free_port()
    server = start_server(index, port, server_args)
    rows = []
    try:
        asyncio.run(load_level(port, 4, queries, 1, 3))  # warm-up
        plan = [(clients, 1) for clients in args.levels] + [(1, BATCH)]
        for clients, per_request in plan:
            before = batch_stats(port)
            row = asyncio.run(load_level(port, clients, queries, per_request, args.seconds))
            after = batch_stats(port)
            calls = after["calls"] - before["calls"]
            row["queries_per_call"] = round((after["queries"] - before["queries"]) / calls, 1) if calls else 0.0
            rows.append(row)
            print(f"server {' '.join(server_args)} clients={clients:<3} queries/request={per_request:<4} {row}",
                  flush=True)
        import httpx

        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=60).json()
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows, info


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return str(os.getloadavg())


def parser_defaults() -> dict:
    return vars(build_parser().parse_args([]))


def main() -> None:
    args = build_parser().parse_args()
    _main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="built from HotpotQA dev500 when missing")
    parser.add_argument("--queries", type=Path, help="queries jsonl (default: HotpotQA dev500's 500 questions)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each row (default: 15)")
    parser.add_argument("--torch-threads", type=int, help="for the encoder-only rows (default: torch's, like the server)")
    parser.add_argument("--encoder-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--encoder-backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--encoder-backends", nargs="+", choices=["onnx", "torch"], default=["onnx", "torch"],
                        help="one section per backend: encoder-only baseline and server rows (default: onnx torch)")
    parser.add_argument("--compare", default="",
                        help="`embedkit serve` options of another server run of the first backend, for comparison "
                             "(e.g. '--search-streams 1'); default: none")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="extra `embedkit serve` options")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serve_load")
    return parser


def _main(args: argparse.Namespace) -> None:
    queries_path = args.queries or shared_data() / "hotpotqa_dev500" / "beir" / "queries.jsonl"
    queries = load_queries(queries_path)
    if args.encoder_only:
        print(json.dumps(encoder_only(args.index, queries, args.seconds, args.torch_threads, args.encoder_backend)))
        return

    ensure_index(args.index)
    load_before = uptime()
    print(f"before: {load_before}", flush=True)
    sections = []
    for backend in args.encoder_backends:
        command = [sys.executable, __file__, "--encoder-only", "--index", str(args.index), "--queries",
                   str(queries_path), "--seconds", str(args.seconds), "--encoder-backend", backend]
        command += ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}).stdout
        encoder = json.loads(output.splitlines()[-1])
        print(f"encoder only ({backend}): {encoder}", flush=True)
        server_args = [*args.server_args, "--encoder-backend", backend]
        rows, info = run_server_rows(args.index, queries, server_args, args)
        if encoder["encoder_backend"] != backend or info.get("encoder_backend") != backend:
            raise RuntimeError(f"asked for the {backend} backend, got {encoder['encoder_backend']} (encoder only) and "
                               f"{info.get('encoder_backend')} (server)")
        sections.append({"backend": backend, "encoder_only": encoder, "server": rows, "info": info,
                         "server_args": server_args})
    if args.compare.strip():
        first = sections[0]
        compare_args = [*first["server_args"], *args.compare.split()]
        rows, info = run_server_rows(args.index, queries, compare_args, args)
        sections.append({**first, "server": rows, "info": info, "server_args": compare_args,
                         "compare": args.compare.strip()})
    load_after = uptime()
    print(f"after: {load_after}", flush=True)
    write(args, queries_path, sections, load_before, load_after)


def checks_of(rows: list[dict]) -> dict[str, bool | None]:
    """The issue's targets on one section's server rows; None where a level was not measured."""
    single = [r for r in rows if r["queries_per_request"] == 1]

    def check(selected: list[dict], ok) -> bool | None:
        return all(ok(r) for r in selected) if selected else None

    return {
        ">= 8 clients: >= 80% of encoder-only": check([r for r in single if r["clients"] >= 8],
                                                      lambda r: r["share_of_encoder"] >= 0.8),
        "64 clients: p99 <= 3 x p50": check([r for r in single if r["clients"] == 64], lambda r: r["p99_over_p50"] <= 3),
        "1 client: p50 <= 20 ms": check([r for r in single if r["clients"] == 1], lambda r: r["p50_ms"] <= 20),
        "no errors": check(rows, lambda r: r["errors"] == 0),
    }


def write(args, queries_path: Path, sections: list[dict], before: str, after: str) -> None:
    for section in sections:
        base = section["encoder_only"]["encode_qps"]
        for row in section["server"]:
            row["share_of_encoder"] = round(row["qps"] / base, 3) if base else None
            row["p99_over_p50"] = round(row["p99_ms"] / row["p50_ms"], 2) if row["p50_ms"] else None
        section["checks"] = checks_of(section["server"])
    info = sections[0]["info"]
    meta = {"index": str(args.index), "queries": str(queries_path), "server_args": args.server_args,
            "seconds_per_row": args.seconds, "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "uptime_before": before, "uptime_after": after,
            "server_batching": {k: v for k, v in info.get("batching", {}).items() if k != "stats"},
            "server_backend": info.get("backend"), "search_streams": info.get("search_streams"),
            "threads_per_call": info.get("threads_per_call"),
            "documents": info.get("indexes", {}).get("dense", {}).get("documents")}
    stored = [{k: v for k, v in section.items() if k != "info"} for section in sections]
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "sections": stored}, indent=2) + "\n")
    command = ["python benchmarks/serve_load.py"]
    if args.encoder_backends != parser_defaults()["encoder_backends"]:
        command.append("--encoder-backends " + " ".join(args.encoder_backends))
    if args.compare.strip():
        command.append(f"--compare '{args.compare}'")
    if args.server_args:
        command.append("--server-args " + " ".join(args.server_args))
    lines = [
        "# Retrieval server under load (loopback)", "",
        f"`{' '.join(command)}` — "
        f"`embedkit serve {args.index.name}` ({meta['documents']} documents; default: all-MiniLM-L6-v2, FAISS Flat, "
        "HotpotQA dev500's 4,858 paragraphs) "
        f"on 127.0.0.1, queries = HotpotQA dev500's 500 questions, {args.seconds:.0f} s per row, "
        f"{os.cpu_count()} CPUs. Clients send Search-R1 `/retrieve` requests (topk 3, return_scores) back to "
        "back over keep-alive connections from a lean asyncio client in another process. Each encoder backend "
        "has its own encoder-only baseline, measured just before its server rows.", "",
        f"Load before: `{before}`  ", f"Load after: `{after}`", "",
        "| backend | row | clients | queries/request | queries/s | % of encoder-only | p50 ms | p99 ms | p99/p50 "
        "| errors | queries per search call |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for section in sections:
        backend, encoder = section["backend"], section["encoder_only"]
        base = encoder["encode_qps"]
        if "compare" not in section:
            lines += [
                f"| {backend} | encoder only (encode_queries, {BATCH}-query batches) | – | {BATCH} | "
                f"{encoder['encode_qps']} | 100% | – | – | – | – | – |",
                f"| {backend} | in-process search (encode + FAISS + docstore) | – | {BATCH} | {encoder['search_qps']} | "
                f"{encoder['search_qps'] / base:.0%} | – | – | – | – | – |",
            ]
        label = f"server {section['compare']}" if "compare" in section else "server"
        for row in section["server"]:
            lines.append(f"| {backend} | {label} | {row['clients']} | {row['queries_per_request']} | {row['qps']} | "
                         f"{row['share_of_encoder']:.0%} | {row['p50_ms']} | {row['p99_ms']} | "
                         f"{row['p99_over_p50']} | {row['errors']} | {row['queries_per_call']} |")
    threads = sections[0]["encoder_only"]["torch_threads"]
    lines += ["", f"Encoder-only rows ran in their own process with {threads} torch threads (torch's default "
                  "unless --torch-threads; the onnx backend uses as many ONNX Runtime threads), before each "
                  f"backend's server started. The server ran {meta['search_streams']} search stream(s); torch, "
                  f"ONNX Runtime and FAISS threads per call: {meta['threads_per_call']} (stream 0 serves "
                  "every call that runs alone).", "", "Targets (server rows against the same backend's encoder-only "
                  "row):", ""]
    for section in sections:
        name = section["backend"] + (f" {section['compare']}" if "compare" in section else "")
        lines += [f"- {name}: " + "; ".join(f"{check} {'not measured' if ok is None else 'met' if ok else 'NOT met'}"
                                            for check, ok in section["checks"].items())]
    lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
