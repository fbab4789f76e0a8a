"""Apps: the Gradio demo comparing an original and a pruned model side by side.

    entpruner demo                      # bundled teacher vs the quickstart's pruned model
    entpruner demo --original dit-digits --pruned runs/dit-d6 --onnx

Names load on first use (PEP 562), so ``entpruner_sdk.apps.pair`` and the CLI's parser work
without the ``app`` extra (Gradio) installed.
"""

from __future__ import annotations

from entpruner_sdk.utils.lazy import lazy_exports

_WHERE = {
    "build_demo": "demo", "launch": "demo",
    "ModelPair": "pair", "generate_pair": "pair", "load_pair": "pair",
}

__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
