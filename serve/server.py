"""Run the app: uvicorn on one machine, or Ray Serve replicas across a cluster."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entpruner_sdk.serve.settings import ServerSettings
from entpruner_sdk.utils.network import check_address, check_port, is_loopback

if TYPE_CHECKING:  # FastAPI and the models are imported when the server starts
    from entpruner_sdk.serve.app import ModelLoader
    from entpruner_sdk.serve.models import ServedModel


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """``["dit-digits", "pruned=runs/x/model"]`` -> {name: source}; unnamed sources are named
    after their last path part."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            name, source = Path(spec.rstrip("/")).name or spec, spec
        if not name or not source:
            raise ValueError(f"--model {spec!r}: use DIR or NAME=DIR")
        if name in models:
            raise ValueError(f"two models are named {name!r}; name them with NAME=DIR")
        models[name] = source
    if not models:
        raise ValueError("give at least one --model")
    return models


def model_loader(specs: dict[str, str], backend: str, device: str | None = None,
                 provider: str | None = None, vae: str | None = None,
                 family: str | None = None, num_heads: int | None = None,
                 flow_path: str | None = None, compile: str | None = None) -> ModelLoader:
    """A function that opens every model (run at startup, in whichever process serves);
    ``vae``: the folder of the VAE that decodes the latent models' samples (opened once);
    ``family``, ``num_heads`` and ``flow_path``: for released checkpoints, whose weights do
    not say; ``compile``: the torch.compile mode of PyTorch models (None: eager)."""

    def load() -> dict[str, ServedModel]:
        from entpruner_sdk.data.latents import LatentSpace
        from entpruner_sdk.serve.models import load_served_model

        decoder = LatentSpace.from_pretrained(vae, device=device) if vae else None
        return {name: load_served_model(name, source, backend, device, provider, decoder,
                                        family, num_heads, flow_path, compile)
                for name, source in specs.items()}

    return load


def check_exposure(host: str, settings: ServerSettings) -> None:
    """Warn when the API is reachable from other machines without a key."""
    if not is_loopback(host) and settings.api_key is None:
        warnings.warn(f"serving on {host} without an API key: anyone who can reach this "
                      "address can use the server; set --api-key or ENTPRUNER_API_KEY",
                      stacklevel=2)


def serve(specs: dict[str, str], *, backend: str = "torch", host: str = "127.0.0.1",
          port: int = 8000, settings: ServerSettings | None = None, device: str | None = None,
          provider: str | None = None, log_level: str = "info", vae: str | None = None,
          family: str | None = None, num_heads: int | None = None,
          flow_path: str | None = None, compile: str | None = None) -> None:
    """Serve ``specs`` ({name: source}) with uvicorn until interrupted (SIGINT / SIGTERM
    finish the accepted requests first). ``vae``: the VAE folder for latent models;
    ``family``, ``num_heads`` and ``flow_path``: for released checkpoints; ``compile``: a
    torch.compile mode for PyTorch models, compiled for every batch size before the server
    is ready."""
    import uvicorn

    from entpruner_sdk.serve.app import create_app

    settings = settings or ServerSettings(api_key=os.environ.get("ENTPRUNER_API_KEY"))
    check_address(host, port)
    check_exposure(host, settings)
    app = create_app(model_loader(specs, backend, device, provider, vae, family, num_heads,
                                  flow_path, compile), settings)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level,
                    timeout_graceful_shutdown=int(settings.request_timeout_s))
    except SystemExit:  # uvicorn exits when startup fails; a model that did not load says why
        error = app.state.entpruner.startup_error
        if error is None:
            raise
        raise error from None


def serve_ray(specs: dict[str, str], *, backend: str = "torch", host: str = "127.0.0.1",
              port: int = 8000, replicas: int = 2, settings: ServerSettings | None = None,
              device: str | None = None, provider: str | None = None,
              blocking: bool = True, vae: str | None = None, family: str | None = None,
              num_heads: int | None = None, flow_path: str | None = None,
              compile: str | None = None) -> Any:
    """The same app as a Ray Serve deployment with ``replicas`` replicas (each loads the
    models and batches its own requests). Joins the running Ray cluster, or starts a local
    one."""
    from entpruner_sdk.serve.ray_app import run_ray

    settings = settings or ServerSettings(api_key=os.environ.get("ENTPRUNER_API_KEY"))
    check_port(port)  # not bound here: Ray's proxy binds it, perhaps on another node
    check_exposure(host, settings)
    loader = model_loader(specs, backend, device, provider, vae, family, num_heads, flow_path,
                          compile)
    return run_ray(loader, settings, host=host, port=port, replicas=replicas,
                   blocking=blocking)
