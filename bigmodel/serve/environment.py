"""Whether PyTriton can run in this environment: the LIBDIR fix for its Python stub, and numpy's major version."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import numpy as np


def interpreter_libpython() -> Path | None:
    """This interpreter's shared libpython (LIBDIR/INSTSONAME), or None (a static build: nothing to fix)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    f = Path(libdir) / soname
    return f if f.is_file() else None


def stub_path() -> Path | None:
    """PyTriton's Python-backend stub for this interpreter's version, or None without PyTriton."""
    try:
        from pytriton.utils.distribution import get_stub_path
    except ImportError:
        return None
    import sys

    p = Path(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))
    return p if p.is_file() else None


def stub_libpython(stub: Path, env: dict[str, str] | None = None) -> Path | None:
    """The libpython the dynamic loader gives `stub` (read off `ldd`), or None where ldd cannot say."""
    try:
        out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=20,
                             env=env if env is not None else dict(os.environ)).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.startswith("libpython"):
            where = target.split(" (")[0].strip()
            return Path(where).resolve() if where.startswith("/") else Path("not found")
    return None


def libdir_fix() -> str | None:
    """The LD_LIBRARY_PATH entry the stub needs, or None where it already links this interpreter's libpython.

    PyTriton's stub links `libpython3.X.so`; where the loader finds another build of it (the system's,
    while this interpreter is pyenv's or conda's), models fail to load with `'_thread.RLock' object has no
    attribute '_recursion_count'`. Putting this interpreter's LIBDIR first fixes it.
    """
    own, stub = interpreter_libpython(), stub_path()
    if own is None or stub is None:
        return None
    linked = stub_libpython(stub)
    if linked is not None and linked == own.resolve():
        return None
    return str(own.parent)


def apply_libdir_fix() -> str | None:
    """Put this interpreter's LIBDIR first on LD_LIBRARY_PATH where the stub needs it (PyTriton hands
    its environment to tritonserver and the stub); returns the directory added, or None."""
    libdir = libdir_fix()
    if libdir is not None:
        old = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = libdir + (os.pathsep + old if old else "")
    return libdir


def numpy_clash() -> str | None:
    """Why PyTriton cannot run with this numpy, or None: nvidia-pytriton 0.7 declares numpy < 2 and, with
    numpy 2, hands the callables empty arrays (measured: `cannot reshape array of size 0`)."""
    import importlib.metadata as md

    try:
        pytriton = md.version("nvidia-pytriton")
    except md.PackageNotFoundError:
        return None
    if int(np.__version__.split(".")[0]) >= 2 and tuple(int(p) for p in pytriton.split(".")[:2]) < (0, 8):
        return (f"nvidia-pytriton {pytriton} needs numpy < 2 and this environment has numpy {np.__version__}; "
                "install the serve extra in an environment of its own: pip install 'bigmodel[serve]' "
                "(it brings numpy < 2 with the runtime, no torch)")
    return None


def status() -> tuple[str | None, str]:
    """(nvidia-pytriton's version or None, one line for `bigmodel doctor`: the LIBDIR fix and numpy)."""
    import importlib.metadata as md

    try:
        version = md.version("nvidia-pytriton")
    except md.PackageNotFoundError:
        return None, "not installed (bigmodel serve needs it: pip install 'bigmodel[serve]')"
    clients = [m for m in ("tritonclient.http", "tritonclient.grpc") if _importable(m)]
    fix = libdir_fix()
    line = (f"for bigmodel serve; LIBDIR fix applies (the stub would link another libpython; serve puts {fix} "
            "first on LD_LIBRARY_PATH)" if fix else "for bigmodel serve; LIBDIR fix not needed (the stub links "
            "this interpreter's libpython)")
    line += f"; clients: {', '.join(clients) or 'none (pip install tritonclient[http,grpc])'}"
    clash = numpy_clash()
    return version, line + (f"; BROKEN: {clash}" if clash else "")


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
