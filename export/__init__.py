"""Export: turn a (pruned) model into files that run without our model code.

``export(model, out_dir, format)`` writes ONNX (fp32 / fp16, with a guidance graph),
AOTInductor packages, TensorRT engines or Torch-TensorRT programs, each parity-checked
against PyTorch; ``load_exported(dir)`` opens one and samples from it with the same seeds and
samplers as :func:`entpruner_sdk.sample`.
"""

from entpruner_sdk.export.api import FORMATS, ExportResult, export
from entpruner_sdk.export.graphs import Denoiser, GuidedDenoiser
from entpruner_sdk.export.metadata import export_metadata
from entpruner_sdk.export.parity import ParityCheck, ParityError, check_parity
from entpruner_sdk.export.runtime import (
    AotiDenoiser,
    ExportedDenoiser,
    OnnxRuntimeDenoiser,
    damaged_files,
    is_export_dir,
    load_exported,
)

__all__ = [
    "FORMATS",
    "AotiDenoiser",
    "Denoiser",
    "ExportResult",
    "ExportedDenoiser",
    "GuidedDenoiser",
    "OnnxRuntimeDenoiser",
    "ParityCheck",
    "ParityError",
    "check_parity",
    "damaged_files",
    "export",
    "export_metadata",
    "is_export_dir",
    "load_exported",
]
