"""Backends run one role graph on numpy feeds: `ort` (onnxruntime) and `tensorrt` (native engines)."""
