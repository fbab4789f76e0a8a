"""AOTInductor: ``torch.export`` the denoiser and compile it ahead of time into a ``.pt2``
package (C++ and weights) that ``torch._inductor.aoti_load_package`` runs without our model
code. Building needs a C++ compiler; loading does not.

A package is machine code for one target: the processor architecture, the vector
instructions of the CPU it was built on (AVX-512 code stops a processor without them with an
illegal instruction, killing the process) or the GPU's compute capability. The export records
that target (:func:`build_target`) and a load elsewhere is refused with the way out
(:func:`target_mismatch`) instead of crashing.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from entpruner_sdk.export.graphs import Denoiser, GuidedDenoiser, example_inputs
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.versions import require_torch

# aoti_compile_and_package took example inputs in 2.5, unannounced, and reached its
# public form in 2.6, as did aoti_load_package
AOTI_TORCH = "2.6"
# what build_target records beside the export's metadata
TARGET_KEYS = ("device", "machine", "cpu_isa", "cuda_capability")


def require_aoti() -> None:
    """An error naming the torch AOTInductor packages need, when this one is older."""
    require_torch(AOTI_TORCH, "AOTInductor (--format aoti)",
                  "export to ONNX (--format onnx), which runs on any torch and machine")


def export_aoti(model: DiffusionTransformer, path: str | os.PathLike, *, max_batch: int = 64,
                device: str | torch.device = "cpu", guided: bool = False) -> Path:
    """Compile the fp32 denoiser (or, with ``guided``, the guidance graph) for ``device`` with
    a dynamic batch of 1..``max_batch``."""
    require_aoti()
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


def build_target(device: str | torch.device) -> dict[str, Any]:
    """What a package compiled here for ``device`` runs on: the device, the processor
    architecture, and the CPU's vector instructions (as Inductor picks them) or the GPU's
    compute capability."""
    device = torch.device(device)
    target: dict[str, Any] = {"device": str(device), "machine": platform.machine()}
    if device.type == "cuda":
        target["cuda_capability"] = _cuda_capability(device)
    else:
        isa = _cpu_isa()
        if isa is not None:
            target["cpu_isa"] = isa
    return target


def target_mismatch(built: dict[str, Any]) -> str | None:
    """Why a package compiled for ``built`` (:func:`build_target`) cannot run on this machine;
    None when it can, or when the export predates these records."""
    machine = built.get("machine")
    if machine and machine != platform.machine():
        return f"it was compiled for {machine} processors, and this one is {platform.machine()}"
    device = torch.device(built.get("device", "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "it was compiled for a CUDA GPU, and this machine has none visible"
        wanted, here = built.get("cuda_capability"), _cuda_capability(device)
        if wanted and wanted != here:
            return (f"its kernels were compiled for GPUs of compute capability {wanted}, and "
                    f"this {torch.cuda.get_device_name(device)} is {here}")
        return None
    wanted = built.get("cpu_isa")
    usable = _usable_cpu_isas()
    if wanted and usable is not None and wanted not in usable:
        return (f"its kernels use {wanted} instructions, which this processor lacks (it runs "
                f"{', '.join(usable) or 'no vector instructions Inductor uses'})")
    return None


def _cuda_capability(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def _cpu_isa() -> str | None:
    """The vector instructions Inductor compiles CPU kernels with here ("" for none); None
    where this torch does not say (its module is private and has moved before)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:
        return None
    isa = pick_vec_isa()
    return str(isa) if isa else ""  # an invalid ISA is falsy: scalar code runs anywhere


def _usable_cpu_isas() -> list[str] | None:
    try:
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list
    except ImportError:
        return None
    return [str(isa) for isa in valid_vec_isa_list()]
