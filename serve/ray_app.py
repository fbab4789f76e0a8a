"""Ray Serve: each replica runs the FastAPI app (``@serve.ingress``), loading the models in
its own process; Ray's proxy spreads requests over the replicas."""

from __future__ import annotations

import os
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from entpruner_sdk.serve.settings import ServerSettings

if TYPE_CHECKING:  # the app needs FastAPI, imported when a deployment is built
    from entpruner_sdk.serve.app import ModelLoader


def require_ray() -> tuple[ModuleType, ModuleType]:
    """Ray and Ray Serve, or an ImportError naming the extra to install."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise ImportError("Ray Serve is not installed: pip install 'entpruner-sdk[ray]'"
                          ) from error
    return ray, serve


def build_deployment(loader: ModelLoader, settings: ServerSettings, replicas: int) -> Any:
    """A bound Ray Serve application of ``replicas`` copies of the entpruner app."""
    _, serve = require_ray()
    from entpruner_sdk.serve.app import create_app

    app = create_app(loader, settings)

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=settings.max_queue + settings.max_batch_images)
    @serve.ingress(app)
    class EntprunerReplica:
        """Routes and state come from the FastAPI app; its lifespan loads the models."""

    return EntprunerReplica.bind()


def run_ray(loader: ModelLoader, settings: ServerSettings, *, host: str, port: int, replicas: int,
            blocking: bool = True, num_cpus: int | None = None) -> Any:
    """Run the server as a Ray Serve deployment of ``replicas`` on ``host:port`` (in a
    running Ray cluster, or a local one started here); ``blocking`` serves until Ctrl-C, else
    the deployment's handle is returned at once."""
    ray, serve = require_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(build_deployment(loader, settings, replicas), name="entpruner",
                       route_prefix="/")
    if not blocking:
        return handle
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        serve.shutdown()
        ray.shutdown()
    return None
