"""What this machine offers entpruner: versions, the devices and the arithmetic each computes
in under the mixed-precision policy, and which optional extras are installed (``entpruner
env``, the text to paste into a bug report).

The extras and their version floors are read from the installed package's metadata, so they
say what ``pip install 'entpruner-sdk[NAME]'`` installs; nothing optional is imported except
ONNX Runtime, whose execution providers only it can list.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import torch
from packaging.requirements import Requirement

from entpruner_sdk.utils.cache import cache_root
from entpruner_sdk.utils.device import AUTOCAST_ENV, arithmetic, autocast_mode, processor_name

DISTRIBUTION = "entpruner-sdk"
# what each extra adds; "all" installs the others
EXTRA_FEATURES = {
    "onnx": "ONNX export (onnx, onnx-fp16) and ONNX Runtime for exports",
    "gpu": "ONNX Runtime on CUDA (onnxruntime-gpu, in place of onnxruntime)",
    "tensorrt": "TensorRT engines (tensorrt, torch-tensorrt formats; NVIDIA GPU)",
    "app": "entpruner demo (Gradio) and its browser tests (Playwright)",
    "serve": "entpruner serve (FastAPI, uvicorn, Prometheus metrics)",
    "ray": "entpruner serve --ray (Ray Serve replicas)",
    "fid": "FID on Inception features (entpruner evaluate --features inception)",
    "latent": "latent models: the VAE that encodes data and decodes samples (diffusers)",
    "hf": "Hugging Face datasets as data, from the Hub or saved with save_to_disk",
    "dev": "the test suite and ruff",
}
# a distribution that stands in for another: onnxruntime-gpu is imported as onnxruntime
STANDS_IN = {"onnxruntime": "onnxruntime-gpu"}


def environment() -> dict[str, Any]:
    """Versions, devices, the policy, the core requirements and each extra, as plain data."""
    requirements = _requirements()
    return {"entpruner_sdk": _installed(DISTRIBUTION), "python": platform.python_version(),
            "executable": sys.executable,  # whose packages these are
            "platform": f"{platform.system()} {platform.machine()}",
            "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads()},
            "policy": {"variable": AUTOCAST_ENV, "value": os.environ.get(AUTOCAST_ENV),
                       "mode": autocast_mode()},
            "devices": devices(), "core": core_requirements(requirements),
            "extras": extras(requirements),
            "onnxruntime_providers": _onnxruntime_providers(), "cache": str(cache_root())}


def devices() -> list[dict[str, Any]]:
    """The CPU and each visible CUDA GPU, with what PyTorch models compute in there under the
    policy in force (a policy the device refuses says why)."""
    # named as a checkpoint records where it was made (computed_on)
    found = [{"device": "cpu", "name": processor_name("cpu"), "arithmetic": _arithmetic("cpu")}]
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        with torch.cuda.device(index):  # bf16 support is asked of the current device
            found.append({"device": f"cuda:{index}", "name": properties.name,
                          "memory_gib": properties.total_memory / 2**30,
                          "compute_capability": f"{properties.major}.{properties.minor}",
                          "bf16": torch.cuda.is_bf16_supported(),
                          "tf32": properties.major >= 8 and autocast_mode() != "off",
                          "arithmetic": _arithmetic(f"cuda:{index}")})
    return found


def core_requirements(requirements: list[Requirement] | None = None) -> list[dict[str, Any]]:
    """Each requirement every install has (of ``requirements``, default: the installed
    package's), with the version found."""
    if requirements is None:
        requirements = _requirements()
    return [requirement_status(r) for r in requirements if r.marker is None]


def extras(requirements: list[Requirement] | None = None) -> list[dict[str, Any]]:
    """Each extra: what it adds, whether all of it is installed, and each of its packages
    (of ``requirements``, default: the installed package's)."""
    if requirements is None:
        requirements = _requirements()
    listed = []
    for extra, adds in EXTRA_FEATURES.items():
        packages = [requirement_status(r) for r in requirements
                    if r.marker is not None and r.marker.evaluate({"extra": extra})]
        listed.append({"extra": extra, "adds": adds, "packages": packages,
                       "installed": bool(packages) and all(p["ok"] for p in packages)})
    return listed


def requirement_status(requirement: Requirement) -> dict[str, Any]:
    """The installed version of ``requirement``'s package (None: missing) and whether it
    meets the requirement's floor."""
    name = requirement.name
    version = _installed(name)
    if version is None and name in STANDS_IN:
        name, version = STANDS_IN[name], _installed(STANDS_IN[name])
    ok = version is not None and requirement.specifier.contains(version, prereleases=True)
    return {"name": name, "required": str(requirement.specifier) or "any", "version": version,
            "ok": ok}


def _requirements() -> list[Requirement]:
    try:
        return [Requirement(text) for text in metadata.requires(DISTRIBUTION) or []]
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH: no metadata
        return []


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _arithmetic(device: str) -> str:
    try:
        return arithmetic(device)
    except RuntimeError as refused:  # bf16 asked of a GPU without it
        return f"refused: {refused}"


def _onnxruntime_providers() -> list[str] | None:
    """ONNX Runtime's execution providers here (None: not installed)."""
    if _installed("onnxruntime") is None and _installed("onnxruntime-gpu") is None:
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())
