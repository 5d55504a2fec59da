"""`bigmodel tune`."""

from __future__ import annotations

from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel import tables
from bigmodel.cli.app import BundleArg, _locked, app


@app.command()
def tune(
    bundle: BundleArg,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes to measure.")] = "1,4,16,64,256,1024",
    backends: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated runtime backends (default: every one for the device; those that cannot "
            "run here are listed as skipped)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads (default: physical cores); a load with another count ignores the table."),
    ] = None,
    seconds: Annotated[
        float, typer.Option(help="Timed seconds per backend and cell (over 3 alternating rounds).")
    ] = 0.6,
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing BUNDLE/tuning.json.")] = False,
) -> None:
    """Measure every backend per role and batch size; write BUNDLE/tuning.json for load(backend="auto").

    With the table, `auto` sends each call to the backend that was fastest for the nearest measured
    batch size. A table measured on another CPU, thread count, engine version or graph is ignored
    with a warning.

    Example: bigmodel tune runs/vae/bundle --batch-sizes 1,16,256,1024
    """
    import json

    from bigmodel.bench import parse_list
    from bigmodel.bench.tune import tune_bundle
    from bigmodel.fileio import check_writable
    from bigmodel.manifest import read_manifest

    read_manifest(bundle)  # a bundle, and one whose folder takes tuning.json, before minutes of measuring
    check_writable(bundle)  # (and tune_bundle refuses an existing tuning.json without --force, before measuring)
    console = ui.table_console()
    with _locked("bundle", bundle), console.status("tuning") as status:
        table = tune_bundle(
            bundle,
            batch_sizes=parse_list(batch_sizes, int, "--batch-sizes") or (),
            threads=threads,
            backends=parse_list(backends, str, "--backends"),
            device=device,
            seconds=seconds,
            progress=ui.status_progress(status, "tuning: "),
            force=force,
        )
    if json_out:
        typer.echo(json.dumps(table, indent=2))
        return
    tables.tuning_table(console, {"file": str(bundle / "tuning.json"), "stale": None, "table": table})
    ui.print_skipped(console, table.get("skipped", {}))
