"""The ``entpruner`` command line: ``train``, ``sample``, ``info``, ``encode``, ``compress``,
``evaluate``, ``export``, ``serve``, ``demo``, ``quickstart`` (the main job), ``cache`` and
``env``.

One module per command, each with ``add_parser(sub)`` (its options and examples) and
``run(args)``; a command that keeps work when it is interrupted also says what, in
``interrupted(args)``. This module builds the parser and turns errors, and the project's
own warnings, into one line each.
Every subcommand has ``--help`` with examples; ``--quiet`` silences progress bars.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator

from entpruner_sdk.cli import (
    cache,
    compress,
    demo,
    encode,
    env,
    evaluate,
    export,
    info,
    quickstart,
    sample,
    serve,
    train,
)

# in the order --help lists them
_MODULES = {"train": train, "sample": sample, "info": info, "encode": encode,
            "compress": compress, "evaluate": evaluate, "export": export, "serve": serve,
            "demo": demo, "quickstart": quickstart, "cache": cache, "env": env}
COMMANDS = {name: module.run for name, module in _MODULES.items()}


def build_parser() -> argparse.ArgumentParser:
    """The ``entpruner`` parser with every command's options."""
    parser = argparse.ArgumentParser(
        prog="entpruner",
        description="Entropy-guided depth pruning for DiT / SiT, and the tools to ship it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              entpruner quickstart                      # the main job on bundled data
              entpruner info --model dit-digits
              entpruner sample --model sit-digits --per-class 4 --out grid.png
              entpruner train --model DiT-S/2 --data ./my_images --steps 5000 --out runs/dit
              entpruner sample --model dit-digits --device cuda --mixed-precision off

            environment:
              ENTPRUNER_AUTOCAST  how PyTorch models compute: auto (the default: bf16 autocast
                                  on a CUDA GPU that has bf16, fp32 elsewhere), bf16 (on every
                                  device, the CPU included), fp16 (fp16 autocast with loss
                                  scaling: GPUs without bf16, e.g. V100, T4) or off (fp32);
                                  a command's --mixed-precision overrides it
              ENTPRUNER_CACHE     the cache's folder (see `entpruner cache`)
              ENTPRUNER_QUIET     1: no progress bars (as --quiet)
            """),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _MODULES.values():
        module.add_parser(sub)
    return parser


# The extra that installs each optional module, for the missing-module hint.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "httpx": "serve",
          "gradio": "app", "gradio_client": "app", "playwright": "app", "ray": "ray",
          "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "tensorrt": "tensorrt",
          "torch_tensorrt": "tensorrt", "diffusers": "latent", "datasets": "hf"}


def _error_message(error: Exception) -> str:
    """The error, plus the install command when it is a missing optional dependency."""
    name = getattr(error, "name", None) or ""
    extra = EXTRAS.get(name.split(".")[0]) if isinstance(error, ImportError) else None
    if extra is None:
        return str(error)
    return f"{error}; install it with: pip install 'entpruner-sdk[{extra}]'"


def _speaker(command: str) -> str:
    """Who a message is from: ``entpruner CMD``, and under torchrun the process's rank too,
    as each process prints its own errors and warnings (two lines alike would read as one
    message printed twice, and one process's own failure would not say whose it is)."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world > 1:
        return f"entpruner {command} [rank {os.environ.get('RANK', '?')} of {world}]"
    return f"entpruner {command}"


def _interrupted_message(args: argparse.Namespace) -> str:
    """What an interrupted command kept, when its module says (train and compress: the
    checkpoint to resume; encode: the latents made; evaluate: the sample batches made)."""
    message = f"{_speaker(args.command)}: interrupted"
    kept = getattr(_MODULES[args.command], "interrupted", None)
    return message + (f"; {kept(args)}" if kept is not None else "")


def main(argv: list[str] | None = None) -> int:
    """Run one ``entpruner`` command; returns its exit status (2: an error it explained,
    130: interrupted)."""
    from entpruner_sdk.data import DataError
    from entpruner_sdk.evaluation.inception import FeatureNetworkMissing
    from entpruner_sdk.export import ParityError
    from entpruner_sdk.models.io import CheckpointError
    from entpruner_sdk.utils import distributed
    from entpruner_sdk.utils.device import autocast_mode

    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ["ENTPRUNER_QUIET"] = "1"
    try:
        with _policy(getattr(args, "mixed_precision", None)), \
                _warnings_as_lines(args.command):
            autocast_mode()  # a mistyped $ENTPRUNER_AUTOCAST stops here, not after the loading
            status = COMMANDS[args.command](args)
            distributed.leave()  # under torchrun: the group the command joined, left cleanly
            return status
    except (CheckpointError, DataError, ValueError, TypeError, FileNotFoundError,
            FileExistsError, FeatureNetworkMissing, ParityError, ImportError,
            RuntimeError, FloatingPointError) as error:
        print(f"{_speaker(args.command)}: error: {_error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: say where the work is, not where Python was
        print(_interrupted_message(args), file=sys.stderr)
        return 130
    except BrokenPipeError:  # `entpruner info --json | head`: the reader has what it wanted
        # stdout is gone; point it at devnull so the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # a full disk, a lost mount: the system's words, and what was kept
        kept = getattr(_MODULES[args.command], "interrupted", None)
        print(f"{_speaker(args.command)}: error: {error}"
              + (f"; {kept(args)}" if kept is not None else ""), file=sys.stderr)
        return 2


@contextlib.contextmanager
def _policy(mode: str | None) -> Iterator[None]:
    """``--mixed-precision``, as ``$ENTPRUNER_AUTOCAST`` for the command's duration: the
    variable, not a context of this thread, so the threads and processes it starts (a
    server's workers, the demo's handlers) compute as it does. None: the environment's."""
    from entpruner_sdk.utils.device import AUTOCAST_ENV

    if mode is None:
        yield
        return
    before = os.environ.get(AUTOCAST_ENV)
    os.environ[AUTOCAST_ENV] = mode
    try:
        yield
    finally:  # a caller of main() in Python keeps its own setting
        if before is None:
            os.environ.pop(AUTOCAST_ENV, None)
        else:
            os.environ[AUTOCAST_ENV] = before


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """The project's own warnings (an unstable sampler setting, a head count assumed, a
    server open to the network) as ``entpruner CMD: warning: ...``, without Python's file,
    line and source; other libraries' warnings keep Python's form, which names their source."""
    ours = tuple(location for name in ("entpruner_sdk", "entpruner_sdk.export",
                                       "entpruner_sdk.serve", "entpruner_sdk.apps")
                 for location in importlib.util.find_spec(name).submodule_search_locations)
    python_form = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(ours):
            print(f"{_speaker(command)}: warning: {message}", file=file or sys.stderr)
        else:
            python_form(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = python_form
