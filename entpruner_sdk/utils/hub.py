"""Hugging Face Hub names (``facebook/DiT-XL-2-256``) for what entpruner reads from folders.

Nothing is downloaded at run time: a name the local Hugging Face cache already holds (a
``from_pretrained`` made it, or ``hf download``) is read from there, and any other gets the
command that downloads it once.
"""

from __future__ import annotations

import re
from pathlib import Path

# owner/name as the Hub spells repositories, then optionally a folder in it (a pipeline's
# vae); a registry name ("DiT-XL/2") ends in a number, and a path starts with . or /
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z_.-][\w.-]*(/[\w.-]+)*$")


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repository (``owner/name``, or a folder in one:
    ``owner/name/vae``) rather than a path or a registry name."""
    # runs/pruned, where runs/ is here, is a path that does not exist yet, not a Hub name
    return bool(_REPO_ID.match(name)) and not Path(name.split("/")[0]).exists()


def cached_snapshot(name: str) -> Path | None:
    """The folder of Hub repository ``name`` (or of a folder in it) in the local Hugging Face
    cache, without asking the Hub; None when it is not there (or ``huggingface_hub`` is not
    installed)."""
    if not looks_like_repo_id(name):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    owner, repo, *inside = name.split("/")
    try:
        folder = Path(snapshot_download(f"{owner}/{repo}", local_files_only=True))
    except Exception:  # not cached: huggingface_hub says so in several ways
        return None
    folder = folder.joinpath(*inside)
    return folder if folder.is_dir() else None


def download_hint(name: str) -> str:
    """How to download Hub repository ``name`` once, for an error that refuses it."""
    repo = "/".join(name.split("/")[:2])
    return (f"download it once (hf download {repo} --local-dir {repo.rsplit('/', 1)[-1]}, "
            "or any from_pretrained of it, which fills the Hugging Face cache) and pass it "
            "again")
