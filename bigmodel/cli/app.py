"""The Typer app, the options several commands share, and output-file checks made before any work."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from bigmodel.runtime.backends import registry

app = typer.Typer(
    name="bigmodel",
    help="Train generative models (AE, VAE, GAN, AAE), export them to ONNX/TensorRT, check parity, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_state = {"debug": False}


@functools.cache
def click_command():
    """The app as one Click command, built once per process (Typer rebuilds it, ~25 ms, on every app() call).

    The same thing `app()` runs: the app sets no pretty-exception hook (pretty_exceptions_enable=False).
    """
    command = typer.main.get_command(app)
    _hide_flag_metavars(command)
    return command


def _hide_flag_metavars(command) -> None:
    """Typer's help shows flags as `--force <bool>`, yet `--force true` is an error: flags take no value."""
    help_option = command.get_help_option(command.context_class(command))  # cached: the one help shows
    for param in [*command.params, *([help_option] if help_option else [])]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_metavars(sub)


# Options several commands share (one definition each; Typer reads the Annotated metadata).
BundleArg = Annotated[Path, typer.Argument(help="Bundle folder (manifest.json + role graphs).")]


# Backend names come from the runtime's registry: a new backend shows up in every --help by itself.
BACKEND_NAMES = ", ".join(registry.NAMES)
BackendOpt = Annotated[str, typer.Option(help=f"auto, ort, or one of: {BACKEND_NAMES}.")]


DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]


ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads (default: the physical cores).")]


FallbackOpt = Annotated[bool, typer.Option("--fallback", help="Run on the CPU (with a warning) if the GPU can't.")]


JsonOutOpt = Annotated[Path | None, typer.Option("--json", help="Write the report as JSON to this file.")]


def _version(value: bool) -> None:
    if value:
        from bigmodel import __version__

        typer.echo(f"bigmodel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug


def _check_outputs(force: bool, *outputs: tuple[Path | None, str, tuple[str, ...], str],
                   reads: tuple[Path | None, ...] = ()) -> None:
    """Each (path, what, suffixes, flag) output file usable before any work starts; no two the same file,
    none inside the bundles (or on the run files) in `reads`, which the command reads or writes."""
    from bigmodel.errors import InputError
    from bigmodel.fileio import check_output_file, check_outside

    seen: dict[Path, str] = {}
    for path, what, suffixes, flag in outputs:
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{flag} and {seen[key]} name the same file {path}; expected different files")
        seen[key] = flag
        check_outside(path, flag, reads)
        check_output_file(path, force, what, suffixes, flag)


def _locked(what: str, *folders: Path | None):
    """The one-writer locks of `folders` (fileio.folder_lock), held together for a `with` block."""
    import contextlib

    from bigmodel.fileio import folder_lock

    stack = contextlib.ExitStack()
    try:
        for folder in folders:
            if folder is not None:
                stack.enter_context(folder_lock(folder, what))
    except BaseException:
        stack.close()
        raise
    return stack
