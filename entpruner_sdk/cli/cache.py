"""``entpruner cache``: what the entpruner cache holds, and clearing it."""

from __future__ import annotations

import argparse
import json

from entpruner_sdk.cli import common
from entpruner_sdk.utils.cache import cache_root, cache_usage, clear_cache


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``cache`` subcommand: list the cache's parts, or ``--clear`` one or all."""
    p = common.command(
        sub, "cache", "List or clear the entpruner cache: domain classifiers, reference "
        "features, encoded latents, exported VAE decoders, the demo's exports. Everything in "
        "it is made again when needed (a domain classifier is trained again from the same "
        "seed); clear it while no other entpruner command runs.", """\
        entpruner cache                          # each part, its entries and size
        entpruner cache --clear vae-decoders     # free the exported VAE decoders
        entpruner cache --clear all
        ENTPRUNER_CACHE=/scratch/entpruner entpruner cache --json
        """)
    p.add_argument("--clear", nargs="+", metavar="KIND",
                   help="delete these parts of the cache (the names the listing shows), or "
                        "all")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """List each part of the cache with its size (``--json``), or delete ``--clear KIND``; 0 on
    success."""
    if args.clear:
        freed = clear_cache(args.clear)
        print(f"freed {common.human_size(freed)} from {cache_root()}")
        return 0
    usage = cache_usage()
    if args.json:
        print(json.dumps({"root": str(cache_root()), "parts": [
            {"kind": u.kind, "description": u.description, "entries": u.entries,
             "bytes": u.bytes, "path": str(u.path)} for u in usage]}, indent=2))
        return 0
    print(f"entpruner cache in {cache_root()} ($ENTPRUNER_CACHE moves it)")
    width = max(len(u.kind) for u in usage)
    for u in usage:
        print(f"  {u.kind:<{width}}  {u.entries:>5} entries  {common.human_size(u.bytes):>9}  "
              f"{u.description}")
    print(f"  {'total':<{width}}  {'':>13}  {common.human_size(sum(u.bytes for u in usage)):>9}")
    return 0

