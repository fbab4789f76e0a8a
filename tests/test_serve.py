"""The HTTP server, for real: uvicorn on a free loopback port, driven by an HTTP client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.serve import ServerSettings, create_app, decode_array, parse_model_specs
from entpruner_sdk.serve.models import (
    _from_torch,
    batch_buckets,
    load_served_model,
    padded_to_buckets,
)
from entpruner_sdk.serve.server import check_exposure
from tests.conftest import free_port, latent_model, randomized, tiny_config, tiny_vae

uvicorn = pytest.importorskip("uvicorn")


@contextlib.contextmanager
def running(models, settings: ServerSettings):
    """A real uvicorn server in a thread; stopped (gracefully) on exit."""
    port = free_port()
    app = create_app(models, settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz").status_code == 200:
                break
        time.sleep(0.05)
    else:
        raise RuntimeError("server did not become ready")
    try:
        yield url, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


NAMES = ["circle", "square", "star", "moon"]


def tiny_models():
    dit = randomized(DiffusionTransformer(tiny_config("dit", num_classes=4),
                                          provenance={"class_names": NAMES}))
    sit = randomized(DiffusionTransformer(tiny_config("sit", num_classes=4)), seed=1)
    return {"dit": _from_torch("dit", dit, torch.device("cpu"), "tiny"),
            "sit": _from_torch("sit", sit.keep_blocks([0, 3]), torch.device("cpu"), "tiny")}


@pytest.fixture(scope="module")
def server():
    settings = ServerSettings(max_batch_images=8, max_wait_ms=50, max_steps=20,
                              max_images_per_request=8, max_body_bytes=2048)
    with running(tiny_models(), settings) as (url, _):
        yield url


def generate(url, **body):
    # json.dumps as Python's own clients send it: NaN passes as the bare token NaN
    return httpx.post(url + "/v1/generate", content=json.dumps(body), timeout=60,
                      headers={"content-type": "application/json"})


def test_health_ready_models_and_openapi(server):
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server + "/readyz").json()["models"] == ["dit", "sit"]
    models = {m["name"]: m for m in httpx.get(server + "/v1/models").json()["models"]}
    assert models["sit"]["depth"] == 2 and models["sit"]["kept_blocks"] == [0, 3]
    assert models["dit"]["family"] == "dit" and models["dit"]["backend"] == "torch"
    assert models["dit"]["parameters"] > 0 and "compression" not in models["dit"]
    schema = httpx.get(server + "/openapi.json").json()
    assert "/v1/generate" in schema["paths"] and "GenerateRequest" in schema["components"][
        "schemas"]


def test_generate_png_and_array(server):
    response = generate(server, model="dit", class_labels=[0, 3], num_images=2, seed=4,
                        steps=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images_png"]) == 4 and body["sampler"] == "ddim"
    assert body["model_calls"] == 3  # one a step, the guided halves in one call
    from PIL import Image

    picture = Image.open(io.BytesIO(base64.b64decode(body["images_png"][0])))
    assert picture.size == (8, 8)
    assert body["timing"]["total_ms"] >= body["timing"]["compute_ms"] > 0
    raw = generate(server, model="sit", class_labels=[1], seed=4, steps=3, sampler="euler",
                   output_format="array").json()
    array = decode_array(raw["array"])
    assert array.shape == (1, 1, 8, 8) and np.isfinite(array).all()
    dit = {sampler: decode_array(generate(server, model="dit", class_labels=[1], seed=4, steps=3,
                                          sampler=sampler, output_format="array").json()["array"])
           for sampler in ("ddim", "dpm-solver++")}
    assert np.isfinite(dit["dpm-solver++"]).all() and not np.array_equal(*dit.values())
    assert raw["model_calls"] == 3
    solved = generate(server, model="sit", class_labels=[1], seed=4, steps=20,
                      sampler="dopri5", output_format="array").json()
    adaptive = decode_array(solved["array"])
    assert np.isfinite(adaptive).all() and not np.array_equal(adaptive, array)  # vs euler x 3
    # the calls its tolerances needed: 2 to pick the first step, then 6 a step, at most 20
    assert solved["steps"] == 20 and 8 <= solved["model_calls"] <= 6 * 20 + 2
    assert solved["sampler_settings"] == {"atol": 1e-6, "rtol": 1e-3}


def test_sampler_settings_reach_the_samples_and_the_response(server):
    models = {m["name"]: m for m in httpx.get(server + "/v1/models").json()["models"]}
    assert models["dit"]["sampler_settings"] == {}
    sde_defaults = {"diffusion_form": "sigma", "diffusion_norm": 1.0, "last_step": "Mean",
                    "last_step_size": 0.04}
    assert models["sit"]["sampler_settings"] == {"atol": 1e-6, "rtol": 1e-3, **sde_defaults}
    body = dict(model="sit", class_labels=[1, 2], seed=4, steps=6, sampler="heun-sde",
                output_format="array")
    default = generate(server, **body).json()
    assert default["sampler_settings"] == sde_defaults
    assert default["model_calls"] == 2 * 6 - 1  # Heun steps, the last one Euler's
    tuned = generate(server, sampler_settings={"diffusion_norm": 0.0}, **body).json()
    assert tuned["sampler_settings"] == {**sde_defaults, "diffusion_norm": 0.0}
    # the reference's forms and last steps by name; JSON null is its --last-step None
    named = generate(server, sampler_settings={"diffusion_form": "constant", "last_step": None},
                     **body).json()
    assert named["sampler_settings"] == {"diffusion_form": "constant", "diffusion_norm": 1.0,
                                         "last_step": "None"}
    assert named["model_calls"] == 2 * (6 - 1)  # no last step, no last call
    assert not np.allclose(decode_array(named["array"]), decode_array(default["array"]))
    # the same seed without diffusion: the ODE on the SDE's grid, other images
    assert not np.allclose(decode_array(tuned["array"]), decode_array(default["array"]))
    # requests with other settings are never merged into one batch
    responses = concurrently(server, [dict(body, sampler_settings={"diffusion_norm": norm})
                                      for norm in (0.0, 1.0, 0.0)])
    assert max(r["timing"]["batch_requests"] for r in responses) <= 2
    np.testing.assert_allclose(decode_array(responses[0]["array"]),
                               decode_array(tuned["array"]), atol=1e-4)
    np.testing.assert_allclose(decode_array(responses[1]["array"]),
                               decode_array(default["array"]), atol=1e-4)
    assert generate(server, model="dit", class_labels=[1], steps=2).json()[
        "sampler_settings"] == {}


def test_classes_by_name(server):
    models = {m["name"]: m for m in httpx.get(server + "/v1/models").json()["models"]}
    assert models["dit"]["class_names"] == NAMES and "class_names" not in models["sit"]
    by_name = generate(server, model="dit", class_labels=["star", 0], seed=2, steps=3,
                       output_format="array").json()
    by_id = generate(server, model="dit", class_labels=[2, 0], seed=2, steps=3,
                     output_format="array").json()
    assert by_name["class_labels"] == [2, 0]
    np.testing.assert_allclose(decode_array(by_name["array"]), decode_array(by_id["array"]),
                               atol=1e-4)
    response = generate(server, model="dit", class_labels=["sun"])
    assert response.status_code == 422
    assert "unknown class label 'sun': the classes are 0..3 (0 circle, 1 square" in \
        response.json()["detail"]
    # a model without names takes ids only
    assert generate(server, model="sit", class_labels=["star"]).status_code == 422


def concurrently(url, bodies) -> list[dict]:
    """The JSON answers to /v1/generate requests sent all at once."""
    async def send():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[client.post(url + "/v1/generate", json=body)
                                          for body in bodies])

    return [response.json() for response in asyncio.run(send())]


def test_same_seed_same_images_batched_or_not(server):
    """Concurrent requests are batched together; each still gets its own seed's images."""
    body = dict(model="sit", class_labels=[1, 2], steps=4, sampler="euler-maruyama",
                output_format="array")
    alone = {seed: decode_array(generate(server, seed=seed, **body).json()["array"])
             for seed in (1, 2, 3)}
    responses = concurrently(server, [dict(body, seed=seed) for seed in (1, 2, 3)])
    assert max(r["timing"]["batch_requests"] for r in responses) > 1  # really batched
    for seed, response in zip((1, 2, 3), responses):
        np.testing.assert_allclose(decode_array(response["array"]), alone[seed], atol=1e-4)
    assert not np.allclose(alone[1], alone[2])


def test_adaptive_sampler_requests_run_alone(server):
    """dopri5's steps follow the error of its whole batch, so its requests are not merged:
    each request's images stay exactly those it gets alone."""
    body = dict(model="sit", class_labels=[1, 2], steps=20, sampler="dopri5",
                output_format="array")
    alone = {seed: generate(server, seed=seed, **body).json()["array"] for seed in (1, 2, 3)}
    responses = concurrently(server, [dict(body, seed=seed) for seed in (1, 2, 3)])
    assert [r["timing"]["batch_requests"] for r in responses] == [1, 1, 1]
    assert [r["array"] for r in responses] == [alone[seed] for seed in (1, 2, 3)]


@pytest.mark.parametrize("body, status, message", [
    (dict(class_labels=[9]), 422, "unknown class label 9"),
    (dict(class_labels=[0], steps=100), 422, "exceeds the limit of 20"),
    (dict(class_labels=[0, 1, 2], num_images=3), 422, "limit is 8 per request"),
    (dict(class_labels=[0], sampler="heun"), 422, "unknown sampler 'heun'"),
    (dict(model="sit", class_labels=[0], sampler="heun-sde", steps=1), 422,
     "'heun-sde' needs at least 2 steps"),
    (dict(class_labels=[0], sampler="ddim", steps=1), 422, "'ddim' needs at least 2 steps"),
    (dict(model="sit", class_labels=[0], sampler="heun", sampler_settings={"atol": 1e-3}),
     422, "atol sets only dopri5, not heun"),
    (dict(model="sit", class_labels=[0], sampler="dopri5", sampler_settings={"atol": -1}),
     422, "dopri5 tolerances must be positive"),
    (dict(class_labels=[0], sampler_settings={"atol": 1e-3}), 422,
     "DIT sampling has no setting atol"),
    (dict(model="sit", class_labels=[0], sampler="heun-sde",
          sampler_settings={"last_step": "Heun"}), 422,
     "unknown SDE last_step 'Heun'; choose one of Mean, Tweedie, Euler, None"),
    (dict(model="sit", class_labels=[0], sampler="dopri5", sampler_settings={"atol": "tight"}),
     422, "sampler settings must be finite numbers, got atol='tight'"),
    (dict(class_labels=[0], cfg_scale=50), 422, "cfg_scale 50"),
    # JSON's NaN, as Python's json writes it: a 422 that echoes it as a string, not a 500
    (dict(class_labels=[0], cfg_scale=float("nan")), 422, "Input should be a finite number"),
    (dict(class_labels=[0], seed=float("nan")), 422, '"input":"nan"'),
    (dict(class_labels=[True]), 422, "Input should be a valid integer"),
    # the step cap the request chose, met before its tolerances: its own error, not a 500
    (dict(model="sit", class_labels=[0], sampler="dopri5", steps=1), 422,
     "dopri5 needs more than 1 steps to meet atol=1e-06, rtol=0.001 for these images: ask "
     "for more steps (at most 20) or looser sampler_settings atol / rtol"),
    (dict(class_labels=[0], model="nope"), 404, "unknown model 'nope'"),
    (dict(class_labels=[]), 422, "at least 1"),
    (dict(class_labels=[0], colour="red"), 422, "Extra inputs"),
    (dict(class_labels=list(range(900))), 413, "larger than 2048 bytes"),
])
def test_bad_requests_get_clear_4xx(server, body, status, message):
    response = generate(server, **{"model": "dit", **body})
    assert response.status_code == status
    assert message in response.text


def model_calls_counted(url: str, model: str) -> float:
    line = f'entpruner_model_calls_total{{model="{model}"}} '
    text = httpx.get(url + "/metrics").text
    return sum(float(row[len(line):]) for row in text.splitlines() if row.startswith(line))


def test_metrics_in_prometheus_format(server):
    before = model_calls_counted(server, "dit")
    calls = generate(server, model="dit", class_labels=[1], steps=2).json()["model_calls"]
    generate(server, model="dit", class_labels=[99], steps=2)
    # the refused request made none, the warm-up's are not counted
    assert model_calls_counted(server, "dit") - before == calls == 2
    text = httpx.get(server + "/metrics").text
    assert 'entpruner_requests_total{model="dit",status="200"}' in text
    assert 'entpruner_requests_total{model="dit",status="422"}' in text
    assert "entpruner_request_latency_seconds_bucket" in text
    assert "entpruner_batch_images_count" in text and "entpruner_queue_depth" in text
    assert 'entpruner_errors_total{reason="invalid"}' in text


def test_overload_answers_503_with_retry_after_and_loses_no_accepted_request():
    settings = ServerSettings(max_batch_images=1, max_wait_ms=0, max_queue=2, max_steps=50)
    with running(tiny_models(), settings) as (url, _):
        async def flood():
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(*[
                    client.post(url + "/v1/generate",
                                json=dict(model="dit", class_labels=[0], steps=40, seed=i))
                    for i in range(12)])

        responses = asyncio.run(flood())
        codes = [r.status_code for r in responses]
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "retry later" in busy.text
        assert 'status="503"' in httpx.get(url + "/metrics").text


def test_request_timeout_gives_504():
    settings = ServerSettings(request_timeout_s=0.05, max_steps=250, warmup=False)
    with running(tiny_models(), settings) as (url, _):
        response = generate(url, model="dit", class_labels=[0, 1, 2, 3], steps=250)
        assert response.status_code == 504 and "longer than" in response.text


def test_graceful_shutdown_finishes_accepted_requests():
    settings = ServerSettings(max_batch_images=1, max_wait_ms=0)
    results, finished = [], []
    with running(tiny_models(), settings) as (url, server):
        def client(seed):
            results.append(generate(url, model="dit", class_labels=[0], steps=200, seed=seed))
            finished.append(time.time())

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the requests are accepted and queued
        server.should_exit = True  # what SIGTERM does
        stop_requested = time.time()
        for thread in threads:
            thread.join(timeout=60)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert max(finished) > stop_requested  # some were still running when the stop came


class FailsOnClass3(DiffusionTransformer):
    """A model that fails for one class, as a GPU out of memory fails one large request."""

    def forward(self, x, t, y, *args, **kwargs):
        if (y == 3).any():
            raise RuntimeError("CUDA out of memory (injected)")
        return super().forward(x, t, y, *args, **kwargs)


def test_a_failing_batch_fails_its_own_requests_and_the_server_serves_on():
    model = randomized(FailsOnClass3(tiny_config("dit", num_classes=4)))
    models = {"dit": _from_torch("dit", model, torch.device("cpu"), "tiny")}
    with running(models, ServerSettings(warmup=False, max_steps=20)) as (url, _):
        failed = generate(url, model="dit", class_labels=[3], steps=2)
        assert failed.status_code == 500
        assert "generation failed: CUDA out of memory (injected)" in failed.text
        assert generate(url, model="dit", class_labels=[0, 1], steps=2).status_code == 200
        text = httpx.get(url + "/metrics").text
        assert 'status="500"' in text and 'entpruner_errors_total{reason="internal"}' in text
        assert httpx.get(url + "/readyz").status_code == 200


def test_api_key():
    with running(tiny_models(), ServerSettings(api_key="s3cret")) as (url, _):
        assert httpx.get(url + "/v1/models").status_code == 401
        assert "X-API-Key" in generate(url, class_labels=[0], steps=2).text
        ok = httpx.get(url + "/v1/models", headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200  # probes need no key


def test_exposure_warning_and_model_specs():
    with pytest.warns(UserWarning, match="without an API key"):
        check_exposure("0.0.0.0", ServerSettings())
    check_exposure("127.0.0.1", ServerSettings())  # loopback: quiet
    assert parse_model_specs(["dit-digits", "p=runs/x/model/"]) == {
        "dit-digits": "dit-digits", "p": "runs/x/model/"}
    with pytest.raises(ValueError, match="two models are named"):
        parse_model_specs(["a=x", "a=y"])


def test_onnxruntime_backend_serves_the_same_images(tmp_path):
    pytest.importorskip("onnxruntime")
    from entpruner_sdk.export import export
    from entpruner_sdk.models.io import load, save

    model = randomized(DiffusionTransformer(tiny_config("dit", num_classes=4)))
    # as compress saves a model: its report's summary beside the weights, kept by the export
    made = {"budget": "keep 4 blocks", "sampling_latency": {"speedup": 1.5}}
    save(model, tmp_path / "model", compression=made)
    export(load(tmp_path / "model"), tmp_path / "onnx", "onnx", exporter="torchscript")
    models = {"torch": load_served_model("torch", str(tmp_path / "model"), "torch", "cpu"),
              "onnx": load_served_model("onnx", str(tmp_path / "onnx"), "onnxruntime")}
    assert models["onnx"].backend == "onnxruntime"
    # an export runs on its own runtime: asking for another one is refused, not ignored
    with pytest.raises(ValueError, match=f"{tmp_path / 'onnx'} holds the onnx export, run by "
                       "onnxruntime, not tensorrt: drop --backend"):
        load_served_model("x", str(tmp_path / "onnx"), "tensorrt")
    with running(models, ServerSettings()) as (url, _):
        body = dict(class_labels=[1, 2], steps=5, seed=3, output_format="array", cfg_scale=2.0)
        a = decode_array(generate(url, model="torch", **body).json()["array"])
        b = decode_array(generate(url, model="onnx", **body).json()["array"])
        np.testing.assert_allclose(a, b, atol=1e-3)
        info = {m["name"]: m for m in httpx.get(url + "/v1/models").json()["models"]}
        assert info["onnx"]["backend"] == "onnxruntime"
        assert info["onnx"]["compression"] == info["torch"]["compression"] == made
        # what runs each: an export says its format and precision, a PyTorch model nothing
        assert info["onnx"]["export"] == {"format": "onnx", "precision": "fp32",
                                          "backend": "onnxruntime",
                                          "providers": ["CPUExecutionProvider"]}
        assert "export" not in info["torch"]
    with pytest.raises(ValueError, match="compile applies to a PyTorch model served by "
                       "PyTorch, not to an export"):
        load_served_model("x", str(tmp_path / "onnx"), compile="default")


def test_padding_to_buckets_calls_the_model_at_powers_of_two_only():
    seen = []

    def model_fn(x, t, y):
        seen.append(x.shape[0])
        return x * t[:, None, None, None] + y[:, None, None, None]

    padded = padded_to_buckets(model_fn)
    for rows in range(1, 10):
        x, t, y = torch.randn(rows, 1, 2, 2), torch.rand(rows), torch.arange(rows)
        out = padded(x, t, y)
        torch.testing.assert_close(out, model_fn(x, t, y), rtol=0, atol=0)
        assert out.shape[0] == rows
    assert seen[::2] == [1, 2, 4, 4, 8, 8, 8, 8, 16]  # the padded calls, between the plain ones
    # a copy: a CUDA graph replays into the buffer it returned last time
    kept = torch.zeros(2, 1, 2, 2)
    assert padded_to_buckets(lambda x, t, y: kept)(*(torch.zeros(2),) * 3).data_ptr() != (
        kept.data_ptr())
    # a server of batches of up to 3 images calls with up to 6 rows (guided), so up to 8
    assert batch_buckets(3) == [1, 2, 4, 8] and batch_buckets(1) == [1, 2]
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; choose one of default"):
        load_served_model("x", "dit-digits", compile="fast")


@pytest.mark.slow
def test_a_compiled_model_is_compiled_before_ready_and_serves_what_eager_does():
    from torch._dynamo.utils import counters

    model = randomized(DiffusionTransformer(tiny_config("dit", num_classes=4)))
    models = {"eager": _from_torch("eager", model, torch.device("cpu"), "tiny"),
              "compiled": _from_torch("compiled", model, torch.device("cpu"), "tiny",
                                      compile="default")}
    rows, padded = [], models["compiled"].model_fn
    models["compiled"].model_fn = lambda x, t, y: rows.append(x.shape[0]) or padded(x, t, y)
    settings = ServerSettings(max_batch_images=4, max_images_per_request=4, max_steps=20)
    before = counters["stats"]["unique_graphs"]
    with running(models, settings) as (url, _):
        info = {m["name"]: m for m in httpx.get(url + "/v1/models").json()["models"]}
        assert info["compiled"]["compile"] == "default" and "compile" not in info["eager"]
        # before /readyz said ready, the warm-up compiled for every batch size: up to 4
        # images, 8 rows guided
        assert sorted(set(rows)) == [1, 2, 4, 8]
        graphs = counters["stats"]["unique_graphs"]
        assert graphs > before
        # one image unguided (1 row), three guided (6 rows, run at 8), and a batch of both
        bodies = [dict(class_labels=[1], cfg_scale=1.0, seed=5),
                  dict(class_labels=[0, 2, 3], cfg_scale=2.0, seed=6)]
        for body in bodies:
            body.update(steps=3, output_format="array")
            eager, compiled = (decode_array(generate(url, model=name, **body).json()["array"])
                               for name in ("eager", "compiled"))
            np.testing.assert_allclose(compiled, eager, atol=1e-4)
        batched = concurrently(url, [dict(bodies[1], model="compiled", class_labels=[0, 2],
                                          seed=seed) for seed in (7, 8)])
        assert max(r["timing"]["batch_images"] for r in batched) == 4  # 8 rows, guided
        assert counters["stats"]["unique_graphs"] == graphs  # no request paid for a compile


def test_a_latent_model_is_served_as_images_through_its_vae(tmp_path):
    from entpruner_sdk.data import DataError
    from entpruner_sdk.data.latents import LatentSpace
    from entpruner_sdk.models.io import save

    vae = tiny_vae(tmp_path / "vae")
    model = latent_model()
    save(model, tmp_path / "model")
    with pytest.raises(DataError, match="samples 4x8x8 VAE latents, not images"):
        load_served_model("latent", str(tmp_path / "model"))
    served = load_served_model("latent", str(tmp_path / "model"), vae=str(vae))
    with running({"latent": served}, ServerSettings()) as (url, _):
        info = httpx.get(url + "/v1/models").json()["models"][0]
        assert info["image_shape"] == [3, 16, 16] and info["latent"]
        body = dict(model="latent", class_labels=[1, 2], steps=3, seed=3, cfg_scale=2.0)
        array = decode_array(generate(url, output_format="array", **body).json()["array"])
        png = generate(url, **body).json()["images_png"][0]
    from PIL import Image

    assert array.shape == (2, 3, 16, 16)
    assert Image.open(io.BytesIO(base64.b64decode(png))).size == (16, 16)
    # the served images are the model's latents, decoded by the VAE
    latents = _from_torch("plain", model, torch.device("cpu"), "").generate(
        [1, 2], [3], [2], sampler="ddim", steps=3, cfg_scale=2.0)
    assert latents.shape == (2, 4, 8, 8)
    decoded = LatentSpace.from_pretrained(vae).decode(latents)
    np.testing.assert_allclose(array, decoded.numpy(), atol=1e-5)
    # what a compiled model's warm-up asks for: the latents, left undecoded
    undecoded = served.generate([1, 2], [3], [2], sampler="ddim", steps=3, cfg_scale=2.0,
                                decode=False)
    torch.testing.assert_close(undecoded, latents)


def test_a_released_checkpoint_is_served_with_its_family(tmp_path):
    from entpruner_sdk.models.io import CheckpointError

    model = randomized(DiffusionTransformer(tiny_config("sit", hidden_size=64, num_heads=2)))
    torch.save(model.state_dict(), tmp_path / "released.pt")
    with pytest.raises(CheckpointError, match=r"--family dit\|sit"):
        load_served_model("x", str(tmp_path / "released.pt"))
    served = load_served_model("x", str(tmp_path / "released.pt"), family="sit", num_heads=2)
    assert served.config == model.config and served.info()["samplers"][0] == "euler"


def test_a_model_that_does_not_load_stops_the_server_with_one_line(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "entpruner_sdk", "serve", "--model",
                          f"x={tmp_path / 'nowhere'}", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line or "error" in line]
    assert errors == [f"entpruner serve: error: {tmp_path / 'nowhere'} is neither a bundled "
                      "teacher (dit-digits, sit-digits, dit-photos, sit-photos) nor an existing "
                      "file or folder; pass a checkpoint file or a model directory"]
    assert "Traceback" not in run.stderr


def test_a_port_taken_or_out_of_range_is_refused_before_any_model_loads(tmp_path):
    import socket

    from entpruner_sdk.serve import serve

    nowhere = {"x": str(tmp_path / "nowhere")}  # would fail to load: never reached
    with pytest.raises(ValueError, match=r"port 70000 is not a TCP port: use 1 to 65535"):
        serve(nowhere, port=70000)
    with socket.socket() as holder:  # another server on the port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .*; choose "
                                          r"another --port, or stop what holds it"):
            serve(nowhere, port=port)
    with pytest.raises(OSError, match=r"--host must be an address of this machine"):
        serve(nowhere, host="no-such-host.invalid", port=free_port())


@pytest.mark.slow
def test_ray_serve_replicas_answer(tmp_path):
    pytest.importorskip("ray")
    import ray
    from ray import serve

    from entpruner_sdk.models.io import save
    from entpruner_sdk.serve import serve_ray

    save(randomized(DiffusionTransformer(tiny_config("dit", num_classes=4))), tmp_path / "m")
    port = free_port()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve_ray({"tiny": str(tmp_path / "m")}, port=port, replicas=2, blocking=False,
                  device="cpu")
        response = httpx.post(f"http://127.0.0.1:{port}/v1/generate",
                              json=dict(class_labels=[1, 2], steps=3), timeout=120)
        assert response.status_code == 200 and len(response.json()["images_png"]) == 2
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        status = serve.status().applications["entpruner"]
        replicas = next(iter(status.deployments.values())).replica_states
        assert replicas.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()


def test_serve_package_names_load_on_first_use():
    import entpruner_sdk.serve as package
    from entpruner_sdk.serve.models import BACKENDS

    assert package.BACKENDS is BACKENDS and "serve" in dir(package)
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        package.not_a_name  # noqa: B018
