"""``entpruner env``: what this machine offers entpruner, for a bug report or a deployment
check."""

from __future__ import annotations

import argparse
import json
from typing import Any

from entpruner_sdk.cli import common


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``env`` subcommand: versions, devices and their arithmetic, the extras installed."""
    p = common.command(
        sub, "env", "Show what this machine offers entpruner: versions, each device and the "
        "arithmetic PyTorch models compute in there ($ENTPRUNER_AUTOCAST), and which extras "
        "are installed, with the command that installs a missing one. Paste it into a bug "
        "report.", """\
        entpruner env
        ENTPRUNER_AUTOCAST=fp16 entpruner env     # what fp16 would run on each device
        entpruner env --json > env.json
        """)
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Print the environment (``--json``: as JSON); 0, since it only reports."""
    from entpruner_sdk.utils.environment import environment

    found = environment()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print("\n".join(describe(found)))
    return 0


def describe(found: dict[str, Any]) -> list[str]:
    """The environment as lines of text."""
    own = found["entpruner_sdk"] or "not installed (a source tree): pip install -e ."
    t = found["torch"]
    policy = found["policy"]
    setting = (f"{policy['variable']}={policy['value']}" if policy["value"] is not None
               else f"{policy['variable']} unset")
    lines = [f"entpruner-sdk {own}, Python {found['python']} ({found['executable']}), "
             f"{found['platform']}",
             f"torch {t['version']} (CUDA {t['cuda'] or 'none'}; CPU {t['cpu_capability']}, "
             f"{t['threads']} threads)",
             f"devices ({setting}: {policy['mode']})"]
    lines += [f"  {d['device']:<7} {_device_line(d)}" for d in found["devices"]]
    lines += _requirement_lines(found)
    providers = found["onnxruntime_providers"]
    if providers is not None:
        lines.append(f"ONNX Runtime providers: {', '.join(providers)}")
    lines.append(f"cache: {found['cache']}")
    return lines


def _device_line(device: dict[str, Any]) -> str:
    if device["device"] == "cpu":
        return f"{device['name']}: {device['arithmetic']}"
    tf32 = ", TF32 for the fp32 matmuls left" if device["tf32"] else ""
    return (f"{device['name']}, {device['memory_gib']:.0f} GiB, compute "
            f"{device['compute_capability']}, bf16 {'yes' if device['bf16'] else 'no'}: "
            f"{device['arithmetic']}{tf32}")


def _requirement_lines(found: dict[str, Any]) -> list[str]:
    if found["entpruner_sdk"] is None:
        return ["extras: unknown without the package's metadata (pip install -e .)"]
    broken = [p for p in found["core"] if not p["ok"]]
    lines = [f"core requirements: {len(found['core'])}, "
             + ("all met" if not broken else "NOT MET: " + ", ".join(map(_package, broken))
                + " (pip install -U entpruner-sdk)")]
    lines.append("extras (pip install 'entpruner-sdk[NAME]'):")
    width = max(len(e["extra"]) for e in found["extras"])
    for extra in found["extras"]:
        state = "installed" if extra["installed"] else "missing  "
        lines += [f"  {extra['extra']:<{width}}  {state}  {extra['adds']}",
                  f"  {'':<{width}}  {'':<9}  {', '.join(map(_package, extra['packages']))}"]
    return lines


def _package(package: dict[str, Any]) -> str:
    """'onnx 1.19.1', 'tensorrt missing (>=10)', 'numpy 1.22 (needs >=1.24)'."""
    if package["version"] is None:
        return f"{package['name']} missing ({package['required']})"
    if not package["ok"]:
        return f"{package['name']} {package['version']} (needs {package['required']})"
    return f"{package['name']} {package['version']}"
