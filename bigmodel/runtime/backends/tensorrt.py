"""TensorRT backend (native engines through the TensorRT Python API). Placeholder until built."""

from __future__ import annotations

from bigmodel.errors import BackendUnavailable


def unavailable_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the 'tensorrt' package is not installed; install it with: pip install 'bigmodel[tensorrt]'"
    return "the tensorrt backend is not implemented yet"


class TensorRTBackend:
    def __init__(self, *args, **kwargs):
        raise BackendUnavailable(f"backend tensorrt: {unavailable_reason()}")
