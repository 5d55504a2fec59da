"""ONNX graph files: save (embedded or external weights), check, list their data files, open in onnxruntime."""

from __future__ import annotations

from pathlib import Path

from bigmodel.errors import ExportError, missing_package
from bigmodel.fileio import sha256_file
from bigmodel.manifest import DataFile

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Dropout", "Multinomial"})

EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit: larger models keep weights beside the graph


def save_onnx(model, path: Path, external_data: bool) -> None:
    """Save a ModelProto; with external data the weights go to `<name>.data` beside it."""
    import onnx

    data = path.with_suffix(".onnx.data")
    data.unlink(missing_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def data_files(path: Path) -> list[DataFile]:
    """The external-data file `save_onnx` wrote beside the graph `path`, with its sha256 (none: [])."""
    data = path.with_suffix(".onnx.data")
    return [DataFile(data.name, sha256_file(data))] if data.is_file() else []


def check_graph(path: Path) -> None:
    """onnx.checker (full) + strict shape inference + no random operators, or ExportError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", check_type=True, strict_mode=True)
    except Exception as e:
        raise ExportError(f"{path.name} fails onnx.checker: {str(e).strip().splitlines()[0][:300]}") from e
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if ops & RANDOM_OPS:
        raise ExportError(f"{path.name} contains random operators {sorted(ops & RANDOM_OPS)}; noise must be an input")


def ort_session(path: Path):
    """A CPU onnxruntime session for one graph, warnings off."""
    ort = import_optional("onnxruntime", "checking the exported graph")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_prepacking", "1")  # a checking session: weights in memory once
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load {path.name}: {str(e).strip().splitlines()[0][:300]}") from e


def file_bytes(f: Path) -> int:
    data = f.with_suffix(".onnx.data")
    return f.stat().st_size + (data.stat().st_size if data.exists() else 0)


def import_optional(name: str, purpose: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise missing_package(name, "cpu", purpose) from e
