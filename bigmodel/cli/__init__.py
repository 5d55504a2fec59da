"""The `bigmodel` command line: thin Typer commands; heavy imports happen inside each command.

Each command parses its options, calls one library function and hands the result to
`bigmodel.console` to show. Library code raises `BigmodelError`; here it becomes one red line and
an exit code (2 bad input, 1 a failed check, 3 the machine refused), with the traceback only
under `--debug`.
"""

from __future__ import annotations

import sys

from bigmodel import console as ui

# isort: off
from bigmodel.cli import train, export, parity, runtime, tune, bench, eval, serve, doctor, quickstart  # noqa: F401  (order of --help)

# isort: on
from bigmodel.cli.app import _state, app, click_command
from bigmodel.errors import BigmodelError

__all__ = ["app", "main"]


# optional packages -> the extra that brings them (train, export, parity, bench, models need torch)
MISSING_EXTRA = {
    "torch": "cpu",
    "onnx": "cpu",
    "onnxscript": "cpu",
    "onnxslim": "cpu",
    "mlxtend": "cpu",
    "matplotlib": "cpu",
    "sklearn": "cpu",
    "onnxruntime": "runtime",
    "PIL": "runtime",
    "pytriton": "serve",
    "tritonclient": "serve",
}


def _interrupted(e: BaseException) -> bool:
    """A KeyboardInterrupt somewhere in the chain of causes of `e`."""
    seen = 0
    while e is not None and seen < 16:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def main() -> None:
    """Entry point of the `bigmodel` console script."""
    ui.safe_output()  # a terminal that cannot show "±" gets "+/-", never a UnicodeEncodeError
    try:
        click_command()()  # standalone: Click shows usage errors itself and exits 2
    except BigmodelError as e:
        if _state["debug"]:
            raise
        if _interrupted(e):  # Ctrl-C inside a library that wrapped it (torch.export does) is still Ctrl-C
            ui.error("interrupted")
            sys.exit(130)
        ui.error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:  # the machine refused: disk full, read-only, permission (library code names its paths)
        from bigmodel.fileio import STORAGE_ERRNOS, storage_error

        if _state["debug"]:
            raise
        ui.error(
            str(storage_error(e, e.filename or "a file", "write"))
            if e.errno in STORAGE_ERRNOS
            else f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")
        )
        sys.exit(3 if e.errno in STORAGE_ERRNOS else 2)
    except ModuleNotFoundError as e:  # an optional package missing (e.g. torch in a runtime-only install)
        extra = MISSING_EXTRA.get((e.name or "").split(".")[0])
        if extra is None or _state["debug"]:
            raise
        ui.error(
            f"this command needs the '{e.name}' package, which is not installed here; install it with: "
            f"pip install 'bigmodel[{extra}]'"
            + (" (install the torch build for your platform first, see README)" if extra == "cpu" else "")
        )
        sys.exit(2)
    except KeyboardInterrupt:
        ui.error("interrupted")
        sys.exit(130)
