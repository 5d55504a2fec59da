"""`export_modules`: a bundle from the user's own PyTorch modules, trained anywhere.

The same bundle `bigmodel export RUN` gives -- verified fp32/fp16/int8 graphs, engines, a Triton
repository -- plus each role's torch.export program as the PyTorch reference, so `bigmodel parity`,
`bench` and `eval` run later in a process that cannot import the user's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from bigmodel.errors import InputError
from bigmodel.export.bundle import Source, check_destinations, write_bundle
from bigmodel.export.declare import PRESETS, Role, latent_spec, preset_roles, resolve_roles
from bigmodel.export.options import ExportOptions, ExportResult
from bigmodel.manifest import DataSpec
from bigmodel.progress import ProgressFn

EXAMPLES_READ = 4096  # images taken from an array or DataLoader (probes, calibration, an AE's fitted prior)


def export_modules(roles: Mapping[str, object], data, out: str | Path, *, family: str | None = None,
                   value_range: tuple[float, float] = (0.0, 1.0), latent: int | tuple[int, ...] | None = None,
                   classes: int | None = None, image_logits: bool = False, prior: str | None = None,
                   arch: str = "custom", options: ExportOptions | None = None,
                   progress: ProgressFn | None = None) -> ExportResult:
    """Export the user's role modules into a verified bundle at `out`.

    roles: role -> module with `family` ("vae", "ae", "gan", "aae": the preset declares inputs and
    outputs), or role -> `Role(module, inputs=[IO(...)], outputs=[IO(...)])` without it.
    data: example images -- a dataset name or path `bigmodel train` reads (mnist-5k, digits, .npy/.npz,
    an image folder), an array (N, C, H, W) float in `value_range` or uint8, or a DataLoader
    yielding such batches (or (images, labels)). They are the probes of the checks, the int8
    calibration and an AE's fitted prior; arrays travel in the bundle (up to 512) for parity.
    latent: the code shape when no encoder shows it (a GAN: 100 or (100, 1, 1)). classes: class-
    conditional models (the preset adds a `labels` input). image_logits: the decoder/generator
    returns Bernoulli logits. prior: "normal", or "mixture" (fitted to the encoder's codes; the AE
    default). options: precision, int8 mode, engines, Triton, ... as `bigmodel export`.

    >>> export_modules({"encoder": enc, "decoder": dec}, "mnist-5k", "my_vae", family="vae")
    """
    opts = options or ExportOptions()
    out = Path(out)
    opts.out = out
    check_destinations(out, opts)
    lo, hi = _range(value_range)
    if family is not None:
        declared = preset_roles(family, roles, classes, image_logits)
    else:
        if classes is not None or image_logits:
            raise InputError("classes= and image_logits= go with a family preset; with Role declarations declare the "
                             "label input and the outputs yourself")
        declared = dict(roles)
    images, spec, travel = read_examples(data, (lo, hi))
    shape = (latent,) if isinstance(latent, int) else latent
    resolved, code_shape = resolve_roles(declared, spec.shape, (lo, hi), images, shape)
    prior = prior or ("mixture" if family == "ae" else "normal")
    if prior == "mixture":
        spec_latent = _fitted_prior(resolved, images, code_shape, spec.source)
    elif prior == "normal":
        spec_latent = latent_spec(code_shape)
    else:
        raise InputError(f"prior must be 'normal' or 'mixture'; got {prior!r}")
    source = Source(family or "custom", arch, spec, resolved, spec_latent, images, "", images if travel else None)
    return write_bundle(source, out, opts, progress)


def load_factory(spec: str, weights: str | Path | None = None) -> dict:
    """The role modules a factory returns: `FILE.py:NAME` or `package.module:NAME`, weights loaded if given.

    weights: a state dict saved with torch.save -- {role: state_dict}, or one flat dict whose keys
    start with the role ("decoder.net.0.weight") -- read with weights_only=True.
    """
    import importlib
    import importlib.util

    where, sep, name = str(spec).rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise InputError(f"--module: expected FILE.py:FACTORY or package.module:FACTORY; got {spec!r}")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InputError(f"--module: no file {path}")
            loaded = importlib.util.spec_from_file_location(f"bigmodel_user_{path.stem}", path)
            mod = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(mod)
        else:
            mod = importlib.import_module(where)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"--module: importing {where} failed: {type(e).__name__}: {str(e).strip()[:200]}") from e
    factory = getattr(mod, name, None)
    if not callable(factory):
        raise InputError(f"--module: {where} has no function {name!r}")
    roles = factory()
    if not isinstance(roles, Mapping) or not roles:
        raise InputError(f"--module: {spec} must return {{role: module}}; got {type(roles).__name__}")
    if weights is not None:
        _load_weights(dict(roles), Path(weights))
    return dict(roles)


def _load_weights(roles: dict, path: Path) -> None:
    if not path.is_file():
        raise InputError(f"--weights: no file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"--weights: {path} is not a torch.save'd state dict readable with weights_only=True: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}") from e
    if not isinstance(state, Mapping):
        raise InputError(f"--weights: expected a state dict in {path}; got {type(state).__name__}")
    for role, module in roles.items():
        target = module.module if isinstance(module, Role) else module
        part = state.get(role) if isinstance(state.get(role), Mapping) else {
            k[len(role) + 1:]: v for k, v in state.items() if k.startswith(role + ".")}
        if not part:
            raise InputError(f"--weights: {path} holds no weights for {role} (expected {{{role!r}: state_dict}} or "
                             f"keys starting with '{role}.')")
        try:
            target.load_state_dict(part)
        except RuntimeError as e:
            raise InputError(f"--weights: {role}: {str(e).strip().splitlines()[0][:200]}") from e


def read_examples(data, value_range: tuple[float, float]) -> tuple[np.ndarray, DataSpec, bool]:
    """(images (N, C, H, W) float32 in value_range, their DataSpec, whether they must travel in the bundle)."""
    from bigmodel.models.probes import rescale

    lo, hi = value_range
    if isinstance(data, (str, Path)):
        from bigmodel.data import load_data

        d = load_data(str(data))
        spec = DataSpec(d.spec.source, d.spec.shape, (lo, hi), d.spec.scale, d.spec.n_train, d.spec.n_val,
                        d.spec.val_fraction, d.spec.seed)
        return rescale(d.val, (0.0, 1.0), (lo, hi)), spec, False
    if hasattr(data, "__iter__") and not isinstance(data, (np.ndarray, torch.Tensor)):
        data = _from_loader(data)
    x = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if x.ndim != 4 or x.shape[0] < 2:
        raise InputError(f"data: expected images (N, C, H, W) with N >= 2; got shape {x.shape}")
    x = x[:EXAMPLES_READ]
    if x.dtype == np.uint8:
        x = lo + (hi - lo) * (x.astype(np.float32) / 255.0)
        scale = 255.0
    elif x.dtype.kind == "f":
        x = x.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < lo - 1e-3 or x.max() > hi + 1e-3:
            raise InputError(f"data: expected float images within value_range [{lo:g}, {hi:g}]; got values in "
                             f"[{float(np.nanmin(x)):g}, {float(np.nanmax(x)):g}] (pass value_range=(low, high))")
        scale = 1.0
    else:
        raise InputError(f"data: expected float32 or uint8 images; got dtype {x.dtype}")
    spec = DataSpec("examples given to export_modules", tuple(int(s) for s in x.shape[1:]), (lo, hi), scale,
                    0, len(x), 1.0, 0)
    return np.ascontiguousarray(np.clip(x, lo, hi)), spec, True


def _from_loader(loader) -> np.ndarray:
    batches, n = [], 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch["image"] if isinstance(batch, Mapping) else batch
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        batches.append(x)
        n += len(x)
        if n >= EXAMPLES_READ:
            break
    if not batches:
        raise InputError("data: the DataLoader yielded no batches")
    return np.concatenate(batches)


def _range(value_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError) as e:
        raise InputError(f"value_range must be (low, high); got {value_range!r}") from e
    if not lo < hi:
        raise InputError(f"value_range must have low < high; got {value_range!r}")
    return lo, hi


def _fitted_prior(roles, images: np.ndarray, code_shape, source: str):
    """The AE's prior: a Gaussian mixture fitted to the encoder's codes of the example images."""
    from bigmodel.export.declare import example_feeds
    from bigmodel.models.ae import mixture_prior

    enc = roles.get("encoder")
    if enc is None:
        raise InputError("prior='mixture' is fitted to the encoder's codes; this model has no encoder role")
    codes = []
    with torch.no_grad():
        for i in range(0, len(images), 1000):
            part = images[i : i + 1000]
            feeds = example_feeds(enc.inputs, part, len(part))
            codes.append(enc.module(*feeds)[0].float().reshape(len(part), -1).numpy())
    spec = mixture_prior(np.concatenate(codes), f"example images of {source}")
    return latent_spec(code_shape, "mixture", spec.params)


__all__ = ["PRESETS", "Role", "export_modules", "load_factory"]
