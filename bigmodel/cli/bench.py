"""`bigmodel bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel import tables
from bigmodel.cli.app import BACKEND_NAMES, JsonOutOpt, _check_outputs, app


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (manifest.json + role graphs) from `bigmodel export`.")],
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (torch runs there too).")] = "cpu",
    backends: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated, from torch, torch-cudagraph, torch-compile, torch-compile-max, aoti, "
            f"{BACKEND_NAMES} (default: torch and the CPU backends on cpu; all but the Inductor forms "
            "torch-compile* and aoti on cuda, which build for seconds to minutes). Unavailable ones are listed "
            "as skipped."
        ),
    ] = None,
    roles: Annotated[
        str | None, typer.Option(help="Comma-separated roles, e.g. decoder (default: every role).")
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16,256,1024",
    warmup: Annotated[int, typer.Option(help="Untimed runs per backend, role and batch before timing.")] = 10,
    iters: Annotated[
        int | None, typer.Option(help="Timed runs per backend, role and batch (instead of --duration).")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds of timed runs per backend, role and batch (default 1; at least 5 runs)."),
    ] = None,
    rounds: Annotated[
        int,
        typer.Option(
            help="The timed runs of each role and batch alternate between the backends in this many rounds "
            "(--duration or --iters split over them), so a busy spell on the machine hits every backend alike."
        ),
    ] = 10,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch and onnxruntime alike (default: physical cores).")
    ] = None,
    copies: Annotated[
        bool,
        typer.Option(
            "--copies/--no-copies", help="CUDA: include host<->device copies of inputs and outputs in each timed run."
        ),
    ] = True,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint for the torch baseline (default: BUNDLE/../checkpoint.pt).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    tf32: Annotated[
        bool,
        typer.Option(
            "--tf32", help="CUDA: let fp32 MatMul/Conv use TF32 (torch, onnxruntime, TensorRT alike); off by default."
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="onnxruntime GPU backends: no node may fall back to the CPU "
            "provider (the backend is skipped with the reason otherwise).",
        ),
    ] = False,
    roofline: Annotated[
        bool,
        typer.Option(
            "--roofline/--no-roofline",
            help="Measure this machine's GEMM and memcpy ceilings in the same run and report GFLOP/s and GB/s as % "
            "of them.",
        ),
    ] = True,
    precision: Annotated[
        str | None,
        typer.Option(help="Which verified precision of the bundle the runtime backends run (export --precision "
                          "fp32,int8,...); default: its own. torch stays the fp32 reference."),
    ] = None,
    json_out: JsonOutOpt = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write latency and throughput against batch size to this PNG.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing --json / --plot files.")] = False,
) -> None:
    """Latency and throughput of every backend side by side, against PyTorch eager in the same run.

    Per backend, role and batch: cold phases (load, first run), warm
    p50/p90/p99/mean/min/max/cv, samples/s, speed-up over torch eager
    (torch p50 / backend p50) and over the fastest torch-side form (eager,
    torch.compile, AOTInductor: whichever ran), and GFLOP/s and GB/s of
    weights read as % of this machine's ceilings measured in the same run
    (best GEMM of the bundle's precision on the graph's shapes, a memcpy).

    Example: bigmodel bench runs/vae/bundle --batch-sizes 1,256 --plot bench.png
    (--precision int8: the bundle's int8 form against the same torch baseline)
    """
    from bigmodel.bench import BenchSettings, parse_list, run_bench, write_plot

    _check_outputs(force, (json_out, "bench report", (), "--json"), (plot, "plot", (".png",), "--plot"),
                   reads=(bundle,))
    settings = BenchSettings(
        device=device,
        backends=parse_list(backends, str, "--backends"),
        roles=parse_list(roles, str, "--roles"),
        batch_sizes=parse_list(batch_sizes, int, "--batch-sizes") or (),
        warmup=warmup,
        iters=iters,
        duration=duration,
        rounds=rounds,
        threads=threads,
        copies=copies,
        checkpoint=checkpoint,
        seed=seed,
        tf32=tf32,
        strict=strict,
        roofline=roofline,
        precision=precision,
    )
    console = ui.table_console()
    with ui.BenchProgress(console) as report_progress:
        report = run_bench(bundle, settings, progress=report_progress)
    tables.bench_table(console, report)
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, report)
        ui.print_saved(console, "JSON report", json_out, markup=True)
    if plot:
        write_plot(report, plot)
        ui.print_saved(console, "plot", plot, markup=True)
