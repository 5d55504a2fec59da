"""`bigmodel doctor`."""

from __future__ import annotations

from typing import Annotated

import typer

from bigmodel import tables
from bigmodel.cli.app import app


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """What this machine has for bigmodel: Python, torch (+ CUDA, GPU), onnx, onnxruntime and its providers,
    TensorRT, cuda-python, and which backends can run here (if not: why, and what installs them). Always exits 0.
    """
    import json

    try:
        from bigmodel.doctor import gather

        report = gather()
    except Exception as e:  # doctor reports; it never fails
        report = {"error": f"{type(e).__name__}: {e}", "packages": [], "backends": []}
    if json_out:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    tables.print_doctor(report)
