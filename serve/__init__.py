"""Serve (pruned) models over HTTP: FastAPI with dynamic micro-batching, limits, a bounded
queue, Prometheus metrics, and the same app as a Ray Serve deployment for scale-out.

    entpruner serve --model original=dit-digits --model pruned=runs/quickstart/dit-digits-pruned
"""

from entpruner_sdk.serve.app import create_app, decode_array
from entpruner_sdk.serve.models import BACKENDS, ServedModel, load_served_model
from entpruner_sdk.serve.server import parse_model_specs, serve, serve_ray
from entpruner_sdk.serve.settings import ServerSettings

__all__ = [
    "BACKENDS",
    "ServedModel",
    "ServerSettings",
    "create_app",
    "decode_array",
    "load_served_model",
    "parse_model_specs",
    "serve",
    "serve_ray",
]
