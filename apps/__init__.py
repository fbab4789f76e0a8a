"""Apps: the Gradio demo comparing an original and a pruned model side by side.

    entpruner demo                      # bundled teacher vs the quickstart's pruned model
    entpruner demo --original dit-digits --pruned runs/dit-d6 --onnx
"""

from entpruner_sdk.apps.demo import build_demo, launch
from entpruner_sdk.apps.pair import ModelPair, generate_pair, load_pair

__all__ = ["ModelPair", "build_demo", "generate_pair", "launch", "load_pair"]
