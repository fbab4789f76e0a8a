"""Serve (pruned) models over HTTP: FastAPI with dynamic micro-batching, limits, a bounded
queue, Prometheus metrics, and the same app as a Ray Serve deployment for scale-out.

    entpruner serve --model original=dit-digits --model pruned=runs/quickstart/dit-digits-pruned

Names load on first use (PEP 562), so ``entpruner_sdk.serve.models`` and the CLI's parser
work without the ``serve`` extra (FastAPI) installed.
"""

from __future__ import annotations

from entpruner_sdk.utils.lazy import lazy_exports

_WHERE = {
    "create_app": "app", "decode_array": "app",
    "BACKENDS": "models", "ServedModel": "models", "load_served_model": "models",
    "parse_model_specs": "server", "serve": "server", "serve_ray": "server",
    "ServerSettings": "settings",
}

__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
