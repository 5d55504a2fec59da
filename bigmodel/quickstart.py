"""The whole job in one call: train on the bundled digits, export, check parity, bench, sample.

`run_quickstart` composes the library's steps and returns a `QuickstartSummary`; it prints
nothing (the CLI draws progress from the one `progress` callback).

>>> summary = run_quickstart("vae", out="runs/quickstart")
>>> summary.parity_passed, summary.speedups
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bigmodel.errors import ConfigError
from bigmodel.fileio import write_json
from bigmodel.progress import Progress, ProgressFn
from bigmodel.threads import torch_threads

# Epochs for about 25 s of training on 2 CPU cores. The VAE's samples are blurry digits at 10 epochs,
# clear ones from about 30 (mnist-5k, batch 128: 35 steps an epoch). Other families: their own
# training defaults (`train_defaults`).
DEFAULT_EPOCHS = {"vae": 30, "ae": 30, "aae": 30}
IMAGE_ROLES = ("decoder", "generator")
STAGES = ("train", "export", "parity", "bench", "samples")


@dataclass
class QuickstartSummary:
    """What the quickstart did and where it left things."""

    family: str
    out: Path
    bundle: Path
    epochs: int
    validation: dict[str, float]
    parity_passed: bool
    parity_failures: list[str]
    bench_role: str
    speedups: dict[int, float | None]  # batch -> onnxruntime speed-up over torch eager (p50 / p50)
    latency_ms: dict[str, dict[int, float]]  # backend -> batch -> p50 ms
    files: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    load_average: float | None = None  # 1-minute load average when the bench ended
    cpus: int | None = None
    next_commands: list[str] = field(default_factory=list)
    speedup_notes: dict[int, str] = field(default_factory=dict)  # batch -> why its speed-up is unreliable or withheld

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def default_epochs(family: str) -> int:
    from bigmodel.models.registry import family_class

    return DEFAULT_EPOCHS.get(family) or int(family_class(family).train_defaults["epochs"])


def run_quickstart(family: str = "vae", out: str | Path = "runs/quickstart", epochs: int | None = None,
                   max_train: int | None = None, batch_sizes: tuple[int, ...] = (1, 256),
                   bench_duration: float = 1.0, parity_samples: int | None = None, threads: int | None = None,
                   seed: int = 0, progress: ProgressFn | None = None, force: bool = False) -> QuickstartSummary:
    """Train `family` (mlp) on mnist-5k into `out`, export `out/bundle` (replacing one), check parity on
    ort-cpu, bench torch eager against ort-cpu on the image role, and write a sample grid from the bundle.

    progress gets Progress("quickstart:NAME", message, done=i, total=len(STAGES)) as each of STAGES starts,
    and the train, export, parity and bench steps' own events. A failed parity check does not stop the
    run: the summary reports it.
    Every option and the output folder are checked before training starts; an `out` holding an
    earlier run is refused unless `force`.
    """
    from bigmodel.models.registry import family_class

    roles = family_class(family).roles  # ConfigError for an unknown family
    image_role = next(r for r in IMAGE_ROLES if r in roles)
    epochs = default_epochs(family) if epochs is None else epochs
    validate(epochs, max_train, batch_sizes, bench_duration, parity_samples, threads)
    out = Path(out)
    from bigmodel.training.rundir import check_run_folder

    check_run_folder(out, resume=False, force=force, can_resume=False)
    for name in ("parity.json", "bench.json", "samples_onnx.png"):
        if (out / name).is_dir():
            raise ConfigError(f"--out {out}: {out / name} is a folder; expected room for the quickstart's {name}")

    def say(name: str, message: str) -> None:
        if progress is not None:
            progress(Progress(f"quickstart:{name}", message, STAGES.index(name), len(STAGES)))

    seconds: dict[str, float] = {}
    files: dict[str, Path] = {}

    t = time.perf_counter()
    say("train", f"training {family}/mlp on mnist-5k for {epochs} epoch(s) -> {out}")
    from bigmodel.training.loop import TrainSettings, train

    with torch_threads(threads):
        result = train(TrainSettings(family=family, arch="mlp", dataset="mnist-5k", epochs=epochs, seed=seed,
                                     device="cpu", out=str(out), max_train=max_train, force=force),
                       progress=progress)
    validation = dict(result.history[-1]["val"]) if result.history else {}
    files.update(checkpoint=out / "checkpoint.pt", training_samples=out / "samples.png",
                 curves=out / "curves.png")
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    say("export", f"exporting every role to ONNX -> {out / 'bundle'}")
    from bigmodel.export import ExportOptions, export_bundle

    bundle = export_bundle(out, ExportOptions(force=True), progress=progress).bundle
    files["bundle"] = bundle
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    say("parity", "checking the bundle against PyTorch on onnxruntime (CPU)")
    from bigmodel.parity import run_parity

    kwargs = {} if parity_samples is None else {"samples": parity_samples}
    report = run_parity(bundle, backends=["ort-cpu"], threads=threads, progress=progress, **kwargs)
    parity_json = out / "parity.json"
    write_json(parity_json, report.to_dict())
    files["parity"] = parity_json
    seconds["parity"] = time.perf_counter() - t

    t = time.perf_counter()
    say("bench", f"benchmarking torch eager against onnxruntime on {image_role}, batch "
                 f"{', '.join(map(str, batch_sizes))}")
    from bigmodel.bench import BenchSettings, run_bench

    bench = run_bench(bundle, BenchSettings(device="cpu", backends=("torch", "ort-cpu"), roles=(image_role,),
                                            batch_sizes=tuple(batch_sizes), warmup=5, duration=bench_duration,
                                            threads=threads, seed=seed), progress=progress)
    bench_json = out / "bench.json"
    write_json(bench_json, bench)
    files["bench"] = bench_json
    speedups = {r["batch"]: r["speedup_vs_torch"] for r in bench["results"] if r["backend"] == "ort-cpu"}
    notes = {r["batch"]: speedup_note(r) for r in bench["results"] if r["backend"] == "ort-cpu" and r.get("unreliable")}
    latency: dict[str, dict[int, float]] = {}
    for r in bench["results"]:
        latency.setdefault(r["backend"], {})[r["batch"]] = r["warm"]["p50"] * 1e3
    seconds["bench"] = time.perf_counter() - t

    t = time.perf_counter()
    say("samples", "sampling 64 images from the bundle with the runtime (no torch)")
    from bigmodel.images import save_grid
    from bigmodel.runtime import load

    grid = out / "samples_onnx.png"
    model = load(bundle, backend="ort-cpu", threads=threads)
    save_grid(grid, model.sample(64, seed=seed))
    files["samples"] = grid
    seconds["samples"] = time.perf_counter() - t

    return QuickstartSummary(
        family=family, out=out, bundle=bundle, epochs=epochs, validation=validation,
        parity_passed=report.passed, parity_failures=report.messages()[:5], bench_role=image_role,
        speedups=speedups, latency_ms=latency, files=files, seconds=seconds,
        next_commands=next_commands(out, bundle, family), load_average=bench["machine"].get("load_average_1m"),
        cpus=bench["machine"].get("logical_cpus"), speedup_notes=notes)


def speedup_note(r: dict) -> str:
    """Why one bench result's speed-up is not a headline: withheld (a side collapsed; the one-thread ratio
    instead) or measured on a busy machine."""
    if r.get("speedup_withheld"):
        one = r.get("speedup_one_thread_vs_torch")
        return r["speedup_withheld"] + (f"; {one:.2f}x with one thread each" if one is not None else "")
    return "machine busy: " + "; ".join(r["contention"]["reasons"])


def validate(epochs: int, max_train: int | None, batch_sizes: tuple[int, ...], bench_duration: float,
             parity_samples: int | None, threads: int | None) -> None:
    """Refuse bad option values before any work (training takes minutes; a typo should not)."""
    import math

    def positive_int(name: str, value) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")

    positive_int("--epochs", epochs)
    positive_int("--max-train", max_train)
    positive_int("--threads", threads)
    for b in batch_sizes:
        positive_int("batch size", b)
    if parity_samples is not None and (parity_samples < 3 or parity_samples % 2 == 0):
        raise ConfigError(f"parity samples must be odd and >= 3; got {parity_samples}")
    if not (isinstance(bench_duration, (int, float)) and math.isfinite(bench_duration) and bench_duration > 0):
        raise ConfigError(f"--bench-duration must be a positive number of seconds; got {bench_duration!r}")
    from bigmodel.limits import MAX_SECONDS, check_count, check_seconds, check_threads

    check_count(epochs, "--epochs", 10**6)
    check_threads(threads)
    check_seconds(bench_duration, "--bench-duration", MAX_SECONDS / 100)  # it runs per backend and batch size


def next_commands(out: Path, bundle: Path, family: str) -> list[str]:
    """What to try after the quickstart, CPU first, then the GPU commands (comments aligned)."""
    pairs = [
        (f"bigmodel bench {bundle} --plot {out / 'bench.png'}", "every role, batch 1 to 1024, and a plot"),
        (f"bigmodel sample {bundle} -n 16 --out {out / 'sample16.png'}", "images from the runtime alone"),
        (f"bigmodel train {family} --epochs 50 --out runs/{family}", "a longer run (or --arch conv)"),
        ("bigmodel doctor", "what this machine can run, and what to install"),
        ("# on an NVIDIA GPU machine: pip install 'bigmodel[gpu]' (TensorRT: 'bigmodel[tensorrt]')", ""),
        (f"bigmodel export {out} --engine --force", "adds TensorRT engines to the bundle"),
        (f"bigmodel bench {bundle} --device cuda --plot {out / 'bench_cuda.png'}", "every GPU backend vs torch"),
    ]
    width = max(len(cmd) for cmd, note in pairs if note)
    return [f"{cmd:{width}}  # {note}" if note else cmd for cmd, note in pairs]


