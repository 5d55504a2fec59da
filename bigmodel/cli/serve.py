"""`bigmodel serve`: a bundle behind Triton Inference Server (HTTP, gRPC, metrics), through PyTriton."""

from __future__ import annotations

from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel.cli.app import BackendOpt, BundleArg, ThreadsOpt, app
from bigmodel.serve import MAX_BATCH, QUEUE_DELAY_US


@app.command("serve")
def serve_cmd(
    bundle: BundleArg,
    host: Annotated[str, typer.Option(help="Address HTTP, gRPC and metrics listen on (0.0.0.0: every one).")
                    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="Triton's HTTP/REST port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="Triton's gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (/metrics).")] = 8002,
    max_batch: Annotated[int, typer.Option(help="Largest batch Triton's dynamic batcher forms (and accepts).")
                         ] = MAX_BATCH,
    queue_delay_us: Annotated[int, typer.Option(help="How long the batcher waits for more requests, microseconds.")
                              ] = QUEUE_DELAY_US,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="Triton's dynamic batcher.")] = True,
    backend: BackendOpt = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (where the runtime runs each role).")] = "cpu",
    threads: ThreadsOpt = None,
    log_verbose: Annotated[int, typer.Option(help="Triton's log verbosity (0: info, warnings, errors).")] = 0,
) -> None:
    """Serve every role of the bundle (and `sample`: n, seed -> images) under Triton until Ctrl-C or SIGTERM.

    Example: bigmodel serve runs/vae/bundle --http-port 8000   (then call it with tritonclient: docs/serve.md)
    """
    from bigmodel.serve import ServeOptions, serve

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           max_batch=max_batch, queue_delay_us=queue_delay_us, batching=batching,
                           backend=backend, device=device, threads=threads, log_verbose=log_verbose)
    serve(bundle, options, on_ready=lambda s: ui.print_serving(ui.console(), s))
    ui.console().print("stopped: Triton and its workspace are gone")
