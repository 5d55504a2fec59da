"""The tuning table beside a bundle's manifest (`bigmodel tune`) and `auto`'s per-batch dispatch from it.

`tuning.json` records, per role and measured batch size, each backend's p50 latency and the
fastest one, plus where it was measured: CPU model, thread count, the versions of bigmodel and of
every engine measured, and each role graph's sha256. A table measured elsewhere (another CPU,
thread count, engine version or graph) is stale: `load(..., backend="auto")` warns once and keeps
its usual rule. A valid table makes `auto` send each call to the backend that was fastest for the
measured batch nearest (on a log scale) to the call's batch.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from bigmodel.errors import BundleError
from bigmodel.manifest import Manifest

TABLE = "tuning.json"
FORMAT = 1


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def engine_versions(backends) -> dict[str, str | None]:
    """bigmodel's version and that of the package behind each backend name (no heavy imports)."""
    import importlib.metadata

    import bigmodel

    dists = {"ort": ("onnxruntime", "onnxruntime-gpu"), "ov": ("openvino",), "tensorrt": ("tensorrt",)}
    out: dict[str, str | None] = {"bigmodel": bigmodel.__version__}
    for name in sorted(backends):
        key = name.split("-")[0]
        for dist in dists.get(key, ()):
            try:
                out[dist.split("-")[0]] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            out.setdefault(dists.get(key, (key,))[0], None)
    return out


def machine_key(threads: int, backends) -> dict[str, Any]:
    """What a table's figures depend on besides the graphs."""
    return {"cpu": cpu_model(), "threads": int(threads), "versions": engine_versions(backends)}


def table_path(bundle: str | os.PathLike) -> Path:
    return Path(bundle) / TABLE


def form_key(backend: str, precision: str) -> str:
    """'ort-cpu:int8': one (backend, precision) form as the table names it."""
    return f"{backend}:{precision}"


def split_key(key: str) -> tuple[str, str]:
    backend, _, precision = key.partition(":")
    return backend, precision


def make_table(manifest: Manifest, threads: int, latency: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    """The table as written: latency[role][batch]["backend:precision"] = p50 seconds (a bare "backend": the
    bundle's default precision).

    Per cell: `p50_s` and `best` over the default precision's backends (what backend='auto' uses),
    `forms_p50_s` and `fastest` over every measured (backend, precision) (what precision='fastest' uses).
    """
    latency = {role: {b: {k if ":" in k else form_key(k, manifest.precision): v for k, v in cell.items()}
                      for b, cell in per_batch.items()} for role, per_batch in latency.items()}
    keys = {k for per_batch in latency.values() for cell in per_batch.values() for k in cell}
    backends = sorted({split_key(k)[0] for k in keys})
    roles = {}
    for role, per_batch in latency.items():
        roles[role] = {}
        for batch, cell in sorted(per_batch.items()):
            default = {split_key(k)[0]: v for k, v in cell.items() if split_key(k)[1] == manifest.precision}
            if default:
                roles[role][str(batch)] = {"p50_s": default, "best": min(default, key=default.get),
                                           "forms_p50_s": dict(cell), "fastest": min(cell, key=cell.get)}
    forms = {p: {role: manifest.form(p).roles[role].sha256 for role in latency} for p in manifest.forms}
    return {"format": FORMAT, "machine": machine_key(threads, backends),
            "graphs": {role: manifest.roles[role].sha256 for role in latency}, "form_graphs": forms,
            "backends": backends, "roles": roles}


def write_table(bundle: str | os.PathLike, table: dict[str, Any]) -> Path:
    from bigmodel.fileio import atomic_write_bytes

    return atomic_write_bytes(table_path(bundle), (json.dumps(table, indent=2) + "\n").encode())


def read_table(bundle: str | os.PathLike) -> dict[str, Any] | None:
    """The bundle's tuning table, None when there is none; BundleError when it cannot be read."""
    path = table_path(bundle)
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        if table.get("format") != FORMAT or not isinstance(table.get("roles"), dict):
            raise ValueError(f"format {table.get('format')!r}, expected {FORMAT}")
        for role, cells in table["roles"].items():
            for batch, cell in cells.items():
                int(batch)
                if cell["best"] not in cell["p50_s"]:
                    raise ValueError(f"{role} batch {batch}: best {cell['best']!r} was not measured")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BundleError(f"{path} is not a tuning table bigmodel can read ({e}); run `bigmodel tune` again "
                          "or delete it") from e
    return table


def stale_reason(table: dict[str, Any], manifest: Manifest, threads: int) -> str | None:
    """Why `table` does not describe this machine, thread count, engines and graphs; None when it does."""
    was = table.get("machine", {})
    now = machine_key(threads, table.get("backends", ()))
    if was.get("cpu") != now["cpu"]:
        return f"measured on CPU {was.get('cpu')!r}, this one is {now['cpu']!r}"
    if was.get("threads") != now["threads"]:
        return f"measured with {was.get('threads')} threads, this load uses {now['threads']}"
    for pkg, version in now["versions"].items():
        if was.get("versions", {}).get(pkg) != version:
            return f"measured with {pkg} {was.get('versions', {}).get(pkg)}, this machine has {version}"
    for role, sha in table.get("graphs", {}).items():
        spec = manifest.roles.get(role)
        if spec is None or spec.sha256 != sha:
            return f"measured on another {role} graph (the bundle was re-exported)"
    for precision, graphs in (table.get("form_graphs") or {}).items():
        form = manifest.forms.get(precision)
        for role, sha in graphs.items():
            if form is None or role not in form.roles or form.roles[role].sha256 != sha:
                return f"measured on another {precision} {role} graph (the bundle was re-exported)"
    return None


def winners(table: dict[str, Any]) -> dict[str, list[tuple[int, str]]]:
    """role -> [(batch, fastest backend)] sorted by batch."""
    return {role: sorted((int(b), cell["best"]) for b, cell in cells.items()) for role, cells in table["roles"].items()}


def fastest_forms(table: dict[str, Any], backend: str | None = None) -> dict[str, list[tuple[int, str]]]:
    """role -> [(batch, fastest "backend:precision")] sorted by batch (only `backend`'s forms when given);
    {} for a table from before forms."""
    out = {}
    for role, cells in table["roles"].items():
        points = []
        for b, cell in cells.items():
            times = {k: v for k, v in (cell.get("forms_p50_s") or {}).items()
                     if backend is None or split_key(k)[0] == backend}
            if times:
                points.append((int(b), min(times, key=times.get)))
        if points:
            out[role] = sorted(points)
    return out


def chooser(points: list[tuple[int, str]]):
    """batch -> backend name: the winner at the measured batch nearest on a log scale (ties: the smaller)."""
    batches = [b for b, _ in points]
    names = [n for _, n in points]
    # boundaries between neighbours at their geometric mean: past it the larger batch is nearer
    edges = [math.sqrt(a * b) for a, b in zip(batches, batches[1:], strict=False)]

    def choose(n: int) -> str:
        return names[bisect.bisect_left(edges, n)]

    return choose


class DispatchBackend:
    """Several loaded backends; each call of a role goes to the one the table chose for its batch size."""

    def __init__(self, backends: dict, table: dict[str, Any], points: dict[str, list[tuple[int, str]]] | None = None):
        self.backends = backends
        self.table = table
        self._points = points if points is not None else winners(table)  # role -> [(batch, member)]
        self.name = ("fastest(" if points is not None else "auto(") + ",".join(backends) + ")"
        self._choose = {role: chooser(p) for role, p in self._points.items()}
        first = next(iter(backends.values()))
        self._fallback = first  # roles the table did not measure
        self.settings = {"tuning": str(TABLE), "backends": {n: dict(getattr(b, "settings", {}) or {})
                                                             for n, b in backends.items()},
                         "chosen": {role: {str(b): n for b, n in p} for role, p in self._points.items()}}

    def pick(self, role: str, batch: int):
        """The backend object that runs `role` at `batch`."""
        choose = self._choose.get(role)
        return self.backends[choose(batch)] if choose else self._fallback

    def run(self, role: str, feeds: dict) -> list:
        n = len(next(iter(feeds.values())))
        return self.pick(role, n).run(role, feeds)

    def runner(self, role: str, outputs: list[str] | None = None):
        """feeds -> outputs, dispatched by batch size; each member's own runner made once."""
        choose = self._choose.get(role)
        if choose is None:
            return _runner_of(self._fallback, role, outputs)
        runs = {name: _runner_of(b, role, outputs) for name, b in self.backends.items()}
        if len(set(n for _, n in self._points[role])) == 1:
            return runs[choose(1)]

        def run(feeds: dict) -> list:
            for x in feeds.values():
                return runs[choose(len(x))](feeds)

        return run

    def staged_runner(self, role: str, outputs: list[str] | None = None):
        """x -> [outputs] or None through the staged fast path of the backend chosen for x's batch size
        (None for batches whose backend has none: the Model then takes its general path); None if no
        member has one."""
        choose = self._choose.get(role)
        if choose is None:
            return _staged_of(self._fallback, role, outputs)
        staged = {name: _staged_of(b, role, outputs) for name, b in self.backends.items()}
        if not any(staged.values()):
            return None

        def run(x):
            fast = staged[choose(len(x))]
            return fast(x) if fast is not None else None

        return run

    def batch_range(self, role: str):
        ranges = [r for b in self.backends.values() if (r := getattr(b, "batch_range", lambda _r: None)(role))]
        if not ranges:
            return None
        return max(lo for lo, _ in ranges), min(hi for _, hi in ranges)

    def close(self) -> None:
        for b in self.backends.values():
            close = getattr(b, "close", None)
            if close:
                close()


def _runner_of(backend, role: str, outputs):
    runner = getattr(backend, "runner", None)
    if runner is not None:
        return runner(role, outputs)
    return lambda feeds: backend.run(role, feeds)


def _staged_of(backend, role: str, outputs):
    staged = getattr(backend, "staged_runner", None)
    return staged(role, outputs) if staged is not None else None
