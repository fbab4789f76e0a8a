"""Load test of the real server on 127.0.0.1: N concurrent clients for T seconds, with dynamic
batching on and off in one run (and, with ``--compile``, batching on with the model compiled);
throughput, p50 / p99 latency and errors. ``--soak`` runs one long phase and samples the
server's resident memory.

    python benchmarks/serve_load.py                         # 16 clients, 20 s per phase
    python benchmarks/serve_load.py --quick                 # 8 clients, 8 s per phase
    python benchmarks/serve_load.py --soak 300 --clients 32 # 5-minute soak, memory curve
    python benchmarks/serve_load.py --device cuda --clients 64 --max-batch 64  # on a GPU
    python benchmarks/serve_load.py --compile default       # + a phase compiled (CPU)
    python benchmarks/serve_load.py --device cuda --compile reduce-overhead  # CUDA graphs

Each client sends one-image requests (random class, its own seeds) back to back; each phase's
server runs `entpruner serve` in its own process. The servers start first, then take their load
in turn: ``--rounds`` slices of each phase's seconds, the order reversed every other round, so
a change in the machine's load hits every phase alike; the gains are the median round's
ratio, with the lowest and highest. Prints a table, writes
benchmarks/results/serve_load.json (or serve_soak.json). Goal: batching >= 3x throughput at
16 clients with 0 failed valid requests; memory flat over the soak. A compiled server is
ready once it has compiled every batch size, so its phase, like the others, times no compile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from entpruner_sdk.sampling import COMPILE_MODES
from entpruner_sdk.utils.device import processor_name
from entpruner_sdk.utils.files import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_batch: int, max_queue: int,
                 device: str, compile: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "entpruner_sdk", "serve", "--model", model, "--port",
               str(port), "--max-batch", str(max_batch), "--max-wait-ms", "10",
               "--max-queue", str(max_queue), "--device", device, "--quiet",
               *(["--compile", compile] if compile else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ready_within = 600 if compile else 120  # a compile for each batch size comes first
    deadline = time.time() + ready_within
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not become ready in {ready_within} s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, clients: int, seconds: float, steps: int | None, classes: int,
               memory: list | None = None, pid: int | None = None) -> dict:
    latencies, errors, images = [], [], 0
    stop = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal images
        rng = random.Random(index)
        async with httpx.AsyncClient(timeout=300) as http:
            while time.perf_counter() < stop:
                body = {"class_labels": [rng.randrange(classes)], "seed": rng.randrange(10**9)}
                if steps:
                    body["steps"] = steps
                start = time.perf_counter()
                try:
                    response = await http.post(url + "/v1/generate", json=body)
                except httpx.HTTPError as error:
                    errors.append(type(error).__name__)
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                    images += 1
                else:
                    errors.append(str(response.status_code))

    async def sample_memory() -> None:
        start = time.perf_counter()
        while time.perf_counter() < stop:
            memory.append((round(time.perf_counter() - start, 1), rss_mb(pid)))
            await asyncio.sleep(max(1.0, seconds / 30))

    started = time.perf_counter()
    tasks = [client(i) for i in range(clients)]
    if memory is not None:
        tasks.append(sample_memory())
    await asyncio.gather(*tasks)
    return {"seconds": time.perf_counter() - started, "images": images,
            "latencies": latencies, "errors": errors}


def summary(clients: int, slices: list[dict]) -> dict:
    """One phase's figures over its slices of load: throughput over their summed time,
    latency percentiles over all their requests."""
    seconds = sum(s["seconds"] for s in slices)
    images = sum(s["images"] for s in slices)
    latencies = sorted(t for s in slices for t in s["latencies"])
    errors = [e for s in slices for e in s["errors"]]
    return {
        "clients": clients, "seconds": seconds, "images": images,
        "throughput_images_per_s": images / seconds, "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "p50_s": statistics.median(latencies) if latencies else None,
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies else None,
    }


class Server:
    """One ``entpruner serve`` process, started and ready, and what it reports."""

    def __init__(self, model: str, max_batch: int, clients: int, device: str,
                 compile: str | None = None) -> None:
        self.max_batch, self.compile, self.port = max_batch, compile, free_port()
        started = time.perf_counter()
        self.process = start_server(model, self.port, max_batch,
                                    max_queue=max(64, 2 * clients), device=device,
                                    compile=compile)
        self.ready_s = time.perf_counter() - started
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            models = httpx.get(self.url + "/v1/models").json()["models"]
        except BaseException:
            self.stop()
            raise
        self.classes = models[0]["num_classes"]

    def load(self, clients: int, seconds: float, steps: int | None,
             memory: list | None = None) -> dict:
        return asyncio.run(load(self.url, clients, seconds, steps, self.classes, memory,
                                self.process.pid))

    def row(self, clients: int, slices: list[dict]) -> dict:
        """The phase's row: its load's figures, and the server's memory and mean batch."""
        return {"batching": self.max_batch > 1, "max_batch": self.max_batch,
                "compile": self.compile, "ready_s": round(self.ready_s, 1),
                **summary(clients, slices), "server_rss_mb": rss_mb(self.process.pid),
                "mean_batch_images": _mean_batch(httpx.get(self.url + "/metrics").text)}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def side_by_side(servers: list[Server], clients: int, seconds: float, steps: int | None,
                 rounds: int) -> tuple[list[dict], list[list[float]]]:
    """Each server's row, from ``rounds`` slices of ``seconds / rounds`` of load, the servers
    loaded in turn, the order reversed every other round: a change in the machine's load
    hits every phase alike. Also each round's throughput of each server."""
    slices: list[list[dict]] = [[] for _ in servers]
    for r in range(rounds):
        order = list(range(len(servers)))[::-1 if r % 2 else 1]
        for i in order:
            slices[i].append(servers[i].load(clients, seconds / rounds, steps))
    per_round = [[s["images"] / s["seconds"] for s in of_server] for of_server in slices]
    return ([server.row(clients, of_server) for server, of_server in zip(servers, slices,
                                                                           strict=True)],
            per_round)


def round_ratio(over: list[float], under: list[float]) -> dict:
    """The median of the rounds' throughput ratios, with the lowest and highest."""
    ratios = [a / b for a, b in zip(over, under, strict=True)]
    return {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)]}


def _mean_batch(metrics: str) -> float | None:
    values = {}
    for line in metrics.splitlines():
        for key in ("entpruner_batch_images_sum", "entpruner_batch_images_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    count = values.get("entpruner_batch_images_count")
    return values["entpruner_batch_images_sum"] / count if count else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dit-digits", help="model the server loads")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--max-batch", type=int, default=16, help="batch size when batching")
    parser.add_argument("--device", default="cpu",
                        help="where the server samples: cpu (the default) or cuda")
    parser.add_argument("--compile", choices=COMPILE_MODES,
                        help="add a phase with batching on and the model compiled in this "
                             "torch.compile mode")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each phase's seconds are split into this many slices, the phases "
                             "loaded in turn slice by slice; the gains are the median round's "
                             "(default 3)")
    parser.add_argument("--quick", action="store_true", help="8 clients, 8 s per phase")
    parser.add_argument("--soak", type=float, help="one batched phase of this many seconds")
    parser.add_argument("--out", help="JSON results (default: results/serve_load.json, "
                        "or serve_soak.json with --soak)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.quick:
        args.clients, args.seconds = 8, 8.0
    os.environ.setdefault("ENTPRUNER_QUIET", "1")
    if args.soak:
        memory: list = []
        server = Server(args.model, args.max_batch, args.clients, args.device)
        try:
            result = server.row(args.clients, [server.load(args.clients, args.soak, args.steps,
                                                           memory)])
        finally:
            server.stop()
        rss = [m for _, m in memory]
        third = max(1, len(rss) // 3)
        result["memory_mb"] = memory
        result["rss_growth_mb_last_two_thirds"] = rss[-1] - rss[third] if len(rss) > 1 else 0.0
        print(json.dumps({k: v for k, v in result.items() if k != "memory_mb"}, indent=2))
        print("memory (s, MB):", memory[:: max(1, len(memory) // 10)])
        out = args.out or str(RESULTS / "serve_soak.json")
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(f"written to {out}")
        return 0
    phases = [(1, None), (args.max_batch, None)]
    if args.compile:
        phases.append((args.max_batch, args.compile))
    servers: list[Server] = []
    try:  # every server ready first, then loaded in turn
        for batch, compile in phases:
            servers.append(Server(args.model, batch, args.clients, args.device, compile))
        rows, per_round = side_by_side(servers, args.clients, args.seconds, args.steps,
                                       args.rounds)
    finally:
        for server in servers:
            server.stop()
    batching = round_ratio(per_round[1], per_round[0])
    compiled = round_ratio(per_round[2], per_round[1]) if args.compile else None
    processor = processor_name(args.device)
    print_table(rows, batching, processor, compiled, args.rounds)
    out = args.out or str(RESULTS / "serve_load.json")
    atomic_write_text(out, json.dumps({
        "model": args.model, "steps": args.steps, "device": args.device,
        "processor": processor, "rounds": args.rounds,
        "batching_speedup": batching["median"], "batching_speedup_range": batching["range"],
        "compile_speedup": compiled and compiled["median"],
        "compile_speedup_range": compiled and compiled["range"], "rows": rows}, indent=2))
    print(f"written to {out}")
    return 0


def print_table(rows, batching: dict, processor: str, compiled: dict | None,
                rounds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    def gain(ratio: dict) -> str:
        low, high = ratio["range"]
        return f"{ratio['median']:.2f}x ({low:.2f}-{high:.2f})"

    gains = f"batching throughput gain {gain(batching)}" + (
        f", compiled vs eager {gain(compiled)}" if compiled else "")
    table = Table(title=f"serve load test on {processor}, the phases loaded in turn over "
                  f"{rounds} rounds (the median round's {gains})")
    for column in ("batching", "model", "clients", "images/s", "p50 ms", "p99 ms", "errors",
                   "mean batch", "server RSS MB", "ready s"):
        table.add_column(column)
    for r in rows:
        table.add_row(f"on (max {r['max_batch']})" if r["batching"] else "off",
                      f"compiled ({r['compile']})" if r["compile"] else "eager",
                      str(r["clients"]), f"{r['throughput_images_per_s']:.1f}",
                      f"{1e3 * r['p50_s']:.0f}" if r["p50_s"] else "-",
                      f"{1e3 * r['p99_s']:.0f}" if r["p99_s"] else "-", str(r["errors"]),
                      f"{r['mean_batch_images']:.1f}" if r["mean_batch_images"] else "-",
                      f"{r['server_rss_mb']:.0f}", f"{r['ready_s']:.0f}")
    Console(width=max(120, Console().width)).print(table)


if __name__ == "__main__":
    raise SystemExit(main())
