"""TensorRT engines built from the ONNX export, and the Torch-TensorRT ahead-of-time route.

Both need an NVIDIA GPU plus packages that are not part of any default extra (``pip install
'entpruner-sdk[tensorrt]'``); imports happen on use, and a missing piece is a clear error.
An engine is specific to the GPU model and TensorRT version, so both are stored in a JSON
sidecar beside it and checked on load. Always compare an engine with PyTorch before use
(``--verify``): TensorRT releases have miscompiled attention patterns before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from entpruner_sdk.export.runtime import ExportedDenoiser
from entpruner_sdk.models.config import TransformerConfig
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.utils.files import atomic_write_bytes, atomic_write_text

# Engines are built strongly typed from an ONNX already in the target precision (TensorRT 11
# removed the FP16 / BF16 builder flags; on 10.x the STRONGLY_TYPED flag gives the same).
# bf16 is not offered: ONNX opset 18 has no bf16 convolution.
PRECISIONS = ("fp32", "fp16")
INPUTS = ("x", "t", "y")


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or an error that says what is missing: a GPU or the package."""
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs an NVIDIA GPU with CUDA; none is visible here. "
                           "Use --format onnx or aoti on this machine.")
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError(
            "TensorRT is not installed: pip install 'entpruner-sdk[tensorrt]' on a CUDA machine "
            "(NVIDIA's index serves the libraries)"
        ) from error
    return tensorrt


def require_torch_tensorrt() -> ModuleType:
    """The ``torch_tensorrt`` module, or an error that says what is missing."""
    require_tensorrt()
    try:
        import torch_tensorrt
    except ImportError as error:
        raise ImportError(
            "torch-tensorrt is not installed: pip install torch-tensorrt matching your torch "
            f"minor version ({torch.__version__})"
        ) from error
    return torch_tensorrt


def input_shapes(config: TransformerConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """The denoiser's input shapes at ``batch`` images."""
    return {"x": (batch, config.in_channels, config.input_size, config.input_size),
            "t": (batch,), "y": (batch,)}


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                 config: TransformerConfig,
                 metadata: dict[str, Any], *, batch: tuple[int, int, int] = (1, 8, 32),
                 precision: str = "fp16", timing_cache: str | os.PathLike | None = None,
                 workspace_gib: float = 4.0) -> Path:
    """Build a serialized engine from an ONNX denoiser with one optimisation profile over the
    batch (min, opt, max) and write it with its sidecar (GPU, TensorRT version, metadata).

    The network is strongly typed: it runs in the ONNX file's own types, so ``precision``
    (recorded in the sidecar) must match how the ONNX was exported (``export`` does this).
    ``timing_cache``: a file reused across builds (created if missing) to skip kernel timing.
    """
    trt = require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"unsupported TensorRT precision {precision!r}; choose one of "
                         f"{PRECISIONS}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                         int(workspace_gib * (1 << 30)))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # the builder may run fp32 matmuls in TF32 unless told not to (a default that holds in
        # strongly typed networks too): 10-bit inputs, five times the fp32 parity bound
        builder_config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    low, opt, high = (input_shapes(config, b) for b in batch)
    for name in INPUTS:
        profile.set_shape(name, low[name], opt[name], high[name])
    builder_config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = builder_config.create_timing_cache(cache_bytes)
    builder_config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; see the log above")
    engine_path = Path(engine_path)
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_path:
        atomic_write_bytes(cache_path, bytes(builder_config.get_timing_cache().serialize()))
    sidecar = {**_device_facts(trt), "precision": precision, "batch": list(batch),
               "metadata": metadata}
    atomic_write_text(engine_path.with_suffix(".json"), json.dumps(sidecar, indent=2))
    return engine_path


class TensorRTDenoiser(ExportedDenoiser):
    """A TensorRT engine run on CUDA tensors (inputs are moved to the GPU as needed)."""

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        trt = require_tensorrt()
        path = Path(path)
        sidecar = json.loads(path.with_suffix(".json").read_text())
        here = _device_facts(trt)
        if (sidecar["gpu"], sidecar["tensorrt"]) != (here["gpu"], here["tensorrt"]):
            raise RuntimeError(
                f"{path} was built for {sidecar['gpu']} with TensorRT {sidecar['tensorrt']}, "
                f"but this is {here['gpu']} with TensorRT {here['tensorrt']}; rebuild it "
                "with `entpruner export --format tensorrt`"
            )
        super().__init__(metadata or sidecar["metadata"], (path,))
        self.max_batch = int(sidecar["batch"][2])  # the profile's max: larger calls are split
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            path.read_bytes())
        self.context = self.engine.create_execution_context()

    def __call__(self, x, t, y):
        feeds = {"x": x.cuda().float().contiguous(),
                 "t": t.cuda().to(self.time_dtype).contiguous(),
                 "y": y.cuda().long().contiguous()}
        for name, tensor in feeds.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape("out")), device="cuda")
        self.context.set_tensor_address("out", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.to(x.device)


def compile_torch_tensorrt(model: DiffusionTransformer, path: str | os.PathLike, *,
                           batch: tuple[int, int, int] = (1, 8, 32),
                           precision: str = "fp16") -> Path:
    """``torch.export`` the denoiser in ``precision`` (fp32 inputs and outputs, cast inside),
    compile it with Torch-TensorRT following those types, and save the program."""
    import inspect

    torch_tensorrt = require_torch_tensorrt()
    from entpruner_sdk.export.graphs import Denoiser, example_inputs

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(dtypes)}")
    module = Denoiser(model, dtypes[precision]).cuda()
    inputs = tuple(tensor.cuda() for tensor in example_inputs(model, batch=batch[1]))
    dim = torch.export.Dim("batch", min=batch[0], max=batch[2])
    program = torch.export.export(module, inputs, dynamic_shapes=tuple({0: dim} for _ in inputs))
    low, opt, high = (input_shapes(model.config, b) for b in batch)
    specs = [torch_tensorrt.Input(min_shape=low[n], opt_shape=opt[n], max_shape=high[n],
                                  dtype=tensor.dtype) for n, tensor in zip(INPUTS, inputs)]
    # Newer releases follow the graph's own types (use_explicit_typing; enabled_precisions is
    # deprecated there); older ones need the precision listed.
    options = inspect.signature(torch_tensorrt.dynamo.compile).parameters
    typing = ({"use_explicit_typing": True} if "use_explicit_typing" in options
              else {"enabled_precisions": {dtypes[precision]}})
    compiled = torch_tensorrt.dynamo.compile(program, inputs=specs, **typing)
    path = Path(path)
    save_options = inspect.signature(torch_tensorrt.save).parameters
    key = "arg_inputs" if "arg_inputs" in save_options else "inputs"
    torch_tensorrt.save(compiled, str(path), **{key: list(inputs)})
    return path


class TorchTensorRTDenoiser(ExportedDenoiser):
    """A saved Torch-TensorRT program (loaded with ``torch.export.load``)."""

    backend = "torch-tensorrt"

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
        require_torch_tensorrt()
        super().__init__(metadata, (path,))
        self.module = torch.export.load(str(path)).module()

    def __call__(self, x, t, y):
        out = self.module(x.cuda().float(), t.cuda().to(self.time_dtype), y.cuda().long())
        return out.to(x.device)


def _device_facts(trt) -> dict[str, Any]:
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
            "tensorrt": trt.__version__}
