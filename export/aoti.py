"""AOTInductor: ``torch.export`` the denoiser and compile it ahead of time into a ``.pt2``
package (C++ and weights) that ``torch._inductor.aoti_load_package`` runs without our model
code. Building needs a C++ compiler; loading does not."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from entpruner_sdk.export.graphs import Denoiser, GuidedDenoiser, example_inputs
from entpruner_sdk.models.transformer import DiffusionTransformer


def export_aoti(model: DiffusionTransformer, path: str | os.PathLike, *, max_batch: int = 64,
                device: str | torch.device = "cpu", guided: bool = False) -> Path:
    """Compile the fp32 denoiser (or, with ``guided``, the guidance graph) for ``device`` with
    a dynamic batch of 1..``max_batch``."""
    device = torch.device(device)
    module = (GuidedDenoiser if guided else Denoiser)(model).to(device)
    inputs = tuple(tensor.to(device) for tensor in example_inputs(model, batch=2, guided=guided))
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        program = torch.export.export(module, inputs,
                                      dynamic_shapes=tuple({0: batch} for _ in inputs))
    # export() writes into a staging directory that replaces the target only when complete.
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return Path(path)
