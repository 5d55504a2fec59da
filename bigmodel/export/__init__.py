"""Export a trained run to a bundle: one ONNX graph per role, manifest.json, optional engines."""

from bigmodel.export.bundle import ExportOptions, ExportResult, export_bundle

__all__ = ["ExportOptions", "ExportResult", "export_bundle"]
