"""`bigmodel tune`: every available runtime backend x every verified precision, per role and batch -> tuning.json.

Each (role, batch) cell times the backends in alternating rounds (so a busy spell on a shared
machine hits all of them alike) through `Model.run`, the path `auto` will dispatch. The table
(bigmodel.runtime.tuning) is written beside the manifest and read by `load(..., backend="auto")`.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from bigmodel.bench.timing import alternate
from bigmodel.errors import BackendUnavailable, InputError
from bigmodel.progress import ProgressFn, reporter

DEFAULT_BATCHES = (1, 4, 16, 64, 256, 1024)


def tune_bundle(bundle: str | os.PathLike, batch_sizes: tuple[int, ...] = DEFAULT_BATCHES,
                threads: int | None = None, backends: tuple[str, ...] | None = None, device: str = "cpu",
                seconds: float = 0.6, rounds: int = 3, seed: int = 0, write: bool = True,
                progress: ProgressFn | None = None, force: bool = False) -> dict[str, Any]:
    """Measure, choose the fastest backend per (role, batch), write BUNDLE/tuning.json; returns the table.

    backends: default every registry backend for `device` ('cpu' or 'cuda'); those that cannot run
    here are listed under "skipped" with the reason. seconds: timed seconds per backend and cell,
    split over `rounds` alternating rounds. An existing tuning.json is replaced only with `force`
    (InputError before anything is measured otherwise).
    """
    from bigmodel.bench.adapters import role_inputs
    from bigmodel.bench.run import MAX_RUNS
    from bigmodel.limits import check_batch_sizes, check_count, check_seconds, check_seed, check_threads
    from bigmodel.manifest import read_manifest
    from bigmodel.runtime import backend_status, load
    from bigmodel.runtime.backends import registry
    from bigmodel.runtime.backends.ort import physical_cores
    from bigmodel.runtime.tuning import form_key, make_table, table_path, write_table

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if write and not force and (table_path(bundle).exists() or table_path(bundle).is_symlink()):
        raise InputError(f"{table_path(bundle)} already exists (an earlier `bigmodel tune`); pass --force to "
                         "replace it")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda; got {device!r}")
    check_batch_sizes(batch_sizes, manifest)
    check_threads(threads)
    check_seconds(seconds, "--seconds")
    check_count(rounds, "rounds", MAX_RUNS)
    check_seed(seed)
    names = tuple(backends or registry.names_for(device))
    for n in names:
        registry.entry(n)
    status = backend_status(names)
    available = [n for n in names if status[n] is None]
    if not available:
        raise BackendUnavailable("no backend to tune can run here: "
                                 + "; ".join(f"{n}: {r}" for n, r in status.items()))
    say = reporter(progress, "tune")
    threads = threads or physical_cores()
    models = {}  # "backend:precision" -> Model: every verified precision on every backend that runs it
    for n in available:
        for precision in manifest.precisions:
            say(f"loading {n} {precision}")
            try:
                models[form_key(n, precision)] = load(bundle, backend=n, threads=threads,
                                                      device=registry.entry(n).device, precision=precision)
            except BackendUnavailable as e:  # bf16 on onnxruntime, an int8 contrib op on OpenVINO, ...
                if precision == manifest.precision:
                    raise
                status[form_key(n, precision)] = str(e)
    latency: dict[str, dict[int, dict[str, float]]] = {}
    try:
        for role in manifest.roles:
            latency[role] = {}
            for batch in sorted(set(batch_sizes)):
                say(f"{role} batch {batch}")
                feeds = role_inputs(manifest, role, batch, seed)
                sides = {n: (lambda m=m, role=role, feeds=feeds: m.run(role, feeds)) for n, m in models.items()}
                times = alternate(sides, rounds, seconds / rounds, min_runs=3 * rounds)
                latency[role][batch] = {n: statistics.median(t) for n, t in times.items()}
    finally:
        for m in models.values():
            m.close()
    table = make_table(manifest, threads, latency)
    table["skipped"] = {n: r for n, r in status.items() if r is not None}
    table["load_average_1m"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    table["method"] = (f"Model.run p50 over {rounds} alternating rounds of ~{seconds / rounds:.2f} s per "
                       f"backend:precision and cell; inputs seeded with {seed}")
    if write:
        write_table(bundle, table)
    return table
