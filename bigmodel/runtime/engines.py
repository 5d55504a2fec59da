"""TensorRT engines as the manifest records them: selection, compatibility preflight, profiles, dtypes.

Pure functions (standard library + numpy): everything about engines that can be decided without a
GPU lives here and is covered by CPU tests; `backends/tensorrt.py` only makes the TensorRT and
CUDA calls. A serialized engine runs only with the TensorRT major.minor that built it and on a GPU
of the same compute capability, so both are checked *before* anything is deserialised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel.errors import BundleError
from bigmodel.manifest import EngineSpec, Manifest

# TensorRT DataType names (trt.DataType.X.name) -> numpy dtype; others have no numpy equivalent here.
TRT_DTYPES = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}

NO_ENGINES = ("bundle {path} has no TensorRT engines; build them on the target GPU with "
              "`bigmodel export RUN_DIR --engine`, or use backend='ort'")


@dataclass(frozen=True)
class LocalTensorRT:
    """What the engines must match here: TensorRT version and the GPU's compute capability."""

    tensorrt_version: str
    compute_capability: str
    device_name: str = ""


def parse_version(text: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35); a version without digits is a BundleError."""
    parts = re.findall(r"\d+", str(text))
    if not parts:
        raise BundleError(f"cannot read a TensorRT version from {text!r}; expected something like '10.13.0'")
    return tuple(int(p) for p in parts)


def normalize_cc(cc) -> str:
    """A compute capability in any usual spelling -> 'major.minor': '9.0', '90', 'sm_90', (9, 0), 8.6."""
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip().lower().removeprefix("sm_").removeprefix("sm")
    m = re.fullmatch(r"(\d+)\.(\d+)", text)
    if m:
        return f"{int(m[1])}.{int(m[2])}"
    m = re.fullmatch(r"(\d+)(\d)", text)  # '90', '86', '100', '120'
    if m:
        return f"{int(m[1])}.{int(m[2])}"
    raise BundleError(f"cannot read a compute capability from {cc!r}; expected something like '9.0' or 'sm_90'")


def tensorrt_version_fits(built: str, here: str, version_compatible: bool = False) -> bool:
    """Whether an engine serialised by TensorRT `built` deserialises under TensorRT `here`.

    TensorRT's rule: a plan file runs only on the TensorRT version that built it, patch and build
    number included; one built with BuilderFlag.VERSION_COMPATIBLE also runs on later versions of
    the same major (its lean runtime travels inside the plan).
    """
    b, h = parse_version(built), parse_version(here)
    width = max(len(b), len(h))
    b, h = b + (0,) * (width - len(b)), h + (0,) * (width - len(h))
    if version_compatible:
        return b[0] == h[0] and h >= b
    return b == h


def check_engine_compat(spec: EngineSpec, local_trt_version: str, local_cc) -> None:
    """None if `spec` can be deserialised here, else a BundleError naming what was built and what is here.

    The TensorRT version must match exactly (see `tensorrt_version_fits`) and the compute
    capability must be the same (engines are not portable across GPU architectures).
    """
    built_cc, here_cc = normalize_cc(spec.compute_capability), normalize_cc(local_cc)
    compatible = bool(getattr(spec, "version_compatible", False))
    problems = []
    if not tensorrt_version_fits(spec.tensorrt_version, local_trt_version, compatible):
        rule = ("a version-compatible engine runs on the same or a later TensorRT of its major version"
                if compatible else "an engine runs only on the exact TensorRT version that built it")
        problems.append(f"TensorRT {spec.tensorrt_version} (here: {local_trt_version}; {rule})")
    if built_cc != here_cc:
        gpu = f" ({spec.device_name})" if spec.device_name else ""
        problems.append(f"compute capability {built_cc}{gpu} (here: {here_cc})")
    if problems:
        raise BundleError(f"engine {spec.file} for role {spec.role} was built for " + " and ".join(problems)
                          + "; rebuild it on this machine with `bigmodel export RUN_DIR --engine`, "
                            "or use backend='ort'")


def check_profile(spec: EngineSpec) -> tuple[int, int, int]:
    """The engine's (min, opt, max) batch, or BundleError if the manifest's profile is not 1 <= min <= opt <= max."""
    try:
        lo, opt, hi = (int(spec.profile[k]) for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"engine {spec.file}: profile must have integer min, opt and max batch; "
                          f"got {spec.profile!r}") from e
    if not 1 <= lo <= opt <= hi:
        raise BundleError(f"engine {spec.file}: profile must satisfy 1 <= min <= opt <= max; got {spec.profile!r}")
    return lo, opt, hi


def select_engines(manifest: Manifest, local_trt_version: str, local_cc, precision: str | None = None,
                   path: str | Path = "bundle") -> dict[str, EngineSpec]:
    """One engine per role of the bundle, compatible with this machine, or BundleError.

    Candidates for a role are its engines of `precision` (default: the bundle's precision, or any
    precision when the bundle has none of that). Among them, the first compatible one wins; when
    none is, the error names what each was built for.
    """
    if not manifest.engines:
        raise BundleError(NO_ENGINES.format(path=path))
    chosen: dict[str, EngineSpec] = {}
    for role in manifest.roles:
        mine = [e for e in manifest.engines if e.role == role]
        if not mine:
            have = sorted({e.role for e in manifest.engines})
            raise BundleError(f"bundle {path} has TensorRT engines for {', '.join(have)} but none for role {role}; "
                              "re-export with `bigmodel export RUN_DIR --engine`")
        want = precision or manifest.precision
        candidates = [e for e in mine if e.precision == want]
        if not candidates:
            if precision is not None:
                raise BundleError(f"role {role} has no {precision} engine; it has "
                                  f"{', '.join(sorted({e.precision for e in mine}))}")
            candidates = mine
        errors = []
        for e in candidates:
            try:
                check_engine_compat(e, local_trt_version, local_cc)
            except BundleError as err:
                errors.append(str(err))
                continue
            check_profile(e)
            chosen[role] = e
            break
        else:
            raise BundleError(errors[0] if len(errors) == 1 else
                              f"no engine for role {role} fits this machine: " + "; ".join(errors))
    return chosen


def engine_dtype(trt_name: str, tensor: str = "") -> np.dtype:
    """numpy dtype of a TensorRT DataType name ('FLOAT', 'HALF', ...); BundleError for types numpy lacks."""
    try:
        return TRT_DTYPES[str(trt_name).rsplit(".", 1)[-1].upper()]
    except KeyError:
        raise BundleError(f"engine tensor {tensor!r} has TensorRT type {trt_name}, which the runtime cannot feed "
                          f"from numpy; expected one of {', '.join(TRT_DTYPES)}") from None


def buffer_bytes(shape, dtype: np.dtype, max_batch: int) -> int:
    """Bytes for one I/O tensor at the profile's largest batch; -1 (dynamic) axes become `max_batch`."""
    dims = [max_batch if int(d) < 0 else int(d) for d in shape]
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize


def split_batches(n: int, lo: int = 1, hi: int | None = None) -> list[tuple[int, int, int]]:
    """Chunks (start, stop, pad) covering n samples with lo <= stop - start + pad <= hi.

    A chunk smaller than the profile's min batch is padded (with `pad` rows) up to `lo`.
    """
    if hi is None or hi >= n:
        hi = n
    out = []
    for start in range(0, n, hi):
        stop = min(n, start + hi)
        out.append((start, stop, max(0, lo - (stop - start))))
    return out
