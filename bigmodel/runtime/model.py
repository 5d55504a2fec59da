"""`Model`: the methods an application calls, on top of any backend; numpy in, numpy out.

Everything that depends only on the bundle (input contracts, output names, which role serves
which method, batch limits, the prior) is worked out once in `__init__`; a call does only the
input check and the backend run. A Model holds no per-call state, so many threads may share one.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from bigmodel.errors import BundleError, InputError
from bigmodel.limits import COPIES_HELD, check_items, sample_bytes
from bigmodel.manifest import Manifest
from bigmodel.priors import Prior, draw_labels, slerp
from bigmodel.runtime.checks import ZERO_VIEWS, Input, check_finite_output, check_sample_request
from bigmodel.runtime.labels import labelled_call, main_inputs, refusal

IMAGE_ROLES = ("decoder", "generator")
# method -> roles it needs (beyond the image role every family has)
METHOD_ROLES = {
    "encode": ("encoder",),
    "decode": (),
    "reconstruct": ("encoder",),
    "sample": (),
    "interpolate": (),
    "discriminate": ("discriminator",),
    "run": (),
}
F32 = np.dtype(np.float32)


def _declined(_x) -> None:
    """The gate of a role without a staged fast path: always the general path."""
    return None


class Model:
    """A loaded bundle. Use `bigmodel.runtime.load` to make one.

    >>> m = load("runs/vae/bundle")
    >>> m.sample(4, seed=0).shape
    (4, 1, 28, 28)
    """

    def __init__(self, path: Path, manifest: Manifest, backend, check_values: bool = True):
        self.path = Path(path)
        self._check_values = check_values
        self._manifest = manifest
        self.backend = backend
        roles = manifest.roles
        image = [r for r in IMAGE_ROLES if r in roles]
        if not image:
            raise BundleError(f"bundle {path} has no decoder or generator role (it has {', '.join(roles)})")
        self._image_role = image[0]
        self._prior = Prior(manifest.latent)
        self._inputs: dict[str, list[Input]] = {
            role: [Input(t, manifest.data, f"{role} input {t.name!r}", check_values) for t in spec.inputs]
            for role, spec in roles.items()}
        self._first = {role: ins[0] for role, ins in self._inputs.items() if len(ins) == 1}
        self._outputs = {role: [t.name for t in spec.outputs] for role, spec in roles.items()}
        self._input_names = {role: {t.name for t in spec.inputs} for role, spec in roles.items()}
        # role -> (its one image/code input, its class-label input or None): what the methods feed; roles with
        # other inputs besides (a BiGAN discriminator's image and code) are for `run` only
        self._main = {role: m for role, ins in self._inputs.items() if (m := main_inputs(ins)) is not None}
        latent = self._main.get(self._image_role, (None,))[0]
        code_shape = manifest.latent.code_shape
        if latent is not None and latent.tail != code_shape:
            raise BundleError(f"{self._image_role} of bundle {path} must take codes of shape "
                              f"(batch, {', '.join(map(str, code_shape))}) (the manifest's latent); the manifest says "
                              f"{roles[self._image_role].inputs}")
        label = self._main.get(self._image_role, (None, None))[1]
        self._classes = label.classes if label is not None else None
        self._conditional = label is not None
        self._offers = tuple(m for m, need in METHOD_ROLES.items() if all(r in roles for r in need))
        batch_range = getattr(backend, "batch_range", None)
        self._limits = {role: batch_range(role) if batch_range else None for role in roles}
        self._run_backend = backend.run
        runner = getattr(backend, "runner", None)
        # role -> checked feeds -> every output: the backend's compiled runner where no batch limits apply
        self._runs = {role: runner(role) if runner and self._limits[role] is None else
                      functools.partial(backend.run, role) for role in roles}
        # one closure per single-input role: input check -> backend -> float32 first output, nothing looked up;
        # a role that needs more than one input gets one that says what to pass instead
        self._single_calls = {role: self._compile(role) if role in self._first else self._needs_more(role)
                              for role in roles}
        self._decode = self._single_calls[self._image_role]
        self._extra_calls: dict[tuple, object] = {}  # (role, output names) -> compiled call, made at first use
        # the backend's staged fast path, where it has one: x -> [outputs] or None (then the calls above)
        self._fast_first = {role: g for role in self._first
                            if (g := self._gate(role, self._outputs[role][:1])) is not None}
        self._fast_decode = self._fast_first.get(self._image_role, _declined)
        self._fast_run = {role: (self._first[role].name, g) for role in self._first
                          if (g := self._gate(role, self._outputs[role])) is not None}

    # -- description ----------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self._manifest.roles)

    @property
    def latent_dim(self) -> int:
        return self._manifest.latent.dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One code's shape: (latent_dim,), or e.g. (100, 1, 1) for a DCGAN generator."""
        return self._manifest.latent.code_shape

    @property
    def classes(self) -> int | None:
        """A conditional bundle's number of classes (labels 0 .. classes-1); None when it takes no labels."""
        return self._classes

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return tuple(self._manifest.data.shape)

    @property
    def family(self) -> str:
        return self._manifest.family

    @property
    def offers(self) -> tuple[str, ...]:
        """The methods this bundle supports (a GAN has no encode, a VAE no discriminate)."""
        return self._offers

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        m = self._manifest
        return f"Model({m.family}/{m.arch}, roles={list(self.roles)}, {m.precision}, backend={self.backend_name})"

    def close(self) -> None:
        """Release the backend's sessions or GPU buffers (also done when the Model is collected)."""
        close = getattr(self.backend, "close", None)
        if close:
            close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw access -----------------------------------------------------------------------------
    def run(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one role graph on named inputs -> {output name: array}, checked, large batches split.

        >>> m.run("decoder", {"z": np.zeros((2, 20), np.float32)})["x"].shape
        (2, 1, 28, 28)
        """
        fast = self._fast_run.get(role)
        if fast is not None and type(feeds) is dict and len(feeds) == 1:
            outs = fast[1](feeds.get(fast[0]))  # None unless the one feed is a common, finite call
            if outs is not None:
                return dict(zip(self._outputs[role], outs, strict=True))
        inputs = self._inputs.get(role)
        if inputs is None:
            raise InputError(f"a {self.family} bundle has no role {role!r}; it has: {', '.join(self.roles)}")
        if not isinstance(feeds, dict) or feeds.keys() != self._input_names[role]:
            got = sorted(feeds) if isinstance(feeds, dict) else type(feeds).__name__
            raise InputError(f"{role}: expected feeds {{{', '.join(sorted(self._input_names[role]))}}}; got {got}")
        arrays = {i.name: i.prepare(feeds[i.name]) for i in inputs}
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) > 1:
            raise InputError(f"{role}: every input needs the same batch size; got {sorted(sizes)}")
        return dict(zip(self._outputs[role], self._execute(role, arrays), strict=True))

    def _execute(self, role: str, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        limits = self._limits[role]
        if limits is None:
            return self._runs[role](arrays)
        n = len(next(iter(arrays.values())))
        lo, hi = limits
        if lo <= n <= hi:
            return self._runs[role](arrays)
        from bigmodel.runtime.engines import split_batches

        parts = []
        for start, stop, pad in split_batches(n, lo, hi):
            chunk = {k: v[start:stop] for k, v in arrays.items()}
            if pad:
                chunk = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()}
            outs = self._run_backend(role, chunk)
            parts.append([o[: stop - start] for o in outs] if pad else outs)
        return parts[0] if len(parts) == 1 else [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]

    def _compile(self, role: str, names: tuple[str, ...] | None = None):
        """`call(x)` -> the first output of `role` on x as float32, with the per-call path cut to the bone.

        With `names`, `call(x)` returns a tuple of those outputs instead. Only the outputs asked for
        are fetched from the backend (a decoder's logits cost a plain `decode` nothing).
        """
        inp = self._first[role]
        name, prepare = inp.name, inp.prepare
        wanted = list(names or self._outputs[role][:1])
        runner = getattr(self.backend, "runner", None)
        if self._limits[role] is None and runner is not None:
            run, pick = runner(role, wanted), list(range(len(wanted)))
        else:  # batch limits to honour (or a backend without runner): the general path
            run, pick = functools.partial(self._execute, role), [self._outputs[role].index(n) for n in wanted]

        # Outputs are checked where the inputs are not bounded: codes (a huge code overflows the decoder to
        # NaN). Images are range-checked on the way in, which keeps encode's per-call cost to one min/max.
        check = self._check_values and inp.lo is None

        def as_f32(out: np.ndarray) -> np.ndarray:
            out = out if out.dtype == F32 else out.astype(F32)
            return check_finite_output(out, f"{role} output") if check else out

        if names is not None:
            def call_many(x) -> tuple[np.ndarray, ...]:
                outs = run({name: prepare(x)})
                return tuple(as_f32(outs[i]) for i in pick)

            return call_many
        first = pick[0]
        if not check:
            def call(x) -> np.ndarray:
                out = run({name: prepare(x)})[first]
                return out if out.dtype == F32 else out.astype(F32)

            return call
        what = f"{role} output {wanted[0]!r}"
        zeros_for, isfinite, vdot = ZERO_VIEWS.get, math.isfinite, np.vdot

        def checked_call(x) -> np.ndarray:
            out = run({name: prepare(x)})[first]
            if out.dtype is F32:  # check_finite_output's common case inlined: one vdot with the zeros of its size
                zeros = zeros_for(out.size)
                if zeros is not None and isfinite(vdot(out, zeros)):
                    return out
            else:
                out = out.astype(F32)
            return check_finite_output(out, what)

        return checked_call

    def _gate(self, role: str, names: list[str]):
        """`gate(x)` -> [the outputs `names` of `role`] through the backend's staged fast path, or None.

        The fast path takes only the common call: a C-contiguous float32 batch of the graph's shape
        (checked here, constants bound at load), on a backend with `staged_runner` and no batch limits,
        for inputs without a range to check (codes; images only with check_values=False). The staged
        run checks the input and every output for NaN/Inf in one pass and answers None when it did not
        run or a value was not finite; the caller then takes its general path, which checks the input
        before running, explains what is wrong, and checks outputs as it always does. Returns None
        (no gate) where the fast path does not apply.
        """
        inp = self._first[role]
        staged = getattr(self.backend, "staged_runner", None)
        if staged is None or self._limits[role] is not None or not inp.f32 or inp.lo is not None:
            return None
        fast = staged(role, list(names))
        if fast is None:
            return None
        ndarray, rank, tail = np.ndarray, inp.rank, inp.tail

        def gate(x) -> list[np.ndarray] | None:
            if type(x) is ndarray and x.dtype is F32:
                shape = x.shape
                if len(shape) == rank and shape[1:] == tail and shape[0] and x.flags.c_contiguous:
                    return fast(x)
            return None

        return gate

    def _extra_call(self, role: str, names: tuple[str, ...], what: str):
        """The compiled call for `names` of `role`, made at first use; InputError if the graph lacks them."""
        key = (role, names)
        call = self._extra_calls.get(key)
        if call is None:
            self._check_outputs(role, names, what)
            if role not in self._first:
                return self._single_calls[role]  # it raises, saying which inputs the role needs
            call = self._compile(role, names)
            gate = self._gate(role, list(names))
            if gate is not None:
                general = call

                def call(x, gate=gate, general=general) -> tuple[np.ndarray, ...]:
                    outs = gate(x)
                    return tuple(outs) if outs is not None else general(x)

            call = self._extra_calls.setdefault(key, call)
        return call

    def _check_outputs(self, role: str, names: tuple[str, ...], what: str) -> None:
        missing = [n for n in names if n not in self._outputs[role]]
        if missing:
            raise InputError(f"this {self.family} bundle's {role} has no output {', '.join(missing)} for {what} "
                             f"(its outputs: {', '.join(self._outputs[role])}); re-export it with this bigmodel")

    def _needs_more(self, role: str):
        """The single-input call of a role that takes more than one input: it raises, naming what to pass."""
        return refusal(role, self._inputs[role], self._main.get(role))

    def _labelled(self, role: str, names: tuple[str, ...] | None, what: str):
        """`call(x, labels)` -> the outputs `names` (default: the first) of a role fed its main input and labels.

        labels: one class id for every sample, or one per sample (batch,). Made at first use, then cached.
        """
        names = names or tuple(self._outputs[role][:1])
        key = (role, names, "labels")
        call = self._extra_calls.get(key)
        if call is None:
            self._check_outputs(role, names, what)
            main = self._main.get(role)
            if main is None:
                return self._needs_more(role)
            call = labelled_call(role, self._outputs[role], names, *main, functools.partial(self._execute, role),
                                 self._check_values, what)
            call = self._extra_calls.setdefault(key, call)
        return call

    def _single(self, role: str, x) -> np.ndarray:
        """First output of a single-input role on `x`, float32."""
        fast = self._fast_first.get(role)
        outs = fast(x) if fast is not None else None
        return outs[0] if outs is not None else self._single_calls[role](x)

    def _require(self, method: str) -> str:
        if method not in self._offers:
            missing = [r for r in METHOD_ROLES[method] if r not in self._manifest.roles]
            raise InputError(f"a {self.family} bundle cannot {method} (it has no {' or '.join(missing)} role); "
                             f"it offers: {', '.join(self._offers)}")
        return METHOD_ROLES[method][0]

    # -- the methods applications call ----------------------------------------------------------
    def encode(self, x, full: bool = False, labels=None):
        """Images (B, C, H, W) or one (C, H, W), float in the data range or uint8 -> codes (B, latent).

        A VAE gives the mean of q(z|x); with `full=True` it gives (mu, logvar), both (B, latent).
        labels: for an encoder that takes class labels (a conditional VAE): one id, or (B,) ids.
        """
        role = self._require("encode")
        if not full and labels is None:  # the common call first: nothing else looked at
            return self._single(role, x)
        if full and self.family != "vae":
            raise InputError(f"encode(full=True) gives a Gaussian encoder's (mu, logvar); a {self.family} encoder "
                             f"is deterministic: use encode(x)")
        if labels is not None:
            outs = self._labelled(role, ("mu", "logvar") if full else None, "encode")(x, labels)
            return outs if full else outs[0]
        return self._extra_call(role, ("mu", "logvar"), "encode(full=True)")(x)

    def decode(self, z, labels=None, logits: bool = False) -> np.ndarray:
        """Codes (B, *latent_shape) or one code -> images (B, C, H, W) float32 in the data range.

        labels: a conditional model's classes, one id for every code or (B,) ids (required there).
        With `logits=True`: the Bernoulli logits before the final sigmoid instead (for likelihoods).
        """
        if labels is None:
            if not logits:
                outs = self._fast_decode(z)
                return outs[0] if outs is not None else self._decode(z)
            return self._extra_call(self._image_role, ("logits",), "decode(logits=True)")(z)[0]
        return self._labelled(self._image_role, ("logits",) if logits else None, "decode")(z, labels)[0]

    def reconstruct(self, x, labels=None) -> np.ndarray:
        """decode(encode(x)); for a VAE the decoder of the encoder's mean. labels go to each role taking them."""
        role = self._require("reconstruct")
        if labels is None:
            return self.decode(self._single(role, x))
        takes = [r for r in (role, self._image_role) if self._main.get(r, (None, None))[1] is not None]
        if not takes:
            raise InputError(f"reconstruct: neither {role} nor {self._image_role} of this bundle takes labels "
                             f"(it is not conditional); got labels={labels!r:.60}")
        codes = self._labelled(role, None, "reconstruct")(x, labels)[0] if role in takes else self._single(role, x)
        if codes.shape[1:] != self.latent_shape and codes[0].size == self.latent_dim:
            codes = codes.reshape(len(codes), *self.latent_shape)  # an encoder's flat codes, a decoder's shaped ones
        return self.decode(codes, labels=labels if self._image_role in takes else None)

    def sample_latent(self, n: int, seed: int | None = None) -> np.ndarray:
        """n codes from the bundle's prior (normal or mixture), (n, *latent_shape) float32."""
        check_sample_request(n, seed, 4 * (self.latent_dim + int(np.prod(self.data_shape))))
        return self._prior.draw(int(n), seed)

    def sample_labels(self, n: int, seed: int | None = None) -> np.ndarray:
        """The n class ids `sample(n, seed)` uses on a conditional bundle: uniform, (n,) int64, Generator([seed, 1])."""
        check_sample_request(n, seed, 8)
        if not self._conditional:
            raise InputError(f"sample_labels: this bundle's {self._image_role} takes no labels (it is not conditional)")
        if not self._classes:
            raise InputError(f"sample_labels: the manifest gives no class count for {self._image_role}'s labels: "
                             "pass labels= to sample or decode")
        return draw_labels(self._classes, int(n), seed)

    def sample(self, n: int, seed: int | None = None, labels=None) -> np.ndarray:
        """n images decoded from prior codes drawn with numpy's Generator(seed): same seed, same images.

        A conditional model draws from its classes too: labels (one id, or (n,) ids) picks them; without
        labels they are uniform over the classes (`sample_labels(n, seed)`, as a conditional GAN's FID is
        measured), so `sample(n, seed)` still means "n images of the model", reproducibly.
        """
        z = self.sample_latent(n, seed)
        if labels is None and self._conditional:
            labels = self.sample_labels(n, seed)
        return self.decode(z) if labels is None else self.decode(z, labels=labels)

    def interpolate(self, a, b, steps: int = 8, method: str = "linear", labels=None) -> np.ndarray:
        """Decode `steps` codes from code a to code b (each one code, latent_shape) -> (steps, C, H, W).

        method "linear" (any prior) or "slerp" (great circle; for the Gaussian prior). labels: a
        conditional model's class (one id for the whole path, or (steps,) ids).
        """
        if method not in ("linear", "slerp"):
            raise InputError(f"method must be 'linear' or 'slerp'; got {method!r}")
        if method == "slerp" and not self._prior.gaussian:
            raise InputError(f"slerp assumes the zero-centred normal prior; this bundle's prior is "
                             f"{self._prior.kind}: use method='linear'")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise InputError(f"steps must be an integer >= 2; got {steps!r}")
        check_items(steps, "steps", COPIES_HELD * sample_bytes(self._manifest, [self._image_role]), "decoded images",
                    least=2)
        spec = self._main.get(self._image_role, (None,))[0]
        if spec is None:
            self._decode(None)  # raises: the image role takes other inputs besides codes
        ends = []
        for v, name in ((a, "a"), (b, "b")):
            code = spec.prepare(v)
            if len(code) != 1:
                raise InputError(f"interpolate: expected one code for {name}, shape {self.latent_shape}; "
                                 f"got {np.shape(v)}")
            ends.append(code[0].reshape(-1).astype(np.float32))  # flat (dim,): the path is the same in any shape
        t = np.linspace(0.0, 1.0, int(steps), dtype=np.float32)
        if method == "slerp":
            z = slerp(ends[0], ends[1], t)
        else:
            z = (1 - t)[:, None] * ends[0] + t[:, None] * ends[1]
        z = z.astype(np.float32).reshape(int(steps), *self.latent_shape)
        return self.decode(z) if labels is None else self.decode(z, labels=labels)

    def discriminate(self, x, labels=None) -> np.ndarray:
        """Discriminator logits (B, 1): of images (GAN) or codes (AAE); labels for a conditional discriminator."""
        role = self._require("discriminate")
        if labels is None:
            return self._single(role, x)
        return self._labelled(role, None, "discriminate")(x, labels)[0]
