"""Finished sample batches, kept on disk so that an interrupted evaluation continues.

A standard FID evaluation of a large model (50,000 samples of DiT-XL/2 at 250 steps) runs for
hours. ``evaluate`` samples in batches whose noise depends only on the seed and the batch
index, so a batch made before a crash is the batch a rerun would make: each one is written
as it finishes, and a rerun with the same model and settings loads it instead of sampling it
again. The folder is named by a hash of everything that decides the samples, so a rerun with
other settings never picks up the wrong ones. A run claims its folder while it works, so the
same command started twice is refused rather than making every batch twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from filelock import Timeout, UnixFileLock, WindowsFileLock
from safetensors.torch import load_file, save_file

from entpruner_sdk.data.latents import LatentSpace
from entpruner_sdk.models.transformer import DiffusionTransformer
from entpruner_sdk.sampling import RuntimeDenoiser
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.cache import read_kept
from entpruner_sdk.utils.device import arithmetic
from entpruner_sdk.utils.digest import network_fingerprint
from entpruner_sdk.utils.files import atomic_writer

# the folder, under a command's output directory, where finished batches wait (evaluate's
# OUT/sampling-in-progress, and compress's for its report's figures)
IN_PROGRESS = "sampling-in-progress"
# the lock a running process holds inside its batch folder; the OS frees it when the process
# ends however it ends, so a crash or a kill leaves no stale claim behind
CLAIM = ".in-use"
_Lock = WindowsFileLock if os.name == "nt" else UnixFileLock


class BatchesInUse(RuntimeError):
    """Another process is making the same samples into the same folder right now."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            f"{directory} is in use: another process is making these same samples right now "
            "(the same command, started twice?). Let it finish, or stop it and run this "
            "again, which continues from the batches it finished")


class SampleBatches:
    """The finished batches of one generation: ``batch_00012.safetensors`` per batch."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.loaded = 0  # batches this process took from disk instead of making them
        self._claim: _Lock | None = None

    @classmethod
    def for_generation(cls, root: str | os.PathLike, name: str, **identity: Any
                       ) -> SampleBatches:
        """The folder under ``root`` for samples decided by ``identity`` (the model's weights
        hash, the labels, seed, batch size and sampler settings), named ``name-<hash>``."""
        text = json.dumps(identity, sort_keys=True, default=str)
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
        safe = safe.strip("-")[-40:] or "model"  # a path's last part: what tells runs apart
        return cls(Path(root) / f"{safe}-{key}")

    def claim(self) -> bool:
        """Hold the folder for this process until :meth:`release`; False when another
        process holds it. True, holding nothing, where the file system has no locks."""
        if self._claim is not None:
            return True
        for _ in range(3):  # a run that made nothing removes its folder as it lets it go
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = _Lock(self.directory / CLAIM, timeout=0)
            try:
                lock.acquire()
            except Timeout:
                return False
            except FileNotFoundError:
                continue
            except (NotImplementedError, OSError):  # no locks here (some network file systems)
                return True
            self._claim = lock
            return True
        return True

    def release(self) -> None:
        """Let other processes have the folder (the end of the run that claimed it). A
        folder with no finished batch is removed, so a run stopped before its first batch
        leaves nothing behind."""
        if self._claim is None:
            return
        if not any(self.directory.glob("batch_*")):
            self.clear()  # removed while still held: no other run starts in it meanwhile
            return
        self._claim.release()
        self._claim = None

    @staticmethod
    def in_use(directory: str | os.PathLike) -> bool:
        """Whether a running process holds the batch folder ``directory`` (asked without
        touching its batches)."""
        probe = _Lock(Path(directory) / CLAIM, timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return True
        except (NotImplementedError, OSError):  # no locks here, or the folder just went
            return False
        probe.release()
        return False

    def _path(self, index: int) -> Path:
        return self.directory / f"batch_{index:05d}.safetensors"

    def has(self, index: int) -> bool:
        """Whether batch ``index`` was finished before (its file is there)."""
        return self._path(index).is_file()

    def load(self, index: int) -> torch.Tensor | None:
        """Batch ``index`` if it was finished before, else None. An unreadable file (a disk
        fault: every file is written atomically) is removed and the batch made again."""
        samples = read_kept(self._path(index), lambda path: load_file(str(path))["samples"])
        if samples is not None:
            self.loaded += 1
        return samples

    def save(self, index: int, samples: torch.Tensor) -> None:
        """Keep batch ``index``'s samples on disk, atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_writer(self._path(index)) as tmp:
            save_file({"samples": samples.detach().contiguous().cpu()}, str(tmp))

    def clear(self) -> None:
        """Remove the batches, and ``root`` too when nothing else is left in it."""
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):  # other generations' batches are still there
            self.directory.parent.rmdir()
        if self._claim is not None:  # after: no other run starts on batches being removed
            self._claim.release()
            self._claim = None


class EvaluationBatches:
    """The batch folders of one evaluation, one per model it samples (none without a
    ``root``), each named by everything that decides that model's samples."""

    def __init__(self, root: str | os.PathLike | None, labels: torch.Tensor, seed: int,
                 batch_size: int, sampling: dict[str, Any], decoder: LatentSpace | None
                 ) -> None:
        self.root, self.made = root, []
        self.settings = dict(
            labels=hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16], seed=seed,
            batch_size=batch_size, vae=decoder.fingerprint if decoder is not None else None,
            **{k: v for k, v in sampling.items() if k != "device"})  # same samples anywhere
        # ...in the same arithmetic: a rerun in fp32 does not take batches made in bf16
        self.arithmetic = arithmetic(sampling["device"])

    def of(self, model: DiffusionTransformer | RuntimeDenoiser, name: str
           ) -> SampleBatches | None:
        """The folder for ``model``'s samples (None: nothing is kept). An export is named by
        its own fingerprint, which covers its metadata (the objective's settings among
        them), and runs in its own precision."""
        if self.root is None:
            return None
        exported = isinstance(model, RuntimeDenoiser)
        batches = SampleBatches.for_generation(
            self.root, name,
            weights=model.fingerprint if exported else network_fingerprint(model),
            config=model.config.to_dict(), objective=None if exported else model.objective,
            **({} if exported else {"arithmetic": self.arithmetic}), **self.settings)
        same = next((b for b in self.made if b.directory == batches.directory), None)
        if same is not None:  # asked for again (two roles of one name and network)
            return same
        # rank 0 claims the folder for the whole run, and every rank hears whether it could
        refused = torch.tensor([int(distributed.is_main() and not batches.claim())])
        distributed.all_reduce_sum_([refused])
        if refused.item():
            raise BatchesInUse(batches.directory)
        self.made.append(batches)
        return batches

    def release(self) -> None:
        """Let other processes have this evaluation's folders: the run is over (or failed)."""
        for batches in self.made:
            batches.release()

    def __enter__(self) -> EvaluationBatches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @staticmethod
    def loaded_by_all(batches: SampleBatches | None) -> int:
        """How many batches every process together took from disk."""
        loaded = torch.tensor([batches.loaded if batches is not None else 0])
        distributed.all_reduce_sum_([loaded])
        return int(loaded)

    def clear(self) -> None:
        """Remove every folder this evaluation made, once every rank has its samples: each
        rank its own, which is one folder, removed twice, where the machines share it, and
        each machine's own where they do not (else those would stay behind)."""
        distributed.barrier()
        for batches in self.made:
            batches.clear()
