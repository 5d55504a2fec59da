"""The bundle manifest and the data spec: dataclasses <-> JSON, standard library only.

A bundle is self-describing: `manifest.json` names every role graph with its sha256 and the
names, dtypes and shapes of its inputs and outputs ("batch" marks the dynamic axis), the data
spec, the latent prior, precision, opset, versions and any TensorRT engines.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bigmodel.errors import BundleError, InputError
from bigmodel.schema import first_error

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
BATCH = "batch"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")  # JSON Schema of manifest.json, shipped with the package


@dataclass(frozen=True)
class DataSpec:
    """What the model sees: float32 (C, H, W) images in `value_range`, from `source`.

    `scale` maps stored uint8 pixels into that range (x / scale); `val_fraction` and `seed`
    make the train/validation split reproducible.
    """

    source: str
    shape: tuple[int, int, int]
    value_range: tuple[float, float] = (0.0, 1.0)
    scale: float = 255.0
    n_train: int = 0
    n_val: int = 0
    val_fraction: float = 0.1
    seed: int = 0

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        d = dict(d)
        d["shape"] = tuple(int(s) for s in d["shape"])
        d["value_range"] = tuple(float(v) for v in d.get("value_range", (0.0, 1.0)))
        return cls(**d)


@dataclass(frozen=True)
class LatentSpec:
    """The latent space: size and prior ("normal", or "mixture" with its means and std).

    `shape` is the latent input's shape without the batch axis when it is not `(dim,)`: a DCGAN
    generator's `(100, 1, 1)`. `dim` is always the number of values in one code (the product).
    """

    dim: int
    prior: str = "normal"
    params: dict[str, Any] = field(default_factory=dict)
    shape: list[int] | None = None  # None: (dim,)

    @property
    def code_shape(self) -> tuple[int, ...]:
        """One code's shape without the batch axis."""
        return tuple(int(s) for s in self.shape) if self.shape else (self.dim,)


KINDS = ("image", "latent", "logit", "label", "stat", "image_logit", "tensor")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    kind: image | latent | logit | label (integer class ids) | stat (e.g. a VAE's logvar) |
    image_logit (an image's Bernoulli logits) | tensor (anything else).
    `range`: an image's value range when it differs from the bundle's data range (None: `data.value_range`).
    `classes`: a label's number of classes (values 0 .. classes-1; dtype int64).
    """

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64"
    shape: list[int | str]  # "batch" for the dynamic axis
    kind: str = "tensor"
    range: list[float] | None = None
    classes: int | None = None


@dataclass(frozen=True)
class DataFile:
    """A file a role graph reads besides itself: its external weights (`decoder.onnx.data`)."""

    file: str
    sha256: str


@dataclass(frozen=True)
class RoleSpec:
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    data_files: list[DataFile] = field(default_factory=list)  # external data, checked at load like `file`


@dataclass(frozen=True)
class EngineSpec:
    role: str
    file: str
    sha256: str
    tensorrt_version: str
    compute_capability: str
    precision: str
    profile: dict[str, int]  # min, opt, max batch
    device_name: str = ""
    version_compatible: bool = False  # built with BuilderFlag.VERSION_COMPATIBLE (runs on later TensorRT of its major)
    tf32: bool = False  # fp32 layers allowed to use TF32 (the default build clears it)


@dataclass(frozen=True)
class FormRole:
    """One role's graph in another verified precision (`Manifest.forms`)."""

    file: str
    sha256: str
    data_files: list[DataFile] = field(default_factory=list)


@dataclass(frozen=True)
class FormSpec:
    """Another verified precision of the bundle: every role's graph, and what its verification measured."""

    roles: dict[str, FormRole]
    quality: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)


FORM_PRECISIONS = ("fp32", "fp16", "int8", "bf16")

REFERENCE_KINDS = ("checkpoint", "torch.export", "none")


@dataclass(frozen=True)
class ReferenceSpec:
    """The PyTorch reference that parity, bench's torch baseline and eval compare against.

    checkpoint: the run's checkpoint.pt beside the bundle (`checkpoint_sha256`); torch.export: one
    self-contained program per role inside the bundle (`programs`: role -> file + sha256), loadable
    without the user's code, and `examples`, probe images for data with no source to read again;
    none: no reference travels (parity refuses, naming why).
    """

    kind: str = "checkpoint"
    programs: dict[str, DataFile] = field(default_factory=dict)
    examples: DataFile | None = None  # probe images (N, C, H, W) float32, when the data has no source to reread


@dataclass
class Manifest:
    family: str
    arch: str
    data: DataSpec
    latent: LatentSpec
    roles: dict[str, RoleSpec]
    precision: str = "fp32"
    opset: int = 18
    versions: dict[str, str] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    engines: list[EngineSpec] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)
    forms: dict[str, FormSpec] = field(default_factory=dict)  # other verified precisions, by precision

    @property
    def precisions(self) -> tuple[str, ...]:
        """Every verified precision the bundle carries, its default first."""
        return (self.precision, *self.forms)

    def form(self, precision: str) -> Manifest:
        """This manifest as if `precision` were its default form: the roles name that form's graphs.

        >>> read_manifest("runs/vae/bundle").form("int8").roles["decoder"].file
        'int8/decoder.onnx'
        """
        from dataclasses import replace

        if precision == self.precision:
            return self
        f = self.forms.get(precision)
        if f is None:
            raise InputError(f"this bundle carries {', '.join(self.precisions)}; got precision={precision!r} "
                             "(export several with --precision fp32,int8,...)")
        roles = {r: replace(spec, file=f.roles[r].file, sha256=f.roles[r].sha256, data_files=f.roles[r].data_files)
                 for r, spec in self.roles.items()}
        extra = {**self.extra, "quality": f.quality, "verification": f.verification}
        return replace(self, roles=roles, precision=precision, forms={}, engines=[], extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = self.data.to_dict()
        if not self.forms:
            del d["forms"]  # a bundle of one precision reads in bigmodel versions from before forms
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"manifest format_version {version!r} is not supported; expected {FORMAT_VERSION} "
                "(re-export the bundle with this bigmodel version)"
            )
        error = first_error(d, reader_schema())
        if error:
            raise BundleError(f"manifest is malformed (not as manifest.schema.json says): {error}")
        try:
            roles = {
                name: RoleSpec(
                    file=r["file"],
                    sha256=r["sha256"],
                    inputs=[tensor_spec(t, f"role {name} input") for t in r["inputs"]],
                    outputs=[tensor_spec(t, f"role {name} output") for t in r["outputs"]],
                    data_files=[DataFile(**f) for f in r.get("data_files", [])],
                )
                for name, r in d["roles"].items()
            }
            return cls(
                family=d["family"],
                arch=d["arch"],
                data=DataSpec.from_dict(d["data"]),
                latent=LatentSpec(**d["latent"]),
                roles=roles,
                precision=d.get("precision", "fp32"),
                opset=int(d.get("opset", 0)),
                versions=dict(d.get("versions", {})),
                checkpoint_sha256=d.get("checkpoint_sha256", ""),
                engines=[EngineSpec(**e) for e in d.get("engines", [])],
                extra=dict(d.get("extra", {})),
                format_version=version,
                reference=_reference(d.get("reference")),
                forms=_forms(d.get("forms") or {}, d["roles"], d.get("precision", "fp32")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"manifest is malformed: {type(e).__name__}: {e}") from e

    def save(self, bundle_dir: str | Path) -> Path:
        from bigmodel.fileio import atomic_write_text  # tempfile is not needed by readers (runtime start-up)

        return atomic_write_text(Path(bundle_dir) / MANIFEST_NAME, self.to_json())


DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")  # what a role's tensors may be


def tensor_spec(d: dict, where: str) -> TensorSpec:
    """A TensorSpec from the manifest, its fields of the types the schema gives (name, dtype, shape of
    positive ints and one leading "batch", kind, range, classes): a lie is a BundleError, never a TypeError."""
    t = TensorSpec(**d)
    dims = t.shape if isinstance(t.shape, list) else None
    if not (isinstance(t.name, str) and t.name and isinstance(t.dtype, str) and t.dtype in DTYPES
            and isinstance(t.kind, str) and dims and dims[0] == BATCH
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x < 2**31 for x in dims[1:])
            and (t.range is None or (isinstance(t.range, list) and len(t.range) == 2
                                     and all(isinstance(v, int | float) and not isinstance(v, bool) for v in t.range)))
            and (t.classes is None or (isinstance(t.classes, int) and not isinstance(t.classes, bool)
                                       and t.classes > 0))):
        raise BundleError(f"manifest is malformed: {where} {t.name!r}: expected a name, a dtype of "
                          f"{', '.join(DTYPES)}, a shape of 'batch' then positive sizes, a kind; got {d}"[:400])
    return t


def _forms(d: dict, roles: dict, default: str) -> dict[str, FormSpec]:
    """`forms` as read: each a precision other than the default, naming a graph for every role."""
    out = {}
    for precision, f in d.items():
        if precision not in FORM_PRECISIONS or precision == default:
            raise BundleError(f"manifest is malformed: forms holds {precision!r}; expected one of "
                              f"{', '.join(p for p in FORM_PRECISIONS if p != default)} (not the default {default})")
        if set(f["roles"]) != set(roles):
            raise BundleError(f"manifest is malformed: the {precision} form has roles {sorted(f['roles'])}; expected "
                              f"{sorted(roles)}")
        out[precision] = FormSpec(
            roles={r: FormRole(v["file"], v["sha256"], [DataFile(**x) for x in v.get("data_files", [])])
                   for r, v in f["roles"].items()},
            quality=dict(f.get("quality", {})), verification=dict(f.get("verification", {})))
    return out


def _reference(d: dict | None) -> ReferenceSpec:
    """The manifest's reference; bundles written before the field existed had their checkpoint."""
    if d is None:
        return ReferenceSpec()
    if d.get("kind") not in REFERENCE_KINDS:
        raise BundleError(f"manifest reference.kind must be one of {', '.join(REFERENCE_KINDS)}; got {d.get('kind')!r}")
    examples = d.get("examples")
    return ReferenceSpec(d["kind"], {role: DataFile(**f) for role, f in d.get("programs", {}).items()},
                         DataFile(**examples) if examples else None)


@functools.cache
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every manifest.json bigmodel writes satisfies."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


# Keys every reader needs; the rest have defaults, so manifests written before they existed still load.
READ_REQUIRED = ["format_version", "family", "arch", "data", "latent", "roles"]


@functools.cache
def reader_schema() -> dict[str, Any]:
    """The schema manifests are checked against when read: the written one, with only READ_REQUIRED required."""
    return {**manifest_schema(), "required": READ_REQUIRED}


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read `bundle_dir/manifest.json`; a missing or unparsable file is a `BundleError`.

    >>> read_manifest("runs/vae/bundle").roles.keys()
    dict_keys(['encoder', 'decoder'])
    """
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"bundle folder not found: expected a folder holding {MANIFEST_NAME}, got {bundle_dir}")
    if not path.is_file():
        inner = Path(bundle_dir) / "bundle"
        if (inner / MANIFEST_NAME).is_file():  # a run folder given where its bundle was meant
            raise BundleError(f"not a bundle: {bundle_dir} is a run folder; its bundle is {inner}")
        raise BundleError(f"not a bundle: expected {path} to exist (run `bigmodel export RUN_DIR` first; for a model "
                          "bigmodel did not train, see docs/own-model.md)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # (nesting past the stack)
        raise BundleError(f"cannot read {path}: expected JSON, got {type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(d, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return Manifest.from_dict(d)
