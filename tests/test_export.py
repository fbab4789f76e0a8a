"""Export: ONNX (fp32 / fp16, guidance graph, metadata, dynamic batch) run by a real ONNX
Runtime, AOTInductor packages, the TensorRT paths' errors, and `entpruner export`."""

from __future__ import annotations

import json
import logging
import os
import platform
import re

import pytest
import torch

from entpruner_sdk.cli import main
from entpruner_sdk.export import (
    ParityError,
    export,
    export_metadata,
    is_export_dir,
    load_exported,
)
from entpruner_sdk.export import parity as parity_module
from entpruner_sdk.export.parity import relative_error
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.models.io import CheckpointError, save
from entpruner_sdk.sampling import sample
from entpruner_sdk.utils.versions import torch_release
from tests.conftest import needs_torch, randomized, tiny_config

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def pruned(family: str) -> DiffusionTransformer:
    """A pruned tiny model (blocks 0, 2, 3 of 4 kept), so provenance is not trivial."""
    model = randomized(DiffusionTransformer(tiny_config(family, num_classes=4,
                                                        learn_sigma=family == "dit")))
    if family == "sit":
        model.objective = {"path": "gvp"}
    return model.keep_blocks([0, 2, 3]).eval()


@pytest.fixture(scope="module", params=["dit", "sit"])
def onnx_export(request, tmp_path_factory):
    model = pruned(request.param)
    out = tmp_path_factory.mktemp(f"onnx-{request.param}") / "export"
    return model, export(model, out, "onnx")


def test_onnx_files_checker_metadata_and_dynamic_batch(onnx_export):
    model, result = onnx_export
    assert is_export_dir(result.directory)
    assert set(result.files) >= {"denoiser", "guided"}
    for name in ("model.onnx", "model_cfg.onnx"):
        path = result.directory / name
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        assert proto.opset_import[0].version == 18
        for value in proto.graph.input:  # every input has a symbolic batch dimension
            assert value.type.tensor_type.shape.dim[0].dim_param
        stored = json.loads({p.key: p.value for p in proto.metadata_props}["entpruner"])
        assert stored["kept_blocks"] == [0, 2, 3]
        assert stored["config"] == model.config.to_dict()
        assert stored["objective"]["kind"] == ("gaussian-diffusion" if model.family == "dit"
                                               else "flow-matching")
    manifest = json.loads((result.directory / "export.json").read_text())
    assert manifest["metadata"]["kept_blocks"] == [0, 2, 3]
    runtime = load_exported(result.directory)
    assert runtime.config == model.config
    if model.family == "sit":
        assert runtime.objective.path == "gvp"  # the flow path travels in the metadata


def test_onnx_parity_at_several_batch_sizes(onnx_export):
    model, result = onnx_export
    assert {c.batch for c in result.parity} == {1, 3, 8}
    assert {c.graph for c in result.parity} == {"denoiser", "guided"}
    assert all(c.relative_error < 1e-4 for c in result.parity)
    worst = max(c.relative_error for c in result.parity)
    assert repr(result) == (f"ExportResult(onnx in {result.directory}: model.onnx, "
                            f"model_cfg.onnx; parity 6 of 6 checks passed, largest relative "
                            f"error {worst:.1e})")
    runtime = load_exported(result.directory)
    assert repr(runtime) == (f"OnnxRuntimeDenoiser({model.family.upper()} depth 3, kept blocks "
                             "[0, 2, 3], onnxruntime, guidance graph)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 1, 8, 8, generator=g)  # a batch size never seen at export time
    t = (torch.randint(0, 1000, (13,), generator=g) if model.family == "dit"
         else torch.rand(13, generator=g))
    y = torch.randint(0, 4, (13,), generator=g)
    assert relative_error(runtime(x, t, y), model(x, t, y))[1] < 1e-4


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_onnx_runtime_sampling_reproduces_pytorch(onnx_export, cfg_scale):
    model, result = onnx_export
    runtime = load_exported(result.directory)
    samplers = (["ddpm", "ddim", "dpm-solver++"] if model.family == "dit"
                else ["heun", "euler-maruyama", "heun-sde", "dopri5"])
    for sampler in samplers:
        steps = 20 if sampler == "dopri5" else 6  # dopri5's cap; it takes about 8 here
        expected = sample(model, [0, 1, 3], sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                          seed=5, device="cpu")
        got = runtime.sample([0, 1, 3], sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=5)
        # Float differences of ~1e-7 per call grow over the steps of a random-weight model.
        assert relative_error(got, expected)[1] < 1e-3
        assert not torch.equal(got, runtime.sample([0, 1, 3], sampler=sampler, steps=steps,
                                                   cfg_scale=cfg_scale, seed=6))
    if model.family == "sit":  # a SiT sampler's settings reach the export's sampling
        tuned = runtime.objective.with_sampler_settings("heun-sde", diffusion_norm=0.5,
                                                        last_step_size=0.1)
        run = dict(sampler="heun-sde", steps=6, cfg_scale=cfg_scale, seed=5)
        expected = sample(model, [0, 1, 3], device="cpu", objective=tuned, **run)
        got = runtime.sample([0, 1, 3], objective=tuned, **run)
        assert relative_error(got, expected)[1] < 1e-3
        assert relative_error(got, runtime.sample([0, 1, 3], **run))[1] > 1e-2


def test_guided_graph_equals_host_guidance(onnx_export):
    model, result = onnx_export
    runtime = load_exported(result.directory)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, 3])
    if model.family == "sit":
        t = torch.tensor([0.0, 0.1, 0.5, 1.0])
    scale = torch.tensor([1.0, 2.0, 4.0, 0.0])  # per-sample scales in one batch
    out = runtime.guided(x, t, y, scale)
    null = torch.full_like(y, model.null_class)
    cond, uncond = model(x, t, y), model(x, t, null)
    c = model.config.in_channels
    expected = uncond[:, :c] + scale.view(-1, 1, 1, 1) * (cond[:, :c] - uncond[:, :c])
    # scale 4 multiplies the graphs' float differences (a few 1e-5) by 4
    torch.testing.assert_close(out[:, :c], expected, rtol=1e-4, atol=4e-4)
    torch.testing.assert_close(out[:, c:], cond[:, c:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("exporter", [pytest.param("dynamo", marks=needs_torch("2.5")),
                                      "torchscript"])
def test_large_weights_go_to_a_data_file_that_the_manifest_lists(tmp_path, monkeypatch,
                                                                  exporter, capsys):
    from entpruner_sdk.export import onnx_export

    # DiT-XL/2's 2.7 GB are over protobuf's 2 GB: lower the threshold to take that path here
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    result = export(pruned("dit"), tmp_path / "big", "onnx", exporter=exporter)
    # one copy of the weights: the guidance graph reads the denoiser's
    files = sorted(p.name for p in result.directory.iterdir())
    assert files == ["export.json", "model.onnx", "model.onnx.data", "model_cfg.onnx"]
    for name in ("model.onnx", "model_cfg.onnx"):
        graph = onnx.load(str(result.directory / name), load_external_data=False).graph
        inline = [i for i in graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL]
        assert len(inline) < len(graph.initializer)  # only tensors under 1 kB may stay inline
        assert all(len(i.raw_data) < 1024 for i in inline)
        assert {entry.value for i in graph.initializer for entry in i.external_data
                if entry.key == "location"} == {"model.onnx.data"}
    assert {c.graph for c in result.parity} == {"denoiser", "guided"}
    assert all(c.passed for c in result.parity)  # ONNX Runtime read the weights beside it
    contents = result.manifest["contents"]
    assert sorted(contents) == files[1:] and all(
        size == (result.directory / name).stat().st_size for name, size in contents.items())
    assert main(["info", "--model", str(result.directory)]) == 0
    assert "model.onnx.data (" in capsys.readouterr().out
    # another model's weights are not this graph's: nothing is shared, nothing is lost
    other = export(randomized(pruned("dit"), seed=1), tmp_path / "other", "onnx", guided=False,
                   exporter=exporter)
    guided = result.directory / "model_cfg.onnx"
    moved = tmp_path / "model_cfg.onnx"
    onnx.save(onnx.load(str(guided)), str(moved), save_as_external_data=True,
              location="own.data")
    assert not onnx_export.share_external_data(moved, other.directory / "model.onnx")
    assert (tmp_path / "own.data").exists()


def test_onnx_fp16_is_half_precision_and_within_tolerance(tmp_path):
    model = pruned("dit")
    result = export(model, tmp_path / "fp16", "onnx-fp16", guided=False)
    proto = onnx.load(str(result.directory / "model.onnx"))
    weights = [i for i in proto.graph.initializer if i.name.endswith(".weight")]
    assert len(weights) >= 5 and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert all(c.relative_error < 1e-2 for c in result.parity)
    assert max(c.relative_error for c in result.parity) > 1e-6  # really computed in fp16
    assert "guided" not in result.files


def test_torchscript_exporter_also_matches(tmp_path):
    model = pruned("sit")
    result = export(model, tmp_path / "ts", "onnx", exporter="torchscript")
    assert all(c.passed for c in result.parity)
    assert json.loads((tmp_path / "ts" / "export.json").read_text())["metadata"]["exporter"] == (
        "torchscript")


def test_torch_before_2_5_exports_onnx_with_the_tracer_it_has(tmp_path, monkeypatch):
    """pyproject allows torch 2.4, whose torch.onnx.export has no dynamic_shapes= (the
    torch.export-based exporter came in 2.5; 2.4's dynamo=True is the older dynamo_export):
    2.4's signature is put in front of the real tracer here. The whole suite also passed on a
    real torch 2.4.1 (README, "Install")."""
    import sys

    from entpruner_sdk.export.onnx_export import resolve_exporter

    tracer = torch.onnx.export

    def export_of_torch_2_4(model, args, f=None, export_params=True, verbose=False,
                            training=None, input_names=None, output_names=None,
                            operator_export_type=None, opset_version=None,
                            do_constant_folding=True, dynamic_axes=None,
                            keep_initializers_as_inputs=None, custom_opsets=None,
                            export_modules_as_functions=False, autograd_inlining=True,
                            dynamo=False):
        assert not dynamo, "2.4's dynamo=True is not the exporter this package runs"
        return tracer(model, args, f, input_names=input_names, output_names=output_names,
                      opset_version=opset_version, dynamic_axes=dynamic_axes, dynamo=False)

    monkeypatch.setattr(torch.onnx, "export", export_of_torch_2_4)
    monkeypatch.setattr(torch, "__version__", "2.4.1")
    model = pruned("dit")
    result = export(model, tmp_path / "onnx", "onnx")
    assert result.manifest["metadata"]["exporter"] == "torchscript"
    assert result.parity and all(c.passed for c in result.parity)
    with pytest.raises(RuntimeError, match=r"dynamo ONNX exporter .*needs torch 2\.5 or later, "
                                           r"and this is torch 2\.4\.1.*--exporter torchscript"):
        export(model, tmp_path / "dynamo", "onnx", exporter="dynamo")
    assert not (tmp_path / "dynamo").exists()
    monkeypatch.setattr(torch, "__version__", "2.5.0+vendor")  # new enough, yet without it
    with pytest.raises(RuntimeError, match=r"this torch \(2\.5\.0\+vendor\) has no torch\.onnx"
                                           r"\.export\(dynamic_shapes=\.\.\.\).*--exporter "
                                           r"torchscript"):
        resolve_exporter("dynamo")
    monkeypatch.undo()
    # the dynamo exporter where it runs
    assert resolve_exporter() == ("dynamo" if torch_release() >= (2, 5) else "torchscript")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    assert resolve_exporter() == "torchscript"
    if torch_release() >= (2, 5):
        with pytest.raises(ImportError, match="onnxscript, which is not installed"):
            resolve_exporter("dynamo")


def test_aoti_packages_name_the_torch_they_need(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(RuntimeError, match=r"AOTInductor .*needs torch 2\.6 or later, "
                                           r"and this is torch 2\.5\.1.*--format onnx"):
        export(pruned("dit"), tmp_path / "aoti", "aoti")
    assert not (tmp_path / "aoti").exists()


@needs_torch("2.6")
def test_an_aoti_package_built_for_another_machine_is_refused_with_the_way_out():
    import platform

    from entpruner_sdk.export.aoti import build_target, target_mismatch

    here = build_target("cpu")
    assert here["device"] == "cpu" and here["machine"] == platform.machine()
    assert target_mismatch(here) is None and target_mismatch({"device": "cpu"}) is None
    other = {**here, "machine": "riscv64"}
    assert target_mismatch(other) == (f"it was compiled for riscv64 processors, and this one "
                                      f"is {platform.machine()}")
    assert "instructions, which this processor lacks" in target_mismatch(
        {**here, "cpu_isa": "avx10.2"})  # no processor here has it
    if not torch.cuda.is_available():
        assert target_mismatch({**here, "device": "cuda:0", "cuda_capability": "9.0"}) == (
            "it was compiled for a CUDA GPU, and this machine has none visible")


def test_an_export_has_the_permissions_the_umask_gives(tmp_path):
    """Built in a staging folder and moved into place, an export must still be readable as
    the user's umask says (a server running as another user reads it), not 0o700."""
    previous = os.umask(0o027)
    try:
        result = export(pruned("dit"), tmp_path / "shared" / "export", "onnx",
                        exporter="torchscript", guided=False)
    finally:
        os.umask(previous)
    assert result.directory.stat().st_mode & 0o777 == 0o750
    for file in result.directory.iterdir():
        assert file.stat().st_mode & 0o777 == 0o640, file.name
    assert [p.name for p in result.directory.parent.iterdir()] == ["export"]  # no staging left


def test_parity_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(parity_module.TOLERANCE, "fp16", 1e-9)
    with pytest.raises(ParityError, match="does not match PyTorch"):
        export(pruned("dit"), tmp_path / "bad", "onnx-fp16", guided=False)
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir()]  # no staging directory left either


def test_bad_requests_give_clear_errors(tmp_path, onnx_export):
    model, result = onnx_export
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(model, result.directory, "onnx")
    with pytest.raises(ValueError, match="unknown export format 'coreml'"):
        export(model, tmp_path / "x", "coreml")
    with pytest.raises(ValueError, match="strongly typed"):
        export(model, tmp_path / "x", "tensorrt", precision="bf16")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        export(model, tmp_path / "x", "onnx", batch=(8, 1, 4))
    with pytest.raises(RuntimeError, match="not available here"):
        load_exported(result.directory, provider="cuda")
    with pytest.raises(FileNotFoundError, match="not an export directory"):
        load_exported(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "export.json").write_text(json.dumps({"format": "onnx",
                                                    "files": {"denoiser": "model.onnx"}}))
    (broken / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        load_exported(broken)
    (broken / "export.json").write_text("{ truncated")
    with pytest.raises(ValueError, match="corrupt"):
        load_exported(broken)
    runtime = load_exported(result.directory)
    with pytest.raises(ValueError, match="unknown class label 7"):
        runtime.sample([7], steps=2)


def test_export_without_guidance_graph_guides_on_the_host(tmp_path):
    model = pruned("dit")
    result = export(model, tmp_path / "plain", "onnx", guided=False)
    assert "guided" not in result.files
    runtime = load_exported(result.directory)
    assert not runtime.has_guided_graph
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 7]), torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="re-export with guided=True"):
        runtime.guided(x, t, y, torch.tensor([2.0, 2.0]))
    # Without the graph, guidance runs on the host through the plain graph, same images.
    got = runtime.sample([0, 1], steps=4, cfg_scale=2.0, seed=3)
    expected = sample(model, [0, 1], steps=4, cfg_scale=2.0, seed=3, device="cpu")
    assert relative_error(got, expected)[1] < 1e-3


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_onnx_export_does_not_log_the_skipped_torchvision_operators(tmp_path):
    # torch's logging gives "torch.onnx" its own stderr handler and stops propagation there,
    # so every record the exporter emits reaches a handler on it (pytest's capture cannot see
    # that stream, opened before the capture started)
    collected, torch_logger = Collected(), logging.getLogger("torch.onnx")
    torch_logger.addHandler(collected)
    try:
        export(pruned("sit"), tmp_path / "quiet", "onnx", guided=False, verify=False)
    finally:
        torch_logger.removeHandler(collected)
    assert not [m for m in collected.messages if "torchvision" in m], collected.messages


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("fmt", ["tensorrt", "torch-tensorrt"])
def test_tensorrt_without_gpu_fails_clearly(tmp_path, fmt):
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        export(pruned("dit"), tmp_path / fmt, fmt)
    assert not (tmp_path / fmt).exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tensorrt_engine_matches_pytorch(tmp_path):
    pytest.importorskip("tensorrt")
    model = pruned("dit")
    result = export(model, tmp_path / "trt", "tensorrt", batch=(1, 4, 16))
    assert all(c.passed for c in result.parity)
    sidecar = json.loads((tmp_path / "trt" / "model.json").read_text())
    assert sidecar["gpu"] == torch.cuda.get_device_name()
    runtime = load_exported(tmp_path / "trt")
    expected = sample(model, [0, 1], steps=4, seed=1, device="cpu")
    torch.testing.assert_close(runtime.sample([0, 1], steps=4, seed=1), expected,
                               rtol=5e-2, atol=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_fp32_tensorrt_engine_computes_in_fp32_not_tf32(tmp_path):
    pytest.importorskip("tensorrt")
    result = export(pruned("dit"), tmp_path / "trt", "tensorrt", precision="fp32",
                    batch=(1, 4, 16))
    assert all(c.tolerance == 1e-4 and c.passed for c in result.parity)


@pytest.mark.slow
@needs_torch("2.6")
def test_aoti_package_runs_without_model_code(tmp_path, capsys):
    model = pruned("dit")
    result = export(model, tmp_path / "aoti", "aoti", batch=(1, 4, 16))
    assert result.files == {"denoiser": "model.pt2", "guided": "model_cfg.pt2"}
    assert all(c.relative_error < 1e-4 for c in result.parity)
    runner = torch._inductor.aoti_load_package(str(tmp_path / "aoti" / "model.pt2"))
    generator = torch.Generator().manual_seed(0)  # inputs independent of the tests before
    x = torch.randn(5, 1, 8, 8, generator=generator)
    t = torch.randint(0, 1000, (5,), generator=generator)
    # fused kernels round differently from eager: the export's own fp32 bound, 1e-4 of the
    # output's scale (an element-wise 1e-4 failed on one element in 640, by 1.8e-4)
    assert relative_error(runner(x, t, torch.arange(5)), model(x, t, torch.arange(5)))[1] < 1e-4
    runtime = load_exported(tmp_path / "aoti")
    assert runtime.has_guided_graph and {c.graph for c in result.parity} == {"denoiser", "guided"}
    got = runtime.sample([1, 2], steps=5, cfg_scale=2.0, seed=3)
    expected = sample(model, [1, 2], steps=5, cfg_scale=2.0, seed=3, device="cpu")
    assert relative_error(got, expected)[1] < 1e-3
    # the machine code's target is recorded, shown, and checked where the package is opened
    from entpruner_sdk.export.aoti import build_target

    manifest_path = tmp_path / "aoti" / "export.json"
    manifest = json.loads(manifest_path.read_text())
    assert build_target("cpu").items() <= manifest["metadata"].items()
    assert main(["info", "--model", str(tmp_path / "aoti")]) == 0
    assert f"compiled for cpu ({platform.machine()}" in capsys.readouterr().out
    manifest["metadata"]["machine"] = "riscv64"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match=r"model\.pt2 here: it was compiled for riscv64 "
                                           r"processors.*--format aoti.*ONNX export"):
        load_exported(tmp_path / "aoti")
    # a package that torch cannot open, from another torch: both versions are named
    manifest["metadata"]["machine"] = platform.machine()
    manifest["torch"] = "2.6.0"
    manifest_path.write_text(json.dumps(manifest))
    package = tmp_path / "aoti" / "model.pt2"
    data = bytearray(package.read_bytes())
    data[-200:] = bytes(200)  # the zip's directory, same size: the file check passes
    package.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"compiled by torch 2\.6\.0, and this is torch "
                                           + re.escape(torch.__version__)):
        load_exported(tmp_path / "aoti")


@pytest.mark.parametrize("family", ["dit", "sit"])
def test_a_reference_export_is_what_the_reference_code_loads(tmp_path, family):
    from entpruner_sdk.export.reference import registry_name, write_reference
    from entpruner_sdk.models.config import config_from_name
    from entpruner_sdk.models.io import from_state_dict

    model = pruned(family)
    result = export(model, tmp_path / "ref", "reference")
    assert result.files == {"denoiser": "model.pt", "kwargs": "model_kwargs.json",
                            "readme": "README.md"}
    # a plain state dict, as the released checkpoints are: blocks renumbered, tensors only
    state = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    kwargs = json.loads((tmp_path / "ref" / "model_kwargs.json").read_text())
    # the constructor's arguments: every field but the family, which is the class
    assert kwargs == {k: v for k, v in model.config.to_dict().items() if k != "family"}
    # the file loads as a released one, and the export samples as the model does
    again = from_state_dict(state, family, num_heads=kwargs["num_heads"])
    assert again.config == model.config
    runtime = load_exported(tmp_path / "ref")
    assert [c.relative_error for c in result.parity] == [0.0] * 3
    assert torch.equal(runtime.sample([1, 2], steps=3, cfg_scale=2.0, seed=4),
                       sample(model, [1, 2], steps=3, cfg_scale=2.0, seed=4, device="cpu"))
    readme = (tmp_path / "ref" / "README.md").read_text()
    kind = {"dit": "DiT", "sit": "SiT"}[family]
    assert f"from models import {kind}" in readme and "blocks [0, 2, 3]" in readme
    assert (f"{kind}_models['{kind}-W32-D3/2'] = lambda **kw: {kind}(depth=3, hidden_size=32,"
            f" patch_size=2, num_heads=2, **kw)") in readme
    assert ("It predicts the velocity on the GVP path." in readme) == (family == "sit")
    # a latent model gets sample.py's command line, with its image size
    latent = randomized(DiffusionTransformer(tiny_config(family, in_channels=4)))
    (tmp_path / "latent").mkdir()
    write_reference(latent, tmp_path / "latent")
    mode, flow = ("ODE ", " --path-type Linear") if family == "sit" else ("", "")
    assert (f"python sample.py {mode}--model {kind}-W32-D4/2 --ckpt model.pt --image-size 64 "
            f"--num-classes 10{flow}") in (tmp_path / "latent" / "README.md").read_text()
    assert "set it to classes of this model, 0..9" in (tmp_path / "latent" / "README.md"
                                                        ).read_text()
    # an XL width keeps the usual name of a pruned XL, which reads back as the same shape
    xl = config_from_name("DiT-XL/2", depth=14)
    assert registry_name(xl) == "DiT-D14/2" and config_from_name("DiT-D14/2") == xl
    assert registry_name(config_from_name("SiT-B/2", depth=6)) == "SiT-B-D6/2"
    with pytest.raises(ValueError, match="fp32 weights, as the released checkpoints do"):
        export(model, tmp_path / "half", "reference", precision="fp16")


def test_a_dit_exports_to_diffusers_and_loads_back_as_the_release_does(tmp_path, capsys):
    import entpruner_sdk as ep
    from entpruner_sdk.data.latents import LatentSpace, recorded_vae
    from tests.conftest import latent_model, tiny_vae

    diffusers = pytest.importorskip("diffusers")
    vae = tiny_vae(tmp_path / "vae")
    model = latent_model()  # a DiT on the tiny VAE's 4x8x8 latents, its weights random
    model.provenance["class_names"] = names = ["cat", "dog", "owl", "fox", "elk", "yak",
                                               "emu", "gnu"]
    # the transformer alone: a DiTTransformer2DModel folder, checked against the model
    result = export(model, tmp_path / "alone", "diffusers", batch=(1, 2, 2))
    assert result.files["denoiser"] == "transformer/diffusion_pytorch_model.safetensors"
    assert all(check.passed for check in result.parity) and len(result.parity) == 3
    assert not (tmp_path / "alone" / "model_index.json").exists()
    hf = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "alone" / "transformer")
    assert hf.config.num_layers == model.depth == 4
    assert "transformer/config.json" in result.manifest["contents"]  # each file, by its path
    # with the VAE: a whole DiTPipeline, which diffusers samples by class name
    export(model, tmp_path / "pipe", "diffusers", vae=vae, batch=(1, 2, 2))
    pipe = diffusers.DiTPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.get_label_ids(["owl"]) == [2]
    # guided: DiTPipeline's null class is label 1000, ImageNet's count, so the label
    # embedder is padded to 1000 classes with the null row (and read back unpadded)
    assert pipe.transformer.config.num_embeds_ada_norm == 1000
    images = pipe(class_labels=[1], num_inference_steps=2, guidance_scale=4.0,
                  output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    # entpruner reads it back as it reads the release: the same weights, names and a VAE
    back = ep.load(tmp_path / "pipe")
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    assert back.provenance["class_names"] == names
    assert recorded_vae(back.metadata)["path"] == str((tmp_path / "pipe" / "vae").resolve())
    runtime = load_exported(tmp_path / "pipe")  # samples, and decodes with its own VAE
    assert isinstance(runtime.decoder, LatentSpace)
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "pipe")]) == 0
    text = capsys.readouterr().out
    assert "the export carries the VAE decoder" in text and "vae/config.json (" in text
    assert torch.allclose(runtime.sample([1, 2], steps=3, cfg_scale=2.0, seed=4),
                          sample(model, [1, 2], steps=3, cfg_scale=2.0, seed=4, device="cpu"),
                          rtol=1e-4, atol=1e-3)  # random weights: outputs in the hundreds
    # what diffusers cannot hold is refused before anything is written
    with pytest.raises(ValueError, match="diffusers has no SiT class"):
        export(latent_model("sit"), tmp_path / "sit", "diffusers")
    with pytest.raises(ValueError, match="a diffusers export holds fp32 weights"):
        export(model, tmp_path / "half", "diffusers", precision="fp16")
    assert not (tmp_path / "sit").exists() and not (tmp_path / "half").exists()


def test_an_export_of_a_newer_format_is_refused_with_the_upgrade(tmp_path):
    export(pruned("sit"), tmp_path / "ref", "reference")
    manifest = json.loads((tmp_path / "ref" / "export.json").read_text())
    manifest["metadata"]["format_version"] += 1
    (tmp_path / "ref" / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"this export was saved by a newer entpruner-sdk "
                                         r"\(format 2; .*\): upgrade it"):
        load_exported(tmp_path / "ref")


def test_metadata_describes_the_objective():
    meta = export_metadata(pruned("dit"))
    assert meta["objective"]["num_timesteps"] == 1000 and meta["inputs"]["t"] == "int64 [N]"
    assert meta["null_class"] == 4


def test_cli_export_verify_then_sample(tmp_path, capsys):
    model_dir = save(pruned("dit"), tmp_path / "model")
    out = tmp_path / "exported"
    assert main(["export", "--model", str(model_dir), "--out", str(out), "--verify",
                 "--exporter", "torchscript"]) == 0
    printed = capsys.readouterr().out
    assert "relative error" in printed and "guided" in printed and "NO" not in printed
    assert main(["export", "--model", str(model_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["sample", "--model", str(out), "--labels", "0,1", "--steps", "3", "--cfg", "2",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", "--model", str(out), "--compile", "default",
                 "--out", str(tmp_path / "compiled.png")]) == 2
    assert "--compile applies to PyTorch models" in capsys.readouterr().err
    # evaluate takes the export too, beside the model it was made from
    import numpy as np

    from entpruner_sdk.data import load_data
    from tests.conftest import cache_a_quick_classifier

    digits = load_data("digits")
    first = (digits.labels < 4).numpy()  # the model's 4 classes
    np.savez(tmp_path / "four.npz", images=digits.images.numpy()[first][:40],
             labels=digits.labels.numpy()[first][:40])
    cache_a_quick_classifier(load_data(tmp_path / "four.npz"))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--original", str(model_dir), "--data",
                 str(tmp_path / "four.npz"), "--samples", "8", "--steps", "2", "--cfg", "2",
                 "--features", "domain", "--quiet", "--out", str(tmp_path / "eval")]) == 0
    assert "This model: the onnx export (fp32), run by onnxruntime" in capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["settings"]["runtime"]["backend"] == "onnxruntime"
    assert saved["fidelity"]["psnr"] > 40


def test_an_export_is_sampled_and_evaluated_as_its_model_is(onnx_export, tmp_path):
    """``sample`` and ``evaluate`` take an opened export where they take a model: what a
    deployment's precision and runtime cost in quality, measured from the model's own noise."""
    import entpruner_sdk as ep
    from entpruner_sdk.data import load_data
    from tests.conftest import cache_a_quick_classifier

    model, result = onnx_export
    runtime = load_exported(result.directory)
    run = dict(steps=3, cfg_scale=2.0, seed=4)
    assert torch.equal(ep.sample(runtime, [0, 3], **run), runtime.sample([0, 3], **run))
    with pytest.raises(ValueError, match="compile and reference_cfg apply to a PyTorch model"):
        ep.sample(runtime, [0], compile=True)
    digits = load_data("digits").per_class(4, torch.Generator().manual_seed(0))
    first = digits.labels < 4  # the model's 4 classes
    four = load_data((digits.images[first], digits.labels[first]))
    cache_a_quick_classifier(four)
    evaluation = dict(samples=16, batch_size=8, features=("domain",), progress=False, **run)
    report = ep.evaluate(runtime, four, original=model, **evaluation)
    assert report.settings["runtime"] == {"format": "onnx", "precision": "fp32",
                                          "backend": "onnxruntime",
                                          "providers": ["CPUExecutionProvider"]}
    assert "This model: the onnx export (fp32), run by onnxruntime" in report.to_markdown()
    # the same noise: the export's samples are the model's, to float error and 8-bit rounding
    assert report.fidelity["psnr"] > 40
    of_model = ep.evaluate(model, four, **evaluation)
    assert report.original_metrics == of_model.metrics and "runtime" not in of_model.settings
    assert report.metrics["class_accuracy"] == of_model.metrics["class_accuracy"]
    # the export can be the original too: its column is then the export's own figures
    reverse = ep.evaluate(model, four, original=runtime, **evaluation)
    assert reverse.original_metrics == report.metrics
    assert reverse.settings["original_runtime"]["format"] == "onnx"
    # by its path, evaluate (below the export layer) says how to open it
    with pytest.raises(CheckpointError, match="is an export, not a saved model: sample, "
                       r"evaluate and serve take it as it is \(in Python, opened with "
                       r"entpruner_sdk.export.load_exported\(path\)\)"):
        ep.evaluate(result.directory, four, **evaluation)
    with pytest.raises(ValueError, match="the likelihood needs the PyTorch model"):
        ep.evaluate(runtime, four, likelihood=4, **evaluation)
    with pytest.raises(ValueError, match="compile applies to PyTorch models, and an export's"):
        ep.evaluate(model, four, original=runtime, compile="default", **evaluation)
    # a resumed evaluation keys its batches by the export: stable when reopened, and another
    # export of the same model (another precision) is another key
    assert load_exported(result.directory).fingerprint == runtime.fingerprint
    fp16 = export(model, tmp_path / "fp16", "onnx-fp16", verify=False)
    assert load_exported(fp16.directory).fingerprint != runtime.fingerprint


def test_an_engine_splits_batches_beyond_its_profile(onnx_export, monkeypatch):
    """A TensorRT engine takes at most its profile's max batch: larger calls (an evaluation's
    250 samples, a guided batch doubled) are split, with the same images."""
    model, result = onnx_export
    runtime = load_exported(result.directory)
    whole = runtime.sample([0, 1, 2, 3, 1], steps=3, cfg_scale=2.0, seed=2)
    sizes = []
    run = runtime._run

    def recorded(session, feeds):
        sizes.append(len(feeds["x"]))
        return run(session, feeds)

    monkeypatch.setattr(runtime, "_run", recorded)
    runtime.max_batch = 2
    split = runtime.sample([0, 1, 2, 3, 1], steps=3, cfg_scale=2.0, seed=2)
    assert sizes and sizes == [2, 2, 1] * (len(sizes) // 3)  # each guided call of 5, split
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-5)


def test_a_cut_short_or_incomplete_copy_of_an_export_is_named_before_it_runs(onnx_export,
                                                                            tmp_path, capsys):
    import shutil

    _, result = onnx_export
    copy = tmp_path / "copy"
    shutil.copytree(result.directory, copy)
    assert load_exported(copy).config is not None and main(["info", "--model", str(copy)]) == 0
    size = (copy / "model.onnx").stat().st_size
    with open(copy / "model.onnx", "r+b") as graph:
        graph.truncate(1000)  # a copy cut short
    (copy / "model_cfg.onnx").unlink()
    damage = (f"model.onnx is 1,000 bytes on disk but was written as {size:,}; "
              "model_cfg.onnx is missing")
    with pytest.raises(ValueError) as raised:
        load_exported(copy)
    assert str(raised.value) == (f"the export in {copy} is incomplete or altered: {damage}. "
                                 "Copy the whole folder again, or export again")
    capsys.readouterr()
    assert main(["info", "--model", str(copy)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"entpruner info: error: this export is incomplete or altered: {damage}. Copy the "
        "whole folder again, or export again")
    assert main(["info", "--model", str(copy), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["export"]["damaged"] == damage.split("; ")
