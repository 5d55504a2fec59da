"""What a role module takes and gives: declarations, the four family presets, and their resolution.

A user hands over role modules (`{"encoder": enc, "decoder": dec}`) and says what each input and
output is (`IO`: name, kind, shape without the batch axis, dtype, an image's range, a label's class
count), or names a family preset that says it for the usual shapes. `resolve_roles` runs every
module once on example inputs to fill the shapes left open and to check the declarations against
what the module really returns, before anything is exported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bigmodel.errors import InputError
from bigmodel.manifest import BATCH, KINDS, LatentSpec, TensorSpec

FLOAT, LABEL_DTYPE = "float32", "int64"


@dataclass(frozen=True)
class IO:
    """One input or output of a role.

    kind: image | latent | logit | label | stat | image_logit | tensor. shape: without the batch
    axis (None: images take the data's shape, latents the latent shape, outputs what the module
    returns). range: an image's value range (None: the data's). classes: a label's class count.
    """

    name: str
    kind: str = "tensor"
    shape: tuple[int, ...] | None = None
    dtype: str = FLOAT
    range: tuple[float, float] | None = None
    classes: int | None = None


@dataclass
class Role:
    """A role's module (an nn.Module or a callable over tensors) and its declared inputs and outputs.

    >>> Role(decoder, inputs=[IO("z", "latent")], outputs=[IO("x", "image")])
    """

    module: nn.Module | Callable
    inputs: Sequence[IO]
    outputs: Sequence[IO]


@dataclass
class Resolved:
    """A role ready to export: a module returning a tuple in the declared output order, full specs."""

    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str = ""  # where the user's module is defined (for messages)


_IMAGE = IO("x", "image")
_CODE = IO("z", "latent")
# family -> role -> (inputs, outputs): the same names and kinds bigmodel's own families export
PRESETS: dict[str, dict[str, tuple[tuple[IO, ...], tuple[IO, ...]]]] = {
    "vae": {"encoder": ((_IMAGE,), (IO("mu", "latent"), IO("logvar", "stat"))), "decoder": ((_CODE,), (_IMAGE,))},
    "ae": {"encoder": ((_IMAGE,), (_CODE,)), "decoder": ((_CODE,), (_IMAGE,))},
    "gan": {"generator": ((_CODE,), (_IMAGE,)), "discriminator": ((_IMAGE,), (IO("logit", "logit"),))},
    "aae": {"encoder": ((_IMAGE,), (_CODE,)), "decoder": ((_CODE,), (_IMAGE,)),
            "discriminator": ((_CODE,), (IO("logit", "logit"),))},
}
# conditional presets: the roles that also take the class labels
CONDITIONED = {"vae": ("encoder", "decoder"), "ae": ("encoder", "decoder"), "gan": ("generator", "discriminator"),
               "aae": ("encoder", "decoder")}
IMAGE_MAKERS = ("decoder", "generator")


def preset_roles(family: str, modules: Mapping[str, object], classes: int | None = None,
                 image_logits: bool = False) -> dict[str, Role]:
    """The family preset's declarations for `modules` (role -> module).

    classes: the models are class-conditional; the conditioned roles take a `labels` input (int64,
    values 0..classes-1) after their first. image_logits: the decoder/generator returns Bernoulli
    logits; the bundle applies the sigmoid and also gives the logits (for likelihoods).
    """
    if family not in PRESETS:
        raise InputError(f"family must be one of {', '.join(PRESETS)} (or pass Role declarations); got {family!r}")
    want = PRESETS[family]
    if set(modules) != set(want):
        raise InputError(f"a {family} takes the roles {', '.join(want)}; got {', '.join(modules) or 'none'}")
    roles = {}
    for name, (inputs, outputs) in want.items():
        module = modules[name]
        if isinstance(module, Role):
            raise InputError(f"{name}: with family={family!r} pass the module itself; the preset declares it")
        if classes is not None and name in CONDITIONED[family]:
            inputs = (*inputs, IO("labels", "label", (), LABEL_DTYPE, classes=classes))
        if image_logits and name in IMAGE_MAKERS:
            module, outputs = _SigmoidOf(module), (*outputs, IO("logits", "image_logit"))
        roles[name] = Role(module, inputs, outputs)
    return roles


class _SigmoidOf(nn.Module):
    """A logits-returning image maker as (sigmoid(logits), logits), like bigmodel's own decoders."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args):
        logits = self.net(*args)
        return torch.sigmoid(logits), logits


class Outputs(nn.Module):
    """The user's module with its outputs as a tuple in the declared order.

    A dict or a `ModelOutput` (pythae, transformers) is read by the declared names; a tuple or list
    by position. torch.export and onnxruntime then see plain tensors.
    """

    def __init__(self, module, names: Sequence[str]):
        super().__init__()
        self.inner = module
        self.names = tuple(names)

    def forward(self, *args):
        out = self.inner(*args)
        if isinstance(out, Mapping):
            return tuple(out[n] for n in self.names)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def resolve_roles(roles: Mapping[str, Role], image_shape: tuple[int, ...], value_range: tuple[float, float],
                  examples: np.ndarray, latent_shape: tuple[int, ...] | None) -> tuple[dict[str, Resolved],
                                                                                     tuple[int, ...]]:
    """Every role's full input/output specs and its tuple-returning module, checked on example inputs.

    The latent shape is `latent_shape`, else what the encoder's first latent output has on the
    examples. Returns (roles, latent shape).
    """
    if not roles:
        raise InputError("no roles given: expected e.g. {'encoder': enc, 'decoder': dec}")
    for name, role in roles.items():
        _check_declared(name, role)
    latent = tuple(int(s) for s in latent_shape) if latent_shape is not None else None
    declared = [io.shape for r in roles.values() for io in (*r.inputs, *r.outputs) if io.kind == "latent" and io.shape]
    if latent is None and declared:
        latent = tuple(int(s) for s in declared[0])
    order = sorted(roles, key=lambda r: 0 if any(o.kind == "latent" for o in roles[r].outputs) else 1)
    resolved: dict[str, Resolved] = {}
    for name in order:  # encoders first: their codes give the latent shape
        role = roles[name]
        inputs = [_input_spec(name, io, image_shape, value_range, latent) for io in role.inputs]
        module = Outputs(role.module, [o.name for o in role.outputs])
        module.eval()
        got = _run_once(name, module, inputs, examples, len(role.outputs))
        outputs = []
        for io, t in zip(role.outputs, got, strict=True):
            shape = tuple(t.shape[1:])
            if io.shape is not None and tuple(io.shape) != shape:
                raise InputError(f"{name}: output {io.name!r} was declared {tuple(io.shape)} but the module returns "
                                 f"{shape} (without the batch axis)")
            if io.kind == "image" and shape != tuple(image_shape):
                raise InputError(f"{name}: output {io.name!r} is an image of shape {shape}; the data's images are "
                                 f"{tuple(image_shape)}")
            if io.kind == "latent" and latent is None:
                latent = shape
            rng = list(io.range) if io.range is not None and tuple(io.range) != tuple(value_range) else None
            outputs.append(TensorSpec(io.name, FLOAT, [BATCH, *shape], io.kind, rng, io.classes))
        resolved[name] = Resolved(module, inputs, outputs, _where(role.module))
    if latent is None:
        raise InputError("the latent shape is unknown: no role outputs a latent; pass latent=SIZE or latent=(C, H, W)")
    for name, r in resolved.items():  # roles resolved before the latent shape was known
        for t in r.inputs:
            if t.kind == "latent" and tuple(t.shape[1:]) != latent:
                raise InputError(f"{name}: input {t.name!r} takes codes {tuple(t.shape[1:])}, but the latent shape is "
                                 f"{latent}")
    return {n: resolved[n] for n in roles}, latent


def latent_spec(shape: tuple[int, ...], prior: str = "normal", params: dict | None = None) -> LatentSpec:
    """The manifest's latent entry for codes of `shape` (one axis: `shape` stays None, as before)."""
    dim = math.prod(shape)
    return LatentSpec(dim=dim, prior=prior, params=params or {}, shape=list(shape) if len(shape) > 1 else None)


def _check_declared(name: str, role: Role) -> None:
    if not isinstance(role, Role):
        raise InputError(f"{name}: expected a Role(module, inputs, outputs) or a family preset; got "
                         f"{type(role).__name__}")
    if not callable(role.module):
        raise InputError(f"{name}: expected an nn.Module or a callable over tensors; got {type(role.module).__name__}")
    for what, ios in (("inputs", role.inputs), ("outputs", role.outputs)):
        if not ios:
            raise InputError(f"{name}: declare at least one of its {what}")
        names = [io.name for io in ios]
        if len(set(names)) != len(names):
            raise InputError(f"{name}: {what} need distinct names; got {names}")
        for io in ios:
            if io.kind not in KINDS:
                raise InputError(f"{name}: {io.name!r} has kind {io.kind!r}; expected one of {', '.join(KINDS)}")
            if io.kind == "label" and (not isinstance(io.classes, int) or io.classes < 1):
                raise InputError(f"{name}: label {io.name!r} needs classes=N (values 0..N-1); got {io.classes!r}")
            if io.range is not None and not (len(io.range) == 2 and float(io.range[0]) < float(io.range[1])):
                raise InputError(f"{name}: {io.name!r} range must be (low, high) with low < high; got {io.range!r}")


def _input_spec(role: str, io: IO, image_shape, value_range, latent) -> TensorSpec:
    if io.kind == "image":
        shape = tuple(io.shape) if io.shape is not None else tuple(image_shape)
        rng = list(io.range) if io.range is not None and tuple(io.range) != tuple(value_range) else None
        return TensorSpec(io.name, FLOAT, [BATCH, *shape], "image", rng)
    if io.kind == "label":
        return TensorSpec(io.name, LABEL_DTYPE, [BATCH], "label", None, io.classes)
    if io.kind == "latent":
        shape = tuple(io.shape) if io.shape is not None else latent
        if shape is None:
            raise InputError(f"{role}: the shape of its latent input {io.name!r} is unknown (no encoder to learn it "
                             "from); pass latent=SIZE or latent=(C, H, W)")
        return TensorSpec(io.name, FLOAT, [BATCH, *shape], "latent")
    if io.shape is None:
        raise InputError(f"{role}: input {io.name!r} ({io.kind}) needs shape=(...) without the batch axis")
    return TensorSpec(io.name, io.dtype, [BATCH, *io.shape], io.kind)


def example_feeds(inputs: list[TensorSpec], images: np.ndarray, n: int, seed: int = 0) -> list[torch.Tensor]:
    """`n` example inputs per declared input, in order: real images, normal codes, seeded labels."""
    rng = np.random.default_rng(seed)
    feeds = []
    for t in inputs:
        tail = tuple(int(s) for s in t.shape[1:])
        if t.kind == "image":
            lo, hi = t.range or (None, None)
            x = images[:n] if lo is None else lo + (hi - lo) * rng.random((n, *tail), dtype=np.float32)
            feeds.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        elif t.kind == "label":
            feeds.append(torch.from_numpy(rng.integers(0, t.classes, size=n, dtype=np.int64)))
        else:
            feeds.append(torch.from_numpy(rng.standard_normal((n, *tail), dtype=np.float32).astype(t.dtype)))
    return feeds


def _run_once(name: str, module: Outputs, inputs: list[TensorSpec], examples: np.ndarray, n_out: int):
    """The module's outputs on two example inputs, or an error saying what it returned instead."""
    feeds = example_feeds(inputs, examples, 2)
    try:
        with torch.no_grad():
            raw = module.inner(*feeds)
            got = module(*feeds)
    except KeyError as e:
        keys = ", ".join(map(str, raw.keys())) if isinstance(raw, Mapping) else ""
        raise InputError(f"{name}: returns a mapping without {e}; it has {keys}: name the outputs by its keys") from e
    except Exception as e:
        shapes = ", ".join(f"{t.name} {tuple(t.shape)}" for t in inputs)
        raise InputError(f"{name}: calling it on example inputs ({shapes}, batch axis first) failed: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from e
    bad = [type(t).__name__ for t in got if not isinstance(t, torch.Tensor)]
    if bad:
        raise InputError(f"{name}: returns {', '.join(bad)} where tensors were expected; return tensors (a tensor, a "
                         "tuple of them, or a dict / ModelOutput of them)")
    if len(got) != n_out:
        raise InputError(f"{name}: declared {n_out} output(s) but the module returns {len(got)}")
    for t in got:
        if t.dtype.is_floating_point is False or t.shape[:1] != (2,):
            raise InputError(f"{name}: every output must be a float tensor with the batch axis first; got "
                             f"{t.dtype} {tuple(t.shape)} for a batch of 2")
    return [t.float() for t in got]


def _where(module) -> str:
    """`file:line` of the module's class (or function), for messages."""
    import inspect

    target = module if inspect.isfunction(module) else type(module)
    try:
        file = inspect.getsourcefile(target) or ""
        line = inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return ""
    from bigmodel.export.program import is_user_file

    return f"{file}:{line}" if is_user_file(file) else ""
