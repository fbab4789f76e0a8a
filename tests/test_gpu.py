"""GPU paths (skipped without CUDA; run with `python -m pytest -m gpu` or benchmarks/gpu.sh)."""

from __future__ import annotations

import pytest
import torch

from entpruner_sdk.compress import compress
from entpruner_sdk.data import load_data
from entpruner_sdk.importance import CED, CalibrationSet
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.sampling import sample
from tests.conftest import randomized, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def model(family="dit"):
    return randomized(DiffusionTransformer(tiny_config(family, depth=4))).eval()


@pytest.mark.parametrize("family", ["dit", "sit"])
def test_cuda_bf16_sampling_matches_cpu(family):
    net = model(family)
    cpu = sample(net, [0, 1, 2], steps=5, cfg_scale=2.0, seed=1, device="cpu")
    gpu = sample(net, [0, 1, 2], steps=5, cfg_scale=2.0, seed=1, device="cuda")
    assert gpu.device.type == "cpu" and torch.isfinite(gpu).all()
    # bf16 autocast: same noise, close images
    assert (gpu - cpu).abs().max() / cpu.abs().max() < 0.1


def test_compiled_and_cuda_graph_sampling_match_eager():
    net = model().cuda()
    eager = sample(net, [0, 1], steps=4, seed=2, device="cuda")
    for mode in (True, "reduce-overhead"):
        out = sample(net, [0, 1], steps=4, seed=2, device="cuda", compile=mode)
        torch.testing.assert_close(out, eager, rtol=5e-2, atol=5e-2)


def test_ced_on_cuda_equals_cpu_ranking():
    net = model()
    calibration = CalibrationSet.build(load_data("digits"), objective_for(net), 2, 2, seed=0)
    on_cpu = CED().score(net, objective_for(net), calibration, torch.device("cpu"))
    on_gpu = CED().score(net.cuda(), objective_for(net), calibration, torch.device("cuda"))
    assert on_gpu.kept_blocks == on_cpu.kept_blocks
    assert len(on_gpu.scores) == net.depth and all(s >= 0 for s in on_gpu.scores)
    # bf16 moves the entropies a little; the ranking of clearly different blocks must hold
    assert torch.corrcoef(torch.tensor([on_cpu.scores, on_gpu.scores]))[0, 1] > 0.9


def test_compress_on_cuda():
    result = compress(model(), "digits", 2, steps=12, batch_size=8, interval=4,
                      calibration_per_class=2, calibration_times=2, proxy_samples=4,
                      report_samples=0, progress=False, device="cuda")
    assert result.model.depth == 2
    assert result.report["summary"]["sampling_latency"]["device"].startswith("cuda")
