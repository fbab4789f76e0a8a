"""The FastAPI application: /v1/generate, /v1/models, /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from entpruner_sdk.data.classes import resolve_labels
from entpruner_sdk.objectives import StepLimitExceeded
from entpruner_sdk.sampling import to_picture
from entpruner_sdk.serve.batcher import Job, MicroBatcher, Overloaded, ShuttingDown
from entpruner_sdk.serve.metrics import ServerMetrics
from entpruner_sdk.serve.models import ServedModel, batch_buckets
from entpruner_sdk.serve.schemas import GenerateRequest, GenerateResponse
from entpruner_sdk.serve.settings import ServerSettings
from entpruner_sdk.utils.timing import CallCounter

log = logging.getLogger("entpruner.serve")
ModelLoader = Callable[[], dict[str, ServedModel]]


class ServerState:
    """What the app holds between requests."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.models: dict[str, ServedModel] = {}
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.startup_error: BaseException | None = None  # why the models did not load


def _no_startup_traceback(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not (message.startswith("Traceback") or message.startswith("Application startup"))


def create_app(models: dict[str, ServedModel] | ModelLoader,
               settings: ServerSettings | None = None) -> FastAPI:
    """Build the app. ``models`` is a {name: ServedModel} dict or a function returning one
    (called at startup, so a Ray replica loads its own copy)."""
    settings = settings or ServerSettings()
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher = MicroBatcher(
            lambda jobs: _run_batch(state, jobs), max_batch_images=settings.max_batch_images,
            max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
            on_batch=state.metrics.observe_batch)
        state.batcher.start()
        try:
            state.models = await state.batcher.run_in_worker(
                models if callable(models) else lambda: dict(models))
            if not state.models:
                raise RuntimeError("no models to serve")
        except Exception as error:
            # the caller reports it in one line (the CLI's error); uvicorn would log the whole
            # traceback of a failed startup
            state.startup_error = error
            logging.getLogger("uvicorn.error").addFilter(_no_startup_traceback)
            await state.batcher.drain()
            raise
        if settings.warmup:
            await state.batcher.run_in_worker(
                lambda: _warm_up(state.models, settings.max_batch_images))
        state.ready = True
        yield
        state.ready = False  # readiness fails first, so balancers stop sending work
        await state.batcher.drain()

    app = FastAPI(title="entpruner", version="1", lifespan=lifespan,
                  description="Class-conditional sampling from (pruned) DiT / SiT models.")
    app.state.entpruner = state
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input back, and JSON has no NaN or Infinity:
        # a request that sent one would get a 500 instead of its 422
        return JSONResponse({"detail": _finite(jsonable_encoder(error.errors()))},
                            status_code=422)

    @app.post("/v1/generate", response_model=GenerateResponse,
              responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}, 504: {}})
    async def generate(body: GenerateRequest, request: Request):
        _authorize(request, settings)
        return await _generate(state, body)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        _authorize(request, settings)
        return {"models": [m.info() for m in state.models.values()]}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready", "models": sorted(state.models)}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.depth)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _generate(state: ServerState, body: GenerateRequest) -> GenerateResponse:
    settings, metrics = state.settings, state.metrics
    name = body.model or next(iter(state.models))
    model = state.models.get(name)
    if model is None:
        metrics.errors.labels("unknown_model").inc()
        raise HTTPException(404, f"unknown model {name!r}; served models: "
                                 f"{', '.join(sorted(state.models))} (see GET /v1/models)")
    request = _validated(model, body, settings, metrics)
    start = time.perf_counter()
    # An adaptive sampler's steps follow the whole batch: merged with other requests, one
    # request's images would depend on theirs. Its own key runs it alone.
    alone = object() if request["sampler"] in model.objective.adaptive_samplers else None
    job = Job(key=(name, request["sampler"], request["steps"], request["cfg_scale"],
                   tuple(request["sampler_settings"].items()), alone),
              images=len(request["labels"]), payload=request)
    try:
        (images, model_calls), stats = await asyncio.wait_for(
            asyncio.shield(state.batcher.submit(job)), settings.request_timeout_s)
    except Overloaded:
        metrics.requests.labels(name, "503").inc()
        metrics.errors.labels("overloaded").inc()
        raise HTTPException(503, f"server busy: {settings.max_queue} requests already queued; "
                                 "retry later", headers={
                                     "Retry-After": str(settings.retry_after_s)}) from None
    except ShuttingDown:
        metrics.requests.labels(name, "503").inc()
        raise HTTPException(503, "server is shutting down", headers={
            "Retry-After": str(settings.retry_after_s)}) from None
    except asyncio.TimeoutError:
        state.batcher.cancel(job)
        metrics.requests.labels(name, "504").inc()
        metrics.errors.labels("timeout").inc()
        raise HTTPException(504, f"request took longer than {settings.request_timeout_s} s; "
                                 "ask for fewer images or steps") from None
    except StepLimitExceeded as error:  # the request's steps and tolerances, not a fault
        metrics.requests.labels(name, "422").inc()
        metrics.errors.labels("invalid").inc()
        raise HTTPException(422, f"dopri5 needs more than {error.max_steps} steps to meet "
                                 f"atol={error.atol:g}, rtol={error.rtol:g} for these images: "
                                 f"ask for more steps (at most {settings.max_steps}) or looser "
                                 "sampler_settings atol / rtol") from None
    except Exception as error:
        log.exception("generation failed")
        metrics.requests.labels(name, "500").inc()
        metrics.errors.labels("internal").inc()
        raise HTTPException(500, f"generation failed: {error}") from error
    total = time.perf_counter() - start
    metrics.requests.labels(name, "200").inc()
    metrics.latency.labels(name).observe(total)
    metrics.images.labels(name).inc(len(images))
    encoded = _encode(images, body.output_format)
    return GenerateResponse(
        model=name, class_labels=request["labels"], seed=body.seed,
        sampler=request["sampler"], steps=request["steps"], cfg_scale=request["cfg_scale"],
        sampler_settings=request["sampler_settings"], model_calls=model_calls,
        timing=dict(queue_ms=1e3 * stats.queue_s, compute_ms=1e3 * stats.compute_s,
                    total_ms=1e3 * total, batch_images=stats.batch_images,
                    batch_requests=stats.batch_requests), **encoded)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity spelt as a string, as JSON can carry it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _validated(model: ServedModel, body: GenerateRequest, settings: ServerSettings,
               metrics: ServerMetrics) -> dict:
    """Fill defaults and check the request against the model and the limits (422 if not)."""
    defaults = model.defaults
    sampler = body.sampler or defaults["sampler"]
    steps = body.steps or defaults["steps"]
    cfg_scale = defaults["cfg_scale"] if body.cfg_scale is None else body.cfg_scale
    problems = []
    try:
        ids = resolve_labels(body.class_labels, model.config.num_classes, model.class_names)
    except ValueError as error:
        ids = []
        problems.append(f"model {model.name!r}: {error}")
    labels = [label for label in ids for _ in range(body.num_images)]
    objective = model.objective
    if sampler not in model.objective.samplers:
        problems.append(f"unknown sampler {sampler!r} for a {model.config.family.upper()} "
                        f"model; choose one of {', '.join(model.objective.samplers)}")
    else:
        try:
            objective = objective.with_sampler_settings(sampler, **(body.sampler_settings or {}))
        except ValueError as error:
            problems.append(str(error))
    if steps > settings.max_steps:
        problems.append(f"steps {steps} exceeds the limit of {settings.max_steps}")
    elif sampler in model.objective.samplers:
        try:
            model.objective.check_steps(sampler, steps)
        except ValueError as error:
            problems.append(str(error))
    if len(labels) > settings.max_images_per_request:
        problems.append(f"{len(labels)} images requested (labels x num_images); the limit is "
                        f"{settings.max_images_per_request} per request")
    if cfg_scale > settings.max_cfg_scale:
        problems.append(f"cfg_scale {cfg_scale} exceeds the limit of {settings.max_cfg_scale}")
    if problems:
        metrics.requests.labels(model.name, "422").inc()
        metrics.errors.labels("invalid").inc()
        raise HTTPException(422, "; ".join(problems))
    return dict(labels=labels, seed=body.seed, sampler=sampler, steps=steps,
                cfg_scale=float(cfg_scale), objective=objective,
                sampler_settings=objective.settings_for(sampler))


def _run_batch(state: ServerState, jobs: list[Job]) -> list[np.ndarray]:
    """One model call for the whole batch; each job keeps its own seed's noise. Returns numpy,
    so no PyTorch op runs outside the model thread."""
    first = jobs[0].payload
    model = state.models[jobs[0].key[0]]
    labels = [label for job in jobs for label in job.payload["labels"]]
    counter = CallCounter()
    images = model.generate(labels, [job.payload["seed"] for job in jobs],
                            [job.images for job in jobs], sampler=first["sampler"],
                            steps=first["steps"], cfg_scale=first["cfg_scale"],
                            objective=first["objective"], counter=counter)
    state.metrics.model_calls.labels(jobs[0].key[0]).inc(counter.calls)
    split = np.split(images.numpy(), np.cumsum([job.images for job in jobs])[:-1])
    return [(part, counter.calls) for part in split]


def _warm_up(models: dict[str, ServedModel], max_batch_images: int) -> None:
    for model in models.values():
        if model.compile:
            log.info("compiling %s (torch.compile %s) for batches of %s rows", model.name,
                     model.compile, ", ".join(map(str, batch_buckets(max_batch_images))))
            started = time.perf_counter()
            model.warm_up(max_batch_images)
            log.info("%s compiled in %.0f s", model.name, time.perf_counter() - started)
        defaults = model.defaults
        model.generate([0], [0], [1], sampler=defaults["sampler"], steps=2,
                       cfg_scale=defaults["cfg_scale"])


def _encode(images: np.ndarray, output_format: str) -> dict:
    if output_format == "array":
        array = images.astype("<f4")
        return {"array": {"shape": list(array.shape),
                          "data": base64.b64encode(array.tobytes()).decode()}}
    return {"images_png": [_png(image) for image in images]}


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    to_picture(torch.from_numpy(image)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _authorize(request: Request, settings: ServerSettings) -> None:
    if settings.api_key is None:
        return
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header")


def decode_array(payload: dict) -> np.ndarray:
    """The float32 array of an ``output_format: array`` response."""
    return np.frombuffer(base64.b64decode(payload["data"]), dtype="<f4").reshape(
        payload["shape"])


class BodyLimit:
    """Reject request bodies above ``max_bytes`` with 413, before they are buffered."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes, scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted_receive, send)
        except BodyTooLarge:
            await _too_large(self.max_bytes, scope, receive, send)


class BodyTooLarge(Exception):
    """A request body over ``max_body_bytes``, stopped while it is read."""


async def _too_large(limit: int, scope, receive, send) -> None:
    response = JSONResponse({"detail": f"request body larger than {limit} bytes; send fewer "
                                       "labels per request"}, status_code=413)
    await response(scope, receive, send)
