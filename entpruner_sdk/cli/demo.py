"""``entpruner demo``: the Gradio app comparing an original and a pruned model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from entpruner_sdk.cli import common

AUTH_VARIABLE = "ENTPRUNER_DEMO_AUTH"  # an environment variable keeps it out of shell history


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` subcommand: the two models, the address, the device and the export option."""
    p = common.command(
        sub, "demo", "Gradio app: original vs pruned sampling, side by side.", """\
        entpruner demo          # dit-digits vs runs/quickstart/dit-digits-pruned (from quickstart)
        entpruner demo --pruned runs/quickstart/sit-digits-pruned   # vs sit-digits, its original
        entpruner demo --pruned runs/dit-d6 --onnx --port 7861   # adds ONNX Runtime
        ENTPRUNER_DEMO_AUTH=team:s3cret entpruner demo --host 0.0.0.0   # the team's machines
        entpruner demo --original DiT-XL-2-256x256.pt --pruned runs/xl-d14 \\
            --vae ./sd-vae-ft-ema --device cuda
        """)
    from entpruner_sdk.apps.pair import DEFAULT_ORIGINAL, DEFAULT_PRUNED

    p.add_argument("--original",
                   help="teacher name or model path (default: the model the pruned one was "
                        f"compressed from, as it records; {DEFAULT_ORIGINAL} for one that "
                        "does not)")
    p.add_argument("--pruned", default=DEFAULT_PRUNED,
                   help="a `compress` output folder (with report.json) or a model path")
    p.add_argument("--onnx", action="store_true",
                   help="export both models to ONNX (cached) and offer ONNX Runtime; with "
                        "--vae the decoder is exported and run by ONNX Runtime too")
    p.add_argument("--data", help="data for the quick evaluation (default: the report's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--auth", metavar="USER:PASSWORD", default=os.environ.get(AUTH_VARIABLE),
                   help=f"the user and password the page asks for (default: ${AUTH_VARIABLE}, "
                        "else none); set it when --host lets other machines in")
    p.add_argument("--family", choices=["dit", "sit"],
                   help="a released original checkpoint's family (default: the pruned "
                        "model's, as its head count is)")
    common.vae_option(p)
    common.run_options(p)


def run(args: argparse.Namespace) -> int:
    """Launch the side-by-side Gradio app and serve it until stopped; 0 on success."""
    from entpruner_sdk.apps.demo import launch
    from entpruner_sdk.apps.pair import DEFAULT_PRUNED, MAKE_PRUNED
    from entpruner_sdk.utils.network import check_address

    check_address(args.host, args.port)  # else the note below says the demo starts anyway
    if args.pruned == DEFAULT_PRUNED and not Path(DEFAULT_PRUNED).exists():
        print(f"note: no pruned model at {DEFAULT_PRUNED}; make it with:\n  {MAKE_PRUNED}\n"
              "(the demo starts anyway and shows this in the page)", file=sys.stderr)

    def notify(message: str) -> None:  # --quiet keeps the problems, which the page shows too
        if not args.quiet or message.startswith("problem: "):
            print(f"entpruner demo: {message}", file=sys.stderr)

    launch(args.original, args.pruned, port=args.port, host=args.host, onnx=args.onnx,
           data=args.data, vae=args.vae, family=args.family, device=args.device,
           notify=notify, auth=_user_and_password(args.auth))
    return 0


def _user_and_password(auth: str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    user, colon, password = auth.partition(":")
    if not (user and colon and password):
        raise ValueError(f"--auth (or ${AUTH_VARIABLE}) takes USER:PASSWORD, both non-empty")
    return user, password
