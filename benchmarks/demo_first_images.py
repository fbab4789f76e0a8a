r"""Time to the first pair of images in the demo: start the app with the bundled teacher and the
quickstart's pruned model, then time the first Generate call (default settings: 4 images,
the teacher's sampler, steps and cfg) through the real HTTP API, and two more.

    python benchmarks/demo_first_images.py
    python benchmarks/demo_first_images.py --original sit-digits \
        --pruned runs/quickstart/sit-digits-pruned

Goal: the first pair in under 5 s on CPU. Writes benchmarks/results/demo_first_images.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

from entpruner_sdk.apps.demo import launch
from entpruner_sdk.apps.pair import DEFAULT_ORIGINAL, DEFAULT_PRUNED
from entpruner_sdk.teachers import SAMPLING
from entpruner_sdk.utils.files import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", default=DEFAULT_ORIGINAL,
                        help="the demo's original model")
    parser.add_argument("--pruned", default=DEFAULT_PRUNED,
                        help="the demo's pruned model (a compress output folder)")
    parser.add_argument("--out", default=str(RESULTS / "demo_first_images.json"),
                        help="JSON results")
    args = parser.parse_args(argv)
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    demo = launch(args.original, args.pruned, port=port, block=False)
    startup = time.perf_counter() - start
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    family = "dit" if "dit" in args.original else "sit"
    settings = SAMPLING[family]
    clicks = []
    for i in range(3):
        start = time.perf_counter()
        result = client.predict(i, 0, 4, settings["sampler"], settings["steps"],
                                settings["cfg_scale"], "PyTorch", api_name="/generate")
        clicks.append(time.perf_counter() - start)
        speedup = result[4]
    demo.close()
    document = {"original": args.original, "pruned": args.pruned, "startup_s": startup,
                "first_pair_s": clicks[0], "next_pairs_s": clicks[1:], "speedup_text": speedup,
                "settings": settings, "images_per_side": 4}
    print(json.dumps(document, indent=2))
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
