"""The harness: load every backend (cold phases timed), then time each (role, batch) on all of them in
alternating rounds (`bigmodel.bench.timing`), so every backend of a cell sees the same machine state."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel.bench import contention
from bigmodel.bench.adapters import (
    ALL_BACKENDS,
    COMPILED_BACKENDS,
    DEFAULT_BACKENDS,
    RUNTIME_BACKENDS,
    TORCH_BACKENDS,
    CompiledTorchAdapter,
    RuntimeAdapter,
    TorchAdapter,
    gpu_presence,
    has_gpu,
    inductor_cache,
    role_inputs,
    unavailable,
)
from bigmodel.bench.stats import NOISY_CV, add_speedups, summarize
from bigmodel.bench.timing import alternate, medians
from bigmodel.errors import BackendUnavailable, BigmodelError, InputError
from bigmodel.limits import check_batch_sizes, check_count, check_seconds, check_seed, check_threads
from bigmodel.manifest import Manifest, read_manifest
from bigmodel.progress import Progress, ProgressFn
from bigmodel.threads import torch_threads


@dataclass
class BenchSettings:
    """What `bigmodel bench` was asked; None picks the default (all roles, backends for the device)."""

    device: str = "cpu"  # cpu, cuda or cuda:N
    backends: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 16, 256, 1024)
    warmup: int = 10
    iters: int | None = None  # exact number of timed runs per cell; else --duration
    duration: float | None = None  # seconds of timed runs per cell (default 1.0 when iters is None)
    min_iters: int = 5  # with a duration: at least this many timed runs
    rounds: int = 10  # the timed runs of a cell, every backend's, alternate in this many rounds
    threads: int | None = None  # CPU threads for torch and onnxruntime alike (default: physical cores)
    copies: bool = True  # CUDA: include host->device input and device->host output copies in each run
    checkpoint: Path | None = None  # torch baseline (default: BUNDLE/../checkpoint.pt)
    seed: int = 0
    tf32: bool = False  # CUDA: let fp32 MatMul/Conv use TF32 (torch, onnxruntime, TensorRT alike)
    strict: bool = False  # onnxruntime GPU backends: no node may fall back to the CPU provider
    device_id: int = 0  # set from device="cuda:N"
    roofline: bool = True  # measure the machine's GEMM and memcpy ceilings and report % of them
    precision: str | None = None  # which verified form of the bundle the runtime backends run (default: its own)


MAX_RUNS = 10**7  # --iters, --warmup, --rounds: more timed runs than a day holds at 10 us each


def _validate(settings: BenchSettings, manifest: Manifest) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if settings.device not in DEFAULT_BACKENDS:
        raise InputError(f"--device must be cpu, cuda or cuda:N; got {settings.device!r}")
    backends = tuple(settings.backends or DEFAULT_BACKENDS[settings.device])
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown or not backends:
        raise InputError(f"--backends must name some of {', '.join(ALL_BACKENDS)}; got {', '.join(unknown) or '-'}")
    roles = tuple(settings.roles or manifest.roles)
    missing = [r for r in roles if r not in manifest.roles]
    if missing or not roles:
        raise InputError(f"a {manifest.family} bundle has roles {', '.join(manifest.roles)}; "
                         f"got {', '.join(missing) or '-'}")
    check_batch_sizes(settings.batch_sizes, manifest, roles)
    check_count(settings.warmup, "--warmup", MAX_RUNS, least=0)
    if settings.iters is not None:
        check_count(settings.iters, "--iters", MAX_RUNS)
    if settings.duration is not None:
        check_seconds(settings.duration, "--duration")
    if settings.iters is not None and settings.duration is not None:
        raise InputError("give --iters or --duration, not both")
    check_count(settings.rounds, "--rounds", MAX_RUNS)
    check_threads(settings.threads)
    check_seed(settings.seed)
    return tuple(dict.fromkeys(backends)), tuple(dict.fromkeys(roles))


def run_bench(bundle: str | os.PathLike, settings: BenchSettings | None = None,
              progress: ProgressFn | None = None) -> dict[str, Any]:
    """Benchmark every (backend, role, batch); returns {"machine", "settings", "results", "skipped"}.

    Backends are loaded first (cold load timed), then in each (role, batch) cell every backend makes
    its runner and runs once (both timed: the cold phases) and warms up, and then the backends take
    turns in `rounds` alternating rounds of timed runs (`--duration` or `--iters` split over the
    rounds), so a busy spell on the machine hits all of them alike. A backend that cannot run here,
    or fails to load or run, is listed in "skipped" with the reason. progress: Progress("bench", what runs
    next, done, total) with `done` of `total` cells measured; done == total at the end.
    """
    from bigmodel.runtime.backends import parse_device

    settings = settings or BenchSettings()
    try:
        kind, gpu = parse_device(settings.device)
    except InputError as e:
        raise InputError(f"--device must be cpu, cuda or cuda:N; got {settings.device!r}") from e
    settings = BenchSettings(**{**settings.__dict__, "device": kind, "device_id": gpu})
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if settings.precision is not None:  # the form's graphs, quality and int8 share; torch stays the fp32 reference
        manifest = manifest.form(settings.precision)
    backends, roles = _validate(settings, manifest)
    if settings.device == "cuda":
        found = gpu_presence(gpu)
        if not has_gpu(found):
            looked = "; ".join(f"{k}: {v}" for k, v in found.items())
            raise BackendUnavailable(f"--device cuda asked for, but no GPU was found. Looked for {looked}")
    from bigmodel.runtime import backend_status
    from bigmodel.runtime.backends.ort import physical_cores

    threads = settings.threads or physical_cores()
    settings = BenchSettings(**{**settings.__dict__, "threads": threads})
    duration = settings.duration if settings.duration is not None or settings.iters is not None else 1.0
    status = backend_status(device_id=gpu) if any(b in RUNTIME_BACKENDS for b in backends) else {}
    say = progress or (lambda _p: None)

    skipped: list[dict[str, Any]] = []
    adapters: dict[str, Any] = {}
    single: dict[str, Any] = {}  # one-thread twins of the runtime backends, opened for a contention control
    cpus = contention.cpus_available()
    cold_load: dict[str, float] = {}
    used: dict[str, dict[str, Any]] = {}
    total = len(backends) * len(roles) * len(settings.batch_sizes)
    done = 0
    reasons = {name: unavailable(name, settings.device, status) for name in backends}
    inductor = any(reasons[b] is None for b in backends if b in COMPILED_BACKENDS)
    with torch_threads(threads if any(b in TORCH_BACKENDS for b in backends) else None), inductor_cache(inductor):
        for name in backends:
            reason = reasons[name]
            if reason is not None:
                skipped.append({"backend": name, "reason": reason})
                total -= len(roles) * len(settings.batch_sizes)
                continue
            say(Progress("bench", f"{name}: loading", done, total))
            cls = (CompiledTorchAdapter if name in COMPILED_BACKENDS else TorchAdapter if name in TORCH_BACKENDS
                   else RuntimeAdapter)
            adapter = cls(name, bundle, manifest, settings)
            try:
                adapter.preflight()
                t0 = time.perf_counter_ns()
                adapter.open()
                cold_load[name] = (time.perf_counter_ns() - t0) / 1e9
                used[name] = adapter.settings()
            except Exception as e:  # onnxruntime/TensorRT raise their own types: report, go on
                skipped.append({"backend": name, "reason": _one_line(e)})
                total -= len(roles) * len(settings.batch_sizes)
                continue
            adapters[name] = adapter

        results: list[dict[str, Any]] = []
        ceilings = None
        if settings.roofline and adapters:
            from bigmodel.bench.roofline import (
                BANDWIDTH_S,
                CELL_CEILING_S,
                add_roofline,
                measure_bandwidth,
                measure_cell,
                start_ceilings,
            )

            ceilings = start_ceilings(bundle, manifest, roles, threads, settings.device, settings.device_id,
                                      settings.tf32)
        timed_s = 0.0  # the longest any backend was timed in one cell
        try:
            for role in roles:
                for batch in settings.batch_sizes:
                    feeds = role_inputs(manifest, role, batch, settings.seed)
                    runners: dict[str, Any] = {}
                    cold: dict[str, tuple[float, float]] = {}
                    for name, adapter in adapters.items():
                        say(Progress("bench", f"{name} {role} batch {batch}", done, total))
                        try:
                            prepare, first, runners[name] = start(adapter, role, feeds)
                            cold[name] = (prepare, first)
                        except Exception as e:  # a backend failing one cell (memory, profile) does not stop the rest
                            skipped.append({"backend": name, "role": role, "batch": batch, "reason": _one_line(e)})
                            runners.pop(name, None)
                            done += 1
                    failed: dict[str, BaseException] = {}
                    per_round: dict[str, list[float | None]] = {}
                    record: dict[str, Any] | None = None
                    if runners:
                        say(Progress("bench", f"{role} batch {batch}: {', '.join(runners)} in {settings.rounds} "
                                              "alternating rounds", done, total))
                        others = [contention.sample_others()]
                        times = alternate(runners, settings.rounds,
                                          None if settings.iters is not None else duration / settings.rounds,
                                          runs=settings.iters, warmup=settings.warmup, min_runs=settings.min_iters,
                                          failed=failed, per_round=per_round)
                        others.append(contention.sample_others())
                        record = check_contention(settings, bundle, manifest, adapters, single, role, feeds,
                                                  times, failed, per_round, others, cpus, duration)
                    for name in runners:
                        done += 1
                        if name in failed:
                            skipped.append({"backend": name, "role": role, "batch": batch,
                                            "reason": _one_line(failed[name])})
                            continue
                        warm = summarize(times[name])
                        adapter = adapters[name]
                        results.append({
                            "backend": name, "role": role, "batch": batch,
                            # what it computes in: the torch side runs the float32 reference, the rest the bundle
                            "precision": "fp32" if name in TORCH_BACKENDS else manifest.precision,
                            "cold": {"load_s": cold_load[name], "prepare_s": cold[name][0],
                                     "first_run_s": cold[name][1], "build_s": build_seconds(adapter, role, batch)},
                            "warm": warm,
                            "round_p50": per_round.get(name, []),
                            "throughput": batch / warm["p50"] if warm["p50"] > 0 else None,
                            "speedup_vs_torch": None,
                            "speedup_paired_vs_torch": None,
                            "copies": bool(adapter.copies) if adapter.device == "cuda" else None,
                            "noisy": warm["cv"] > NOISY_CV,
                            "contention": record,
                        })
                    if ceilings is not None:  # the ceiling of this cell, right after it: the same machine state
                        # timed no longer than the cell's slowest backend was (a quick --iters bench stays quick)
                        cell_s = max((sum(times[n]) for n in runners if n not in failed), default=0.0)
                        timed_s = max(timed_s, cell_s)
                        say(Progress("bench", f"GEMM ceiling {role} batch {batch}", done, total))
                        measure_cell(ceilings, role, batch, min(CELL_CEILING_S, cell_s))
        finally:
            for adapter in (*adapters.values(), *single.values()):
                adapter.close()
    add_speedups(results)
    if ceilings is not None and results:
        say(Progress("bench", "measuring memory bandwidth", done, total))
        measure_bandwidth(ceilings, min(BANDWIDTH_S, timed_s))
        add_roofline(results, ceilings)
    say(Progress("bench", "done", total, total))
    return {"machine": machine_info(settings.device, gpu), "settings": _settings_record(bundle, manifest, settings,
                                                                                         backends, roles, duration),
            "backend_settings": used, "results": results, "skipped": skipped, "roofline": ceilings,
            "int8_flops_share": int8_flops_share(manifest, roles)}


def int8_flops_share(manifest: Manifest, roles) -> dict[str, dict[str, float]]:
    """role -> {backend: share of its GEMM FLOPs run as integer kernels} for an int8 bundle, as export read it
    from onnxruntime's optimized and OpenVINO's executed graphs; {} for other precisions."""
    if manifest.precision != "int8":
        return {}
    quality = manifest.extra.get("quality") or {}
    return {r: dict(quality[r]["int8_flops_share"]) for r in roles
            if isinstance(quality.get(r), dict) and isinstance(quality[r].get("int8_flops_share"), dict)}


def check_contention(settings: BenchSettings, bundle: Path, manifest: Manifest, adapters: dict[str, Any],
                     single: dict[str, Any], role: str, feeds: dict[str, np.ndarray], times: dict[str, list[float]],
                     failed: dict[str, BaseException], per_round: dict[str, list[float | None]],
                     others: list[int | None], cpus: int, duration: float | None) -> dict[str, Any]:
    """One cell's contention record (`bench.contention.verdict`); when the machine is busy or the rounds
    disagree, every side of the cell is first timed again on one thread (torch's intra-op threads set to 1,
    a one-thread twin of each runtime backend, opened once into `single`), in the same alternating rounds."""
    ran = [n for n in times if n not in failed and times[n]]
    spreads = {n: contention.round_spread(per_round.get(n, [])) for n in ran}
    p50 = medians({n: times[n] for n in ran})
    seen = [n for n in others if n is not None]
    one_thread = None
    if settings.device == "cpu" and contention.needs_control(max(seen, default=None), settings.threads or 1, cpus,
                                                             spreads):
        runners = {}
        for name in ran:
            if name in TORCH_BACKENDS:
                runners[name] = adapters[name].runner(role, feeds)
                continue
            with contextlib.suppress(Exception):  # a twin that cannot open leaves its side without a control
                if name not in single:
                    twin = RuntimeAdapter(name, bundle, manifest, BenchSettings(**{**settings.__dict__, "threads": 1}))
                    twin.open()
                    single[name] = twin
                runners[name] = single[name].runner(role, feeds)
        lost: dict[str, BaseException] = {}
        with torch_threads(1):
            control = alternate(runners, settings.rounds,
                                None if settings.iters is not None else duration / settings.rounds,
                                runs=settings.iters, warmup=settings.warmup, min_runs=settings.min_iters, failed=lost)
        one_thread = medians({n: v for n, v in control.items() if n not in lost})
    return contention.verdict(others, settings.threads or 1, cpus, spreads, p50, one_thread)


def build_seconds(adapter, role: str, batch: int) -> float | None:
    """Inductor's build before this cell's first run (torch-compile*: inside prepare_s; aoti: inside load_s)."""
    cell = getattr(adapter, "cell_build_s", None)
    return cell(role, batch) if cell is not None else None


def start(adapter, role: str, feeds: dict[str, np.ndarray]) -> tuple[float, float, Any]:
    """(prepare seconds, first-call seconds, runner) for one backend, role and batch.

    prepare: making the runner (torch: staging buffers; torch-cudagraph: the graph capture; torch-compile*:
    Inductor compiling this role and batch), kept out of the first call so a capture never reads as a slow
    first inference. The warm runs are
    timed afterwards, all backends of the cell in alternating rounds (`bigmodel.bench.timing`).
    """
    clock = time.perf_counter_ns
    t0 = clock()
    run = adapter.runner(role, feeds)
    prepare = (clock() - t0) / 1e9
    t0 = clock()
    run()
    first = (clock() - t0) / 1e9
    return prepare, first, run


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text and not isinstance(e, BigmodelError) else \
        (text[0][:400] if text else type(e).__name__)


def _settings_record(bundle: Path, manifest: Manifest, s: BenchSettings, backends, roles, duration) -> dict:
    return {
        "bundle": str(bundle), "family": manifest.family, "arch": manifest.arch, "precision": manifest.precision,
        "device": s.device if s.device == "cpu" else f"cuda:{s.device_id}", "tf32": s.tf32, "strict": s.strict,
        "backends": list(backends), "roles": list(roles), "batch_sizes": list(s.batch_sizes),
        "warmup": s.warmup, "iters": s.iters, "duration_s": None if s.iters is not None else duration,
        "min_iters": s.min_iters, "rounds": s.rounds, "threads": s.threads, "copies": s.copies,
        "copies_note": (
            "CPU: no copies (numpy in, numpy out)." if s.device == "cpu" else
            ("host<->device copies are included in every timed run (inputs from host, outputs back to host)."
             if s.copies else
             "host<->device copies are excluded where the backend allows it (torch, torch-cudagraph, onnxruntime "
             "through I/O binding); a result with copies=true still includes them.")),
        "timing": "time.perf_counter_ns around each run; CUDA runs synchronise before the clock stops; the "
                  f"backends of a cell take turns in {s.rounds} rounds (a new seeded random order each round), "
                  "each with its share of the runs",
        "inputs": "images uniform in the data range, latents standard normal; numpy Generator seeded "
                  f"with {s.seed}",
        "speedup": "torch p50 / backend p50, same role and batch, same run",
        "speedup_best_torch": "p50 of the fastest torch-side form (torch, torch-cudagraph, torch-compile, "
                              "torch-compile-max, aoti: whichever ran; best_torch names it) / backend p50, same role "
                              "and batch, same run",
        "build": "cold.build_s: Inductor's build right before the cell's first run, timed in prepare_s (the table's "
                 "first ms adds it): torch-compile and torch-compile-max compile each role and batch, aoti exports "
                 "each role and builds one package for every batch (dynamic batch axis) at its first batch; every run "
                 "builds in a fresh temporary TORCHINDUCTOR_CACHE_DIR, removed afterwards, with Inductor's FX-graph, "
                 "AOTAutograd, autotuning and precompiled-header caches off",
        "speedup_paired": "median over the rounds of torch's round median / the backend's round median (round_p50): "
                          "each pair timed within a fraction of a second, so a change of the machine's speed "
                          "moves both alike",
    }


def machine_info(device: str = "cpu", device_id: int = 0) -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, library versions, GPU when asked for."""
    from bigmodel.runtime.backends.ort import physical_cores

    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
        "numpy": np.__version__, "load_average_1m": _load_average(),
    }
    for mod in ("torch", "onnxruntime", "openvino", "tensorrt"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    if device == "cuda":
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                p = torch.cuda.get_device_properties(device_id)
                info["gpu"] = {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                               "memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return info


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
