"""``entpruner serve``: models behind an HTTP server (FastAPI, or Ray Serve replicas)."""

from __future__ import annotations

import argparse
import os

from entpruner_sdk.cli import common


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` subcommand: the named models, the address and the batching options."""
    p = common.command(
        sub, "serve", "Serve models over HTTP (FastAPI, micro-batching, metrics).", """\
        entpruner serve --model dit-digits                       # http://127.0.0.1:8000/docs
        entpruner serve --model original=dit-digits --model pruned=runs/quickstart/dit-digits-pruned
        entpruner serve --model exports/dit-onnx --backend onnxruntime --port 8080
        entpruner serve --model pruned=runs/x/model --max-batch 32 --max-wait-ms 20
        entpruner serve --model pruned=runs/x/model --device cuda --compile reduce-overhead
        ENTPRUNER_API_KEY=secret entpruner serve --model dit-digits --host 0.0.0.0
        entpruner serve --model dit-digits --ray --replicas 4    # Ray Serve replicas
        curl -s localhost:8000/v1/generate -H 'content-type: application/json' \\
            -d '{"model": "pruned", "class_labels": [3, 7], "seed": 1}'
        """)
    _models(p.add_argument_group("models"))
    _address(p.add_argument_group("address and access"))
    _limits(p.add_argument_group("batching and limits"))
    _ray(p.add_argument_group("Ray Serve"))
    common.run_options(p.add_argument_group("run"))


def _models(g: common.Options) -> None:
    from entpruner_sdk.sampling import COMPILE_MODES
    from entpruner_sdk.serve.models import BACKENDS

    g.add_argument("--model", action="append", required=True, metavar="[NAME=]SOURCE",
                   help="teacher name, model dir, checkpoint or export dir (repeatable)")
    g.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="what runs the models: PyTorch or an export's runtime")
    g.add_argument("--provider", help="ONNX Runtime provider: cpu, cuda or tensorrt")
    g.add_argument("--compile", choices=COMPILE_MODES,
                   help="run PyTorch models through torch.compile in this mode "
                        "(reduce-overhead: CUDA graphs on a GPU), compiled for every batch "
                        "size before the server is ready (default: eager)")
    common.released_options(g)
    common.vae_option(g)


def _address(g: common.Options) -> None:
    g.add_argument("--host", default="127.0.0.1", help="address to listen on")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--api-key", help="require this X-API-Key (default: $ENTPRUNER_API_KEY)")


def _limits(g: common.Options) -> None:
    g.add_argument("--max-batch", type=int, default=16, help="images per batch (1 = off)")
    g.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests")
    g.add_argument("--max-queue", type=int, default=64, help="queued requests before 503")
    g.add_argument("--max-images", type=int, default=16, help="images per request")
    g.add_argument("--max-steps", type=int, default=250,
                   help="most sampling steps a request may ask for")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per request")


def _ray(g: common.Options) -> None:
    g.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment")
    g.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas")


def run(args: argparse.Namespace) -> int:
    """Serve the models over HTTP until stopped; 0 on success."""
    from entpruner_sdk.serve import ServerSettings, parse_model_specs, serve, serve_ray

    specs = parse_model_specs(args.model)
    settings = ServerSettings(
        max_batch_images=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_images_per_request=args.max_images, max_steps=args.max_steps,
        request_timeout_s=args.timeout,
        api_key=args.api_key or os.environ.get("ENTPRUNER_API_KEY"))
    device = None if args.device == "auto" else args.device
    if args.ray:
        serve_ray(specs, backend=args.backend, host=args.host, port=args.port,
                  replicas=args.replicas, settings=settings, device=device,
                  provider=args.provider, vae=args.vae, family=args.family,
                  num_heads=args.num_heads, flow_path=args.flow_path, compile=args.compile)
    else:
        serve(specs, backend=args.backend, host=args.host, port=args.port, settings=settings,
              device=device, provider=args.provider, vae=args.vae, family=args.family,
              num_heads=args.num_heads, flow_path=args.flow_path, compile=args.compile,
              log_level="warning" if args.quiet else "info")
    return 0
