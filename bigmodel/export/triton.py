"""A Triton Inference Server model repository from a bundle.

One model per role (`<family>_<role>/config.pbtxt` for the onnxruntime backend and
`<family>_<role>/1/model.onnx`), names, dims and types from the manifest, dynamic batching up to
--max-batch; plus an ensemble `<family>_reconstruct` (encoder -> decoder, the encoder's latent
output feeding the decoder: `mu` for the VAE) for families that have both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bigmodel.errors import ExportError
from bigmodel.manifest import Manifest, TensorSpec

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}
QUEUE_DELAY_US = 100
MODEL_FILE = "model.onnx"


def model_name(manifest: Manifest, role: str) -> str:
    return f"{manifest.family}_{role}"


def _tensor(t: TensorSpec, name: str | None = None) -> str:
    if t.dtype not in TRITON_TYPES:
        raise ExportError(f"Triton: no data type for {t.name} of dtype {t.dtype}; expected one of "
                          f"{', '.join(TRITON_TYPES)}")
    dims = ", ".join(str(d) for d in t.shape[1:])
    return f'  {{\n    name: "{name or t.name}"\n    data_type: {TRITON_TYPES[t.dtype]}\n    dims: [ {dims} ]\n  }}'


def _tensors(key: str, tensors: list[str]) -> str:
    return f"{key} [\n" + ",\n".join(tensors) + "\n]\n"


def preferred_batch_sizes(opt_batch: int, max_batch: int) -> list[int]:
    return sorted({min(opt_batch, max_batch), max_batch})


def model_config(manifest: Manifest, role: str, max_batch: int, opt_batch: int) -> str:
    """config.pbtxt text for one role on the onnxruntime backend."""
    spec = manifest.roles[role]
    preferred = ", ".join(str(b) for b in preferred_batch_sizes(opt_batch, max_batch))
    return (f'name: "{model_name(manifest, role)}"\n'
            'platform: "onnxruntime_onnx"\n'
            f"max_batch_size: {max_batch}\n"
            + _tensors("input", [_tensor(t) for t in spec.inputs])
            + _tensors("output", [_tensor(t) for t in spec.outputs])
            + "dynamic_batching {\n"
            f"  preferred_batch_size: [ {preferred} ]\n"
            f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n"
            "}\n")


def reconstruct_plan(manifest: Manifest) -> tuple[TensorSpec, TensorSpec, TensorSpec, TensorSpec] | None:
    """(encoder image input, encoder latent output, decoder latent input, decoder image output), or None."""
    enc, dec = manifest.roles.get("encoder"), manifest.roles.get("decoder")
    if enc is None or dec is None:
        return None
    x = next((t for t in enc.inputs if t.kind == "image"), None)
    code = next((t for t in enc.outputs if t.kind == "latent"), None)
    z = next((t for t in dec.inputs if t.kind == "latent"), None)
    x_hat = next((t for t in dec.outputs if t.kind == "image"), None)
    if None in (x, code, z, x_hat):
        return None
    return x, code, z, x_hat


def ensemble_config(manifest: Manifest, max_batch: int) -> str | None:
    """config.pbtxt for `<family>_reconstruct` (images -> encoder -> decoder -> images), or None."""
    plan = reconstruct_plan(manifest)
    if plan is None:
        return None
    x, code, z, x_hat = plan
    step = ("    {{\n      model_name: \"{model}\"\n      model_version: -1\n"
            "      input_map {{ key: \"{ik}\" value: \"{iv}\" }}\n"
            "      output_map {{ key: \"{ok}\" value: \"{ov}\" }}\n    }}")
    steps = [step.format(model=model_name(manifest, "encoder"), ik=x.name, iv="images", ok=code.name, ov="codes"),
             step.format(model=model_name(manifest, "decoder"), ik=z.name, iv="codes", ok=x_hat.name,
                         ov="reconstructions")]
    return (f'name: "{manifest.family}_reconstruct"\n'
            'platform: "ensemble"\n'
            f"max_batch_size: {max_batch}\n"
            + _tensors("input", [_tensor(x, "images")])
            + _tensors("output", [_tensor(x_hat, "reconstructions")])
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


def write_repository(bundle: Path, manifest: Manifest, repo: Path, opts) -> list[str]:
    """Write the model repository into the (empty) folder `repo`; returns the model names."""
    names = []
    for role, spec in manifest.roles.items():
        name = model_name(manifest, role)
        version = repo / name / "1"
        version.mkdir(parents=True)
        _link_or_copy(bundle / spec.file, version / MODEL_FILE)
        data = (bundle / spec.file).with_suffix(".onnx.data")
        if data.exists():  # the graph names its weights file; it keeps that name beside model.onnx
            _link_or_copy(data, version / data.name)
        (repo / name / "config.pbtxt").write_text(model_config(manifest, role, opts.max_batch, opts.opt_batch))
        names.append(name)
    ensemble = ensemble_config(manifest, opts.max_batch)
    if ensemble is not None:
        name = f"{manifest.family}_reconstruct"
        (repo / name / "1").mkdir(parents=True)  # Triton wants a version folder, even an empty one
        (repo / name / "config.pbtxt").write_text(ensemble)
        names.append(name)
    return names


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
