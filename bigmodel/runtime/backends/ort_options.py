"""onnxruntime provider options: which providers each `ort-*` backend asks for, and with what settings.

Pure functions of the manifest and the caller's choices (TensorRT batch profile, engine cache, precision,
TF32); no session is created here. `ort.py` builds the sessions from them.
"""

from __future__ import annotations

import os
from pathlib import Path

from bigmodel.manifest import BATCH, Manifest

# backend name -> onnxruntime providers, most preferred first
PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# the batch profile onnxruntime's TensorRT provider builds for when the manifest names none (= export defaults)
DEFAULT_PROFILE = {"min": 1, "opt": 64, "max": 1024}
TF32_ENV = "NVIDIA_TF32_OVERRIDE"  # read by cuBLAS/cuDNN/TensorRT; "0" turns TF32 off for the process


def cache_dir() -> Path:
    """Where onnxruntime's TensorRT provider keeps engines it builds: $BIGMODEL_CACHE or ~/.cache/bigmodel."""
    root = os.environ.get("BIGMODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bigmodel")
    return Path(root)


def role_profile(manifest: Manifest, role: str) -> dict[str, int]:
    """The batch profile for `role`: its engine's in the manifest, else DEFAULT_PROFILE."""
    for e in manifest.engines:
        if e.role == role:
            return {k: int(e.profile[k]) for k in ("min", "opt", "max")}
    return dict(DEFAULT_PROFILE)


def trt_provider_options(manifest: Manifest, role: str, int8_form: str | None = None, tf32: bool = False,
                         device_id: int = 0) -> dict[str, object]:
    """TensorrtExecutionProvider options for one role: engine/timing cache, precision, explicit shape profile.

    Precision comes from the graph, never from a flag that widens it: fp16 bundles are not given
    `trt_fp16_enable` (which would let TensorRT run the fp32 islands the fp16 pass kept in fp16);
    `trt_int8_enable` only for signed symmetric QDQ graphs (`int8_form`), the only int8 TensorRT runs.
    Engines are cached per graph and TF32 choice (TF32 is decided when the engine is built).
    """
    spec = manifest.roles[role]
    profile = role_profile(manifest, role)
    shapes = {}
    for k in ("min", "opt", "max"):
        shapes[k] = ",".join(
            f"{t.name}:" + "x".join(str(profile[k]) if d == BATCH else str(d) for d in t.shape) for t in spec.inputs)
    folder = cache_dir() / "ort-trt" / spec.sha256[:16] / ("tf32" if tf32 else "no-tf32")
    return {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(folder),
        "trt_fp16_enable": False,
        "trt_int8_enable": manifest.precision == "int8" and int8_form == "qdq-int8-symmetric",
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }


def cuda_provider_options(tf32: bool = False, device_id: int = 0) -> dict[str, object]:
    """CUDAExecutionProvider options: the GPU, and TF32 off unless asked for (onnxruntime's default is on)."""
    return {"device_id": device_id, "use_tf32": int(bool(tf32))}


def providers_for(name: str, manifest: Manifest, role: str, *, tf32: bool = False, device_id: int = 0,
                  strict: bool = False, int8_form: str | None = None) -> list[tuple[str, dict[str, object]]]:
    """The (provider, options) list for one role's session. Strict: no CPU provider to fall back to."""
    chain: list[tuple[str, dict[str, object]]] = []
    for p in PROVIDERS[name]:
        if p == "TensorrtExecutionProvider":
            chain.append((p, trt_provider_options(manifest, role, int8_form, tf32, device_id)))
        elif p == "CUDAExecutionProvider":
            chain.append((p, cuda_provider_options(tf32, device_id)))
        elif name == "ort-cpu" or not strict:
            chain.append((p, {}))
    return chain


def tf32_environment(name: str, tf32: bool, environ=os.environ) -> bool:
    """Set NVIDIA_TF32_OVERRIDE=0 for ort-trt without TF32 (its only switch), before any session exists.

    Returns whether TF32 may be used by the sessions created next (the variable is process-wide).
    """
    if name == "ort-trt" and not tf32:
        environ[TF32_ENV] = "0"
    if name == "ort-cpu":
        return False
    if environ.get(TF32_ENV) == "0":
        return False
    return bool(tf32)


def tf32_policy(manifest: Manifest, tf32: bool = False) -> dict[str, str]:
    """What each GPU backend does about TF32 for this bundle (shown by `bigmodel info`, recorded by bench)."""
    state = "on (asked for)" if tf32 else "off"
    engines = sorted({"on (built with BuilderFlag.TF32)" if e.tf32 else "off (BuilderFlag.TF32 cleared at build)"
                      for e in manifest.engines})
    return {"ort-cuda": f"{state}: CUDAExecutionProvider use_tf32={int(tf32)}",
            "ort-trt": f"{state}: " + ("NVIDIA_TF32_OVERRIDE left alone" if tf32
                                        else "NVIDIA_TF32_OVERRIDE=0 set before the first session"),
            "tensorrt": "; ".join(engines) if engines else "no engines"}
