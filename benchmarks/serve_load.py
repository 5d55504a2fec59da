"""Load-test `bigmodel serve` with N concurrent tritonclient client processes over loopback (127.0.0.1).

    python benchmarks/serve_load.py BUNDLE --clients 8 --seconds 10

Starts `bigmodel serve BUNDLE` on free 127.0.0.1 ports, then runs, each for --seconds (and at most
--max-requests requests per client): the runtime called in-process (the baseline), one sequential client,
and --clients client processes, all sending batch-1 requests to the image role (decoder/generator).
Prints p50/p99 latency, throughput, the dynamic batcher's mean batch (executions and requests from Triton's
Prometheus metrics) and the ratios. Needs the serve extra (nvidia-pytriton, tritonclient[http,grpc]).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


def percentiles(lat_s: list[float]) -> tuple[float, float]:
    a = np.asarray(lat_s) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def client_loop(protocol: str, url: str, role: str, name: str, z: np.ndarray, start: float, seconds: float,
                max_requests: int, out) -> None:
    """One client: batch-1 requests from `start` (wall clock) for `seconds` or `max_requests`; latencies to `out`."""
    if protocol == "grpc":
        import tritonclient.grpc as lib

        client = lib.InferenceServerClient(url)
        kw = {"client_timeout": 10.0}
    else:
        import tritonclient.http as lib

        client = lib.InferenceServerClient(url, connection_timeout=10.0, network_timeout=10.0)
        kw = {}
    inp = lib.InferInput(name, list(z.shape), "FP32")
    inp.set_data_from_numpy(z)
    client.infer(role, [inp], **kw)  # warm: connection made before the clock starts
    while time.time() < start:
        time.sleep(0.001)
    lat, end = [], start + seconds
    clock = time.perf_counter
    while len(lat) < max_requests and time.time() < end:
        t = clock()
        client.infer(role, [inp], **kw)
        lat.append(clock() - t)
    client.close()
    out.put(lat)


def run_clients(n: int, args, url: str, role: str, name: str, z: np.ndarray) -> tuple[list[float], float]:
    """n client processes at once -> (every latency, wall seconds from the common start to the last finish)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = time.time() + 3.0 + 0.3 * n  # every process imported and connected before the clock starts
    procs = [ctx.Process(target=client_loop, args=(args.protocol, url, role, name, z, start, args.seconds,
                                                   args.max_requests, q)) for _ in range(n)]
    for p in procs:
        p.start()
    lats = [q.get(timeout=args.seconds + 120) for _ in procs]
    wall = time.time() - start
    for p in procs:
        p.join(30)
    return [x for lat in lats for x in lat], wall


def triton_counts(metrics_url: str, model: str) -> tuple[float, float]:
    """(successful requests, executions) of `model` from Triton's Prometheus metrics."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()

    def value(metric: str) -> float:
        m = re.search(rf'^{metric}{{model="{model}",version="1"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else float("nan")

    return value("nv_inference_request_success"), value("nv_inference_exec_count")


def in_process(model, role: str, name: str, z: np.ndarray, seconds: float, max_requests: int) -> list[float]:
    lat, end, clock = [], time.time() + seconds, time.perf_counter
    model.run(role, {name: z})
    while len(lat) < max_requests and time.time() < end:
        t = clock()
        model.run(role, {name: z})
        lat.append(clock() - t)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=200_000, help="per client and phase")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--max-batch", type=int, default=None, help="bigmodel serve --max-batch (its default if unset)")
    ap.add_argument("--queue-delay-us", type=int, default=None, help="bigmodel serve --queue-delay-us")
    ap.add_argument("--threads", type=int, default=None, help="runtime threads, in-process and in the server")
    ap.add_argument("--server-python", default=sys.executable, help="interpreter that runs bigmodel serve")
    args = ap.parse_args()
    if not (1 <= args.clients <= 64 and 0 < args.seconds <= 600):
        ap.error("--clients must be 1..64 and --seconds in (0, 600]")

    from bigmodel.runtime import load
    from bigmodel.serve import launched

    model = load(args.bundle, device="cpu", threads=args.threads)
    role = "decoder" if "decoder" in model.roles else "generator"
    spec = model.manifest.roles[role].inputs[0]
    z = np.random.default_rng(0).standard_normal((1, *spec.shape[1:])).astype(np.float32)
    serve_args = [*(["--max-batch", str(args.max_batch)] if args.max_batch else []),
                  *(["--queue-delay-us", str(args.queue_delay_us)] if args.queue_delay_us is not None else []),
                  *(["--threads", str(args.threads)] if args.threads else [])]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    rows = []
    base = in_process(model, role, spec.name, z, args.seconds, args.max_requests)
    rows.append(("runtime in-process", 1, base, args.seconds, None))
    with tempfile.TemporaryDirectory(prefix="bm-load-") as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        log = Path(tmp) / "serve.log"
        cmd_python = args.server_python
        with launched(args.bundle, *serve_args, log=log, env=env, python=cmd_python) as server:
            url = server.grpc if args.protocol == "grpc" else server.http
            for n in (1, args.clients):
                before = triton_counts(server.metrics, role)
                lat, wall = run_clients(n, args, url, role, spec.name, z)
                after = triton_counts(server.metrics, role)
                reqs, execs = after[0] - before[0], after[1] - before[1]
                rows.append((f"serve, {args.protocol}", n, lat, wall, reqs / execs if execs else float("nan")))
    print(f"load average at end:   {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n{args.bundle} {role}, batch-1 requests, {args.seconds:g} s per phase, backend {model.backend_name}\n")
    head = f"{'phase':<20} {'clients':>7} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} " \
           f"{'mean batch':>10} {'x in-process':>12} {'x 1 client':>10}"
    print(head)
    print("-" * len(head))
    rate = {}
    for name, n, lat, wall, batch in rows:
        rate[(name, n)] = len(lat) / wall
        p50, p99 = percentiles(lat)
        one = rate.get((name, 1))
        print(f"{name:<20} {n:>7} {len(lat):>9} {rate[(name, n)]:>9.0f} {p50:>8.2f} {p99:>8.2f} "
              f"{'' if batch is None else f'{batch:.2f}':>10} {rate[(name, n)] / rate[rows[0][0], 1]:>12.2f} "
              f"{'' if name == rows[0][0] else f'{rate[(name, n)] / one:.2f}':>10}")


if __name__ == "__main__":
    main()
