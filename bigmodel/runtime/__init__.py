"""The embeddable runtime: load a bundle and run it with numpy + onnxruntime (or TensorRT). No torch.

>>> from bigmodel.runtime import load
>>> model = load("runs/vae/bundle")
>>> images = model.sample(16, seed=0)      # (16, 1, 28, 28) float32 in [0, 1]
>>> codes = model.encode(images)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from bigmodel.checksum import sha256_file
from bigmodel.errors import BackendUnavailable, BundleError, InputError
from bigmodel.limits import check_threads
from bigmodel.manifest import Manifest, read_manifest
from bigmodel.runtime.backends import registry
from bigmodel.runtime.backends.registry import LoadOptions
from bigmodel.runtime.model import Model

BACKENDS = registry.NAMES
DEVICES = ("auto", "cpu", "cuda")
GPU_BACKENDS = registry.names_for("cuda")

__all__ = ["BACKENDS", "DEVICES", "Model", "load", "backend_status", "resolve_backend", "verify_files"]


def member(bundle: Path, file: str, what: str) -> Path:
    """`bundle / file`, refused (BundleError) unless it stays inside the bundle folder: no absolute path,
    no `..`, no symbolic link leading out. A manifest must never make the runtime read another file."""
    name = str(file)
    if not isinstance(file, str) or "\0" in name:
        raise BundleError(f"bundle {bundle}: {what} names {name!r}; expected a file name (a string without NUL)")
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or os.path.isabs(name) or ".." in parts or "\\" in name:
        raise BundleError(f"bundle {bundle}: {what} names {name!r}; expected a relative path inside the bundle "
                          "folder (refusing an absolute path or '..')")
    f = bundle / name
    root = bundle.resolve()
    real = f.resolve()
    if real != root and root not in real.parents:
        raise BundleError(f"bundle {bundle}: {what} {name!r} leads outside the bundle folder (to {real}); "
                          "expected a file inside it, not a link out of it")
    return f


def check_containment(path: Path, manifest: Manifest) -> None:
    """Every file the manifest names (role graphs, their external weights, engines) lies inside `path`."""
    for role, spec in manifest.roles.items():
        f = member(path, spec.file, f"role {role}")
        data = f.with_name(f.name + ".data")
        if data.exists() or data.is_symlink():
            member(path, str(data.relative_to(path)), f"external data of role {role}")
        for d in spec.data_files:
            member(path, d.file, f"external data of role {role}")
    for e in manifest.engines:
        member(path, e.file, f"engine of {e.role}")
    for precision, form in manifest.forms.items():
        for role, f in form.roles.items():
            member(path, f.file, f"the {precision} form of role {role}")
            for d in f.data_files:
                member(path, d.file, f"external data of the {precision} form of role {role}")


def verify_files(path: str | os.PathLike, manifest: Manifest, engines: bool = False, roles: bool = True) -> None:
    """Every role file and its external data (with `engines`, every engine file too) exists and matches its
    sha256, or BundleError."""
    path = Path(path)
    items = [(f"role {role}", spec.file, spec.sha256) for role, spec in manifest.roles.items()] if roles else []
    if roles:  # a graph's external weights are checked like the graph itself
        items += [(f"external data of role {role}", d.file, d.sha256)
                  for role, spec in manifest.roles.items() for d in spec.data_files]
    if engines:
        items += [(f"engine of {e.role}", e.file, e.sha256) for e in manifest.engines]
    for what, file, expected in items:
        f = member(path, file, what)
        if not f.is_file():
            raise BundleError(f"bundle {path} is incomplete: {what} expects {file}, which is missing")
        got = sha256_file(f)
        if got != expected:
            raise BundleError(f"{f} does not match the manifest: expected sha256 {expected[:16]}..., "
                              f"got {got[:16]}... (the file changed after export; re-export the bundle)")


def warn_failed_verification(path: Path, manifest: Manifest) -> None:
    """One RuntimeWarning for a bundle exported with --allow-failing (its manifest records failed checks),
    naming the roles and chains that failed; nothing for any other bundle."""
    v = manifest.extra.get("verification")
    if not isinstance(v, dict) or v.get("passed", True) is not False:
        return
    failures = [str(f) for f in v.get("failures") or []]
    failed = [str(t) for t in v["failing"]] if isinstance(v.get("failing"), list) else None
    if failed is None:  # bundles from before "failing" was recorded: read it off the failure lines,
        # which read "<precision> <role or chain> output ...": bigmodel.parity.check.failure_lines
        failed = sorted({f.removeprefix(f"{manifest.precision} ").split(" output ")[0] for f in failures})
    warnings.warn(f"bundle {path} was exported with --allow-failing: its {manifest.precision} graphs failed "
                  f"{len(failures)} of export's checks against the fp32 graphs (failing: {', '.join(failed) or '?'}); "
                  "its outputs may be wrong (every failure: manifest.json, extra.verification)",
                  RuntimeWarning, stacklevel=3)


def backend_status(names: tuple[str, ...] = BACKENDS, device_id: int = 0) -> dict[str, str | None]:
    """Each backend name -> None if it can run here (its registry probe really ran it; GPU ones on GPU
    `device_id`), else the reason it cannot."""
    return registry.status(tuple(names), device_id)


def resolve_backend(backend: str, device: str, manifest: Manifest, device_id: int | None = None) -> str:
    """A concrete backend name from (backend, device).

    'auto' picks by the registry's ranking for the device: tensorrt (when the bundle has engines),
    then ort-trt, ort-cuda, and ort-cpu when the device is cpu or auto without a GPU. 'ort' means
    ort-cpu or ort-cuda by device. A cuda request nothing here can serve raises BackendUnavailable.
    device may name a GPU: cuda:1.
    """
    from bigmodel.runtime.backends import parse_device

    device, device_id = parse_device(device, device_id)
    if backend in BACKENDS:
        runs_on = registry.entry(backend).device
        if device != "auto" and device != runs_on:
            other = "ort-cpu" if device == "cpu" else "ort-cuda"
            where = "a GPU" if runs_on == "cuda" else "the CPU"
            raise InputError(f"backend {backend} runs on {where}; got device={device!r} (use backend={other!r})")
        return backend
    if backend == "ort":
        if device == "auto":
            return "ort-cuda" if backend_status(("ort-cuda",), device_id)["ort-cuda"] is None else "ort-cpu"
        return {"cpu": "ort-cpu", "cuda": "ort-cuda"}[device]
    if backend != "auto":
        raise InputError(f"backend must be auto, ort or one of {', '.join(BACKENDS)}; got {backend!r}")
    cpu_first = registry.auto_order("cpu", bool(manifest.engines))[0]
    if manifest.precision == "bf16":
        return "ov-cpu"  # the one backend that runs a bf16 bundle
    if device == "cpu":
        return cpu_first
    reasons = []
    for name in registry.auto_order("cuda", bool(manifest.engines)):
        reason = backend_status((name,), device_id)[name]
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    if device == "cuda":
        raise BackendUnavailable("device='cuda' asked for, but no GPU backend can run here ("
                                 + "; ".join(reasons) + ")")
    return cpu_first


def _make_backend(path: Path, manifest: Manifest, name: str, threads: int | None, precision: str | None,
                  device_id: int = 0, tf32: bool = False, strict: bool = False):
    options = LoadOptions(threads=threads, precision=precision, device_id=device_id, tf32=tf32, strict=strict)
    return registry.entry(name).create(path, manifest, options)


def _tuned_backend(path: Path, manifest: Manifest, device: str, threads: int | None, device_id: int,
                   tf32: bool):
    """The backend(s) the bundle's tuning table picks for `auto`, or None (no table, or one that does not
    apply here: a warning says why, and `auto` keeps its usual rule)."""
    from bigmodel.runtime import tuning
    from bigmodel.runtime.backends import parse_device
    from bigmodel.runtime.backends.ort import physical_cores

    try:
        table = tuning.read_table(path)
    except BundleError as e:
        reason, table = str(e), None
        warnings.warn(f"{reason}; backend='auto' uses its usual rule", RuntimeWarning, stacklevel=3)
        return None
    if table is None:
        return None
    reason = tuning.stale_reason(table, manifest, threads or physical_cores())
    kind, _ = parse_device(device)
    names = sorted({n for points in tuning.winners(table).values() for _, n in points})
    if reason is None:
        wrong = [n for n in names if n not in BACKENDS or kind not in ("auto", registry.entry(n).device)]
        if wrong:
            reason = f"it picks {', '.join(wrong)}, which cannot serve device={device!r}"
    if reason is None:
        down = {n: r for n, r in backend_status(tuple(names), device_id).items() if r is not None}
        if down:
            reason = "; ".join(f"{n} cannot run here ({r})" for n, r in down.items())
    if reason is not None:
        warnings.warn(f"ignoring the stale tuning table {tuning.table_path(path)}: {reason}; backend='auto' uses "
                      "its usual rule (run `bigmodel tune` again)", RuntimeWarning, stacklevel=3)
        return None
    members = {n: _make_backend(path, manifest, n, threads, None, device_id, tf32) for n in names}
    if len(members) == 1:
        return next(iter(members.values()))
    return tuning.DispatchBackend(members, table)


def _fastest_backend(path: Path, manifest: Manifest, backend: str, device: str, threads: int | None, device_id: int,
                     tf32: bool, verify: bool):
    """precision='fastest': (a dispatcher over the (backend, precision) forms the tuning table found fastest per
    batch, or None; whether the table applies here). None when it has no such picks or they cannot run here;
    one RuntimeWarning says why."""
    from bigmodel.runtime import tuning
    from bigmodel.runtime.backends import parse_device
    from bigmodel.runtime.backends.ort import physical_cores

    reason, kind = None, parse_device(device)[0]
    try:
        table = tuning.read_table(path)
    except BundleError as e:
        table, reason = None, str(e)
    if table is None and reason is None:
        reason = f"the bundle has no tuning table ({tuning.TABLE}; make one with `bigmodel tune {path}`)"
    if table is not None:
        reason = tuning.stale_reason(table, manifest, threads or physical_cores())
    applies = reason is None
    if reason is None:
        forms = tuning.fastest_forms(table, None if backend == "auto" else backend)
        if not forms:
            reason = (f"{tuning.table_path(path)} has no measurements of this bundle's precisions"
                      + ("" if backend == "auto" else f" on {backend}") + "; run `bigmodel tune` again")
        wanted = {key: tuning.split_key(key) for points in forms.values() for _, key in points}
        if reason is None:
            missing = sorted({p for _, p in wanted.values()} - set(manifest.precisions))
            wrong = sorted({b for b, _ in wanted.values()
                            if b not in BACKENDS or kind not in ("auto", registry.entry(b).device)})
            down = {b: r for b, r in backend_status(tuple({b for b, _ in wanted.values()}), device_id).items()
                    if r is not None}
            if missing:
                reason = f"the table picks precision(s) {', '.join(missing)} this bundle does not carry"
            elif wrong:
                reason = f"the table picks {', '.join(wrong)}, which cannot serve device={device!r}"
            elif down:
                reason = "; ".join(f"{b} cannot run here ({r})" for b, r in down.items())
    if reason is not None:
        warnings.warn(f"precision='fastest': {reason}; running the bundle's default precision "
                      f"({manifest.precision})", RuntimeWarning, stacklevel=3)
        return None, applies
    members = {}
    for key, (name, precision) in wanted.items():
        form = manifest.form(precision)
        if verify:
            verify_files(path, form)
        members[key] = _make_backend(path, form, name, threads, None, device_id, tf32)
    # a dispatcher even over one pick: its settings say what the table chose per batch (its runner is the pick's)
    return tuning.DispatchBackend(members, table, forms), True


def load(path: str | os.PathLike, backend: str = "auto", device: str = "auto", threads: int | None = None,
         fallback: bool = False, verify: bool = True, precision: str | None = None,
         device_id: int | None = None, tf32: bool = False, strict: bool = False,
         check_values: bool = True) -> Model:
    """Load a bundle folder (manifest.json + role graphs [+ engines/]) for inference.

    backend: auto | ort | one of BACKENDS (ort-cpu, ort-cuda, ort-trt, tensorrt, ov-cpu);
    device: auto | cpu | cuda | cuda:N. threads: CPU intra-op threads (default: the physical cores).
    fallback: a GPU request that cannot be served raises BackendUnavailable, or with
    fallback=True warns once and runs on ort-cpu; never a silent fallback.
    verify: check every file's sha256 against the manifest (engine files too, for tensorrt) before
    anything runs. Engines are always checked against this machine's TensorRT version and GPU
    compute capability before they are deserialised.
    precision: which of the bundle's verified precisions to run (default: the one it was exported with;
    `manifest.precisions` lists them; `bigmodel export --precision fp32,int8,bf16` makes several), or
    "fastest": each call goes to the backend and precision `bigmodel tune` measured fastest for the
    nearest measured batch (without a table that applies here: one RuntimeWarning, then the default).
    For tensorrt: which engine precision, when the bundle has several.
    device_id (or device='cuda:N'): which GPU. tf32: let onnxruntime's GPU providers use TF32 for
    fp32 MatMul/Conv (off by default, so fp32 bundles match their fp32 graphs; TensorRT engines
    carry the choice they were built with). strict: onnxruntime may not fall back to the CPU
    provider for any node (a CheckFailed names the nodes); per-provider node counts land in
    `model.backend.settings["placement"]`.
    check_values: float images outside their range (the bundle's data range unless the manifest gives
    an image its own) are an InputError, and so are outputs of encode/decode/sample/... that come back
    NaN or Inf; False gives the model's raw behaviour. Class labels are always checked (integers in
    [0, classes)).
    Every file the manifest names must lie inside the bundle folder (always checked). A bundle exported
    with --allow-failing loads with a RuntimeWarning naming the roles whose checks failed.

    With backend='auto' and a tuning table beside the manifest (`bigmodel tune`), each call goes to
    the backend measured fastest for the nearest measured batch size; a table measured on another
    CPU, thread count, engine version or graph is ignored with a RuntimeWarning.

    >>> model = load("runs/vae/bundle", device="cpu", threads=2)
    """
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise InputError(f"load() expects a bundle folder as a str or os.PathLike path; got {type(path).__name__} "
                         f"{path!r:.80}")
    path = Path(path)
    manifest = read_manifest(path)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer or None; got {threads!r}")
    check_threads(threads, "threads")  # and at most a few per core: a million threads only hangs
    try:  # (no inner function: the RuntimeWarnings below name the caller's line)
        check_containment(path, manifest)
        from bigmodel.runtime.backends import parse_device

        _, gpu = parse_device(device, device_id)
        default_form = True  # the tuning table's `auto` picks are for the default form only
        if precision == "fastest":
            fastest, applies = _fastest_backend(path, manifest, backend, device, threads, gpu, tf32, verify)
            if fastest is not None:
                return Model(path, manifest, fastest, check_values=check_values)
            precision, default_form = None, applies  # a table that does not apply has been warned about once
        if precision is not None and precision in manifest.forms and backend != "tensorrt":
            manifest, precision, default_form = manifest.form(precision), None, False
        elif precision is not None and precision != manifest.precision and not manifest.engines:
            manifest.form(precision)  # raises: names the precisions the bundle carries
        if verify:
            verify_files(path, manifest)
        warn_failed_verification(path, manifest)
        if backend == "auto" and default_form:
            tuned = _tuned_backend(path, manifest, device, threads, gpu, tf32)
            if tuned is not None:
                return Model(path, manifest, tuned, check_values=check_values)
        name = None
        try:
            name = resolve_backend(backend, device, manifest, device_id)
            if name == "tensorrt":
                if not manifest.engines:
                    from bigmodel.runtime.engines import NO_ENGINES

                    raise BundleError(NO_ENGINES.format(path=path))
                if verify:
                    verify_files(path, manifest, engines=True, roles=False)
            impl = _make_backend(path, manifest, name, threads, precision, gpu, tf32, strict)
        except BackendUnavailable as e:
            if name == "ort-cpu":
                raise
            if not fallback:
                raise BackendUnavailable(f"{e} (pass fallback=True to run on ort-cpu instead)") from e
            warnings.warn(f"{e}; running on ort-cpu instead (fallback=True)", RuntimeWarning, stacklevel=2)
            impl = _make_backend(path, manifest, "ort-cpu", threads, None)
        return Model(path, manifest, impl, check_values=check_values)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        # the arguments were checked above: what is left is a manifest whose values are not what it promises
        raise BundleError(f"bundle {path}: its manifest.json does not describe a bundle the runtime can load "
                          f"({type(e).__name__}: {str(e)[:200]})") from e
