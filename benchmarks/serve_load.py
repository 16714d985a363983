"""Load test of `embedkit serve` on loopback: N concurrent clients, with and without micro-batching.

Each client sends Search-R1 `/retrieve` requests (one SciFact query, topk 3) back to back. Every level
is bounded by a request count and a time budget. Reports QPS, p50/p99 latency and errors per N, plus the
server's mean queries per encoder call (from /info).

    python benchmarks/serve_load.py                              # the SciFact MiniLM index, N = 1 8 32 64
    python benchmarks/serve_load.py --index indexes/mine --levels 1 8 --seconds 10

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

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INDEXES = [ROOT / "indexes" / "scifact-all-MiniLM-L6-v2-Flat", Path("/tmp/idx/scifact-minilm")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path, port: int, batching: bool, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "embedkit", "serve", str(index), "--port", str(port), "--log-level", "warning",
               "--device", "cpu", *extra]
    if not batching:
        command.append("--no-batching")
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


async def level(url: str, clients: int, queries: list[str], max_requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        nonlocal errors, sent
        i = worker
        while sent < max_requests and time.perf_counter() < stop_at:
            sent += 1
            payload = {"queries": [queries[i % len(queries)]], "topk": 3, "return_scores": True}
            i += clients
            start = time.perf_counter()
            try:
                response = await http.post(url + "/retrieve", json=payload)
                ok = response.status_code == 200 and len(response.json()["result"][0]) == 3
            except (httpx.HTTPError, ValueError, KeyError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        begin = time.perf_counter()
        await asyncio.gather(*(client(w, http) for w in range(clients)))
        elapsed = time.perf_counter() - begin
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {"clients": clients, "requests": len(latencies) + errors, "errors": errors, "seconds": round(elapsed, 2),
            "qps": round(len(latencies) / elapsed, 1), "p50_ms": round(pct(0.50), 1), "p99_ms": round(pct(0.99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path)
    parser.add_argument("--queries", type=Path, default=ROOT.parent / "shared" / "data" / "scifact" / "queries.jsonl")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=15.0, help="time budget per level (default: 15)")
    parser.add_argument("--max-requests", type=int, default=3000, help="request budget per level (default: 3000)")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="extra `embedkit serve` options")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serve_load")
    args = parser.parse_args()
    index = args.index or next(p for p in DEFAULT_INDEXES if (p / "manifest.json").exists())
    queries = [json.loads(line)["text"] for line in args.queries.read_text().splitlines() if line.strip()]

    results: dict[str, list[dict]] = {}
    for batching in (True, False):
        label = "micro-batching" if batching else "no batching"
        port = free_port()
        server = start_server(index, port, batching, args.server_args)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(level(url, 4, queries, 40, 10))  # warm-up
            rows = []
            for clients in args.levels:
                before = httpx.get(url + "/info", timeout=30).json()["batching"]["stats"]["dense"]
                row = asyncio.run(level(url, clients, queries, args.max_requests, args.seconds))
                after = httpx.get(url + "/info", timeout=30).json()["batching"]["stats"]["dense"]
                calls = after["calls"] - before["calls"]
                row["queries_per_call"] = round((after["queries"] - before["queries"]) / calls, 2) if calls else 0.0
                rows.append(row)
                print(f"{label:>15} N={clients:<3} {row}", flush=True)
            results[label] = rows
        finally:
            server.terminate()
            server.wait(timeout=60)
    write(args, index, results)


def write(args: argparse.Namespace, index: Path, results: dict[str, list[dict]]) -> None:
    meta = {"index": str(index), "server_args": args.server_args, "seconds_per_level": args.seconds, "max_requests_per_level": args.max_requests,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["# Retrieval server under load (loopback)", "",
             f"`python benchmarks/serve_load.py{' --server-args ' + ' '.join(args.server_args) if args.server_args else ''}`: "
             f"`embedkit serve {index.name}` (MiniLM, FAISS Flat, 5,183 SciFact "
             f"docs) on 127.0.0.1; N concurrent clients each send `/retrieve` (1 query, topk 3) back to back, "
             f"≤ {args.max_requests} requests or {args.seconds:.0f} s per level. Client and server share a "
             f"{os.cpu_count()}-core machine that other jobs were also using, so absolute numbers are low and noisy; "
             "the comparison between the two modes is what matters.", "",
             "| mode | N | requests | errors | QPS | p50 ms | p99 ms | queries per encoder call |",
             "|---|---|---|---|---|---|---|---|"]
    for label, rows in results.items():
        for row in rows:
            lines.append(f"| {label} | {row['clients']} | {row['requests']} | {row['errors']} | {row['qps']} | "
                         f"{row['p50_ms']} | {row['p99_ms']} | {row['queries_per_call']} |")
    lines += ["", f"Load average at the end: {meta['load_average_at_end']}.", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
