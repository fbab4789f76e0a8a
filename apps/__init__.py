"""Apps: the Gradio demo comparing an original and a pruned model side by side.

    entpruner demo                      # bundled teacher vs the quickstart's pruned model
    entpruner demo --original dit-digits --pruned runs/dit-d6 --onnx

Names load on first use (PEP 562), so ``entpruner_sdk.apps.pair`` and the CLI's parser work
without the ``app`` extra (Gradio) installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "build_demo": "demo", "launch": "demo",
    "ModelPair": "pair", "generate_pair": "pair", "load_pair": "pair",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
