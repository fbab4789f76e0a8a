"""Optional latent space: a diffusers ``AutoencoderKL`` loaded from a local folder.

DiT and SiT on ImageNet work on Stable Diffusion VAE latents scaled by 0.18215 (other VAEs
declare their own scale and shift, which are used). Encoding a dataset is the slow part, so
encoded datasets are cached (safetensors) by the data's content hash and the VAE's weight
hash.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from entpruner_sdk.data import mapped
from entpruner_sdk.data.datasets import DataError, ImageDataset, eight_bit, unit_range
from entpruner_sdk.data.streamed import StreamedImages, Unreadable, all_unreadable
from entpruner_sdk.utils.cache import read_kept
from entpruner_sdk.utils.device import autocast, resolve_device
from entpruner_sdk.utils.files import atomic_writer
from entpruner_sdk.utils.hub import cached_snapshot, download_hint, looks_like_repo_id
from entpruner_sdk.utils.progress import progress_bar


class ModelInputs(Protocol):
    """What this layer reads of a model's config (a ``TransformerConfig``: data sits below
    the models' layer, so it names only the two fields)."""

    in_channels: int
    input_size: int

SD_VAE_SCALE = 0.18215
CHECKPOINT_SECONDS = 60.0  # how often a cached encode saves the latents done so far


class LatentSpace:
    """Encode images to scaled latents and decode them back (bf16 autocast on CUDA): a
    latent is ``(z - shift) * scale`` of the VAE's posterior ``z``, as diffusers' pipelines
    take it (DiT and SiT: SD's VAE, scale 0.18215, no shift)."""

    def __init__(self, vae: torch.nn.Module, scale: float = SD_VAE_SCALE,
                 device: str | torch.device | None = "cpu", fingerprint: str = "",
                 shift: float = 0.0) -> None:
        self.device = resolve_device(device)
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.scale, self.shift = scale, shift
        self.fingerprint = fingerprint
        self.folder: str | None = None  # where from_pretrained read it

    @property
    def encoded_with(self) -> dict[str, Any]:
        """What latents record of this VAE (``ImageDataset.encoded_with``), as plain data."""
        return {"path": self.folder, "fingerprint": self.fingerprint, "scale": self.scale,
                "shift": self.shift}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, scale: float | None = None,
                        device: str | torch.device | None = "cpu",
                        shift: float | None = None) -> LatentSpace:
        """Load ``AutoencoderKL`` from a local diffusers folder (e.g. sd-vae-ft-ema).

        ``scale`` and ``shift`` default to the folder's ``config.json`` (``scaling_factor``:
        0.18215 for SD's VAE, which DiT and SiT were trained with, 0.13025 for SDXL's;
        ``shift_factor``: SD3's and FLUX's 16-channel VAEs have one): give them to match
        latents a model was trained on with other factors. The ``fingerprint``, which keys
        cached latents and exported decoders, is the weights' hash, and the factors' too
        where they are not SD's."""
        try:
            from diffusers import AutoencoderKL
        except ImportError as error:
            raise ImportError("latent space needs diffusers: pip install 'entpruner-sdk[latent]'"
                              ) from error
        except Exception as error:  # a diffusers built for a newer torch than this
            # diffusers 0.40 to 0.42 fail at import on torch 2.4 (torch.accelerator, custom-op
            # annotations) although they declare no torch floor; 0.35 imports and runs there
            raise ImportError(
                f"the installed diffusers does not import with torch {torch.__version__} "
                f"({type(error).__name__}: {str(error)[:200]}): install a diffusers release "
                "made for this torch (diffusers 0.35 runs on torch 2.4), or upgrade torch"
            ) from error
        path = Path(path)
        if not (path / "config.json").exists() and looks_like_repo_id(str(path)):
            path = cached_snapshot(str(path)) or path  # a Hub name the HF cache holds
        if not (path / "config.json").exists():
            fix = (f"if it names a Hugging Face Hub repository, the local cache does not hold it: "
                   f"{download_hint(str(path))}" if looks_like_repo_id(str(path)) else
                   "download the VAE once and pass its local folder")
            raise DataError(f"{path} is not a diffusers AutoencoderKL folder (no config.json); "
                            + fix)
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True,
                                            low_cpu_mem_usage=False)  # no accelerate nag
        digest = hashlib.sha256()
        for name, tensor in sorted(vae.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().numpy().tobytes()[:4096])
        if scale is None:
            scale = float(getattr(vae.config, "scaling_factor", None) or SD_VAE_SCALE)
        if shift is None:
            shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        if (scale, shift) != (SD_VAE_SCALE, 0.0):  # SD's keep the hash caches were made under
            digest.update(f"|scale {scale!r}|shift {shift!r}".encode())
        space = cls(vae, scale, device, digest.hexdigest()[:16], shift)
        space.folder = str(path.resolve())
        return space

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1], or 8-bit pixels -> scaled latents (the posterior mean unless
        ``sample``)."""
        if images.shape[1] == 1:  # grayscale, as a folder of gray images loads: an RGB VAE
            images = images.expand(-1, 3, -1, -1)
        images = unit_range(images.to(self.device))  # 8-bit pixels cross as they are held
        with autocast(self.device):
            dist = self.vae.encode(images).latent_dist
            latents = dist.sample(generator) if sample else dist.mean
        return ((latents.float() - self.shift) * self.scale).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 32,
               progress: bool = False) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1], ``batch_size`` latents at a time."""
        check_latents(latents, self.vae)
        chunks = []
        for i in progress_bar(range(0, len(latents), batch_size), enabled=progress,
                              desc="decoding", leave=False):
            with autocast(self.device):
                images = self.vae.decode(latents[i:i + batch_size].to(self.device) / self.scale
                                         + self.shift)
            chunks.append(images.sample.float().clamp(-1, 1).cpu())
        return torch.cat(chunks)

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE's latents (4 for SD-VAE)."""
        return int(self.vae.config.latent_channels)

    def image_shape(self, config: ModelInputs) -> tuple[int, int, int]:
        """(channels, height, width) of the images this VAE decodes a model's samples to."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.out_channels, config.input_size * factor,
                config.input_size * factor)

    def _cache_file(self, cache_dir: str | os.PathLike, data: ImageDataset | StreamedImages,
                    fingerprint: str) -> Path:
        """One file per dataset content (``data.fingerprint()``) and VAE weights."""
        return Path(cache_dir) / f"{data.name}-{fingerprint}-{self.fingerprint}.safetensors"

    def decode_dataset(self, data: ImageDataset, cache_dir: str | os.PathLike | None = None,
                       progress: bool = True, batch_size: int = 32) -> ImageDataset:
        """A latent dataset as 8-bit images, the reference for image metrics (real images are
        8-bit too), decoded ``batch_size`` at a time and cached when asked. The pixels are held
        as uint8, and cached so: a quarter of the floats, 48 KB an image at 256 x 256 in place
        of 192 KB."""
        if data.pixels:
            return data
        cache = None
        if cache_dir is not None:
            cache = self._cache_file(cache_dir, data, data.fingerprint())
            stored = read_kept(cache, lambda path: load_file(str(path)))
            if stored is not None:  # "images": floats, as older versions cached
                return _image_dataset(stored["pixels"] if "pixels" in stored
                                      else stored["images"], data)
        pixels = None
        for i in progress_bar(range(0, len(data), batch_size), enabled=progress,
                              desc="decoding", leave=False):
            images = self.decode(data.images[i:i + batch_size], batch_size=batch_size)
            if pixels is None:
                pixels = torch.empty(len(data), *images.shape[1:], dtype=torch.uint8)
            pixels[i:i + len(images)] = eight_bit(images)
        if cache is not None:
            with atomic_writer(cache) as tmp:
                save_file({"pixels": pixels}, str(tmp))
        return _image_dataset(pixels, data)

    def encode_dataset(self, data: ImageDataset | StreamedImages,
                       cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                       progress: bool = True, workers: int = 0,
                       checkpoint_seconds: float | None = None) -> ImageDataset:
        """The dataset in latent space, read from / written to the cache when given.

        ``data``: images in memory, or ``StreamedImages`` (a class folder, a Hugging Face
        dataset on disk), which stream: ``workers`` processes read and crop its images while
        the VAE encodes, and only one batch of pixels is held at a time, so data larger than
        memory encodes. With a cache, the latents done so far are saved every
        ``checkpoint_seconds`` (``CHECKPOINT_SECONDS``), and an interrupted encode (Ctrl-C, a
        crash) continues from there when run again on the same data. Streamed images'
        latents are kept image by image (``item_keys``): unreadable images are all named at
        the end, with the rest encoded, and once they are mended, or when images are added
        to a folder or a dataset, the encode reuses every latent it has for an image it still
        holds unchanged, and encodes only the others."""
        if checkpoint_seconds is None:
            checkpoint_seconds = CHECKPOINT_SECONDS
        # streamed images as they are before any is read: the cache's key, and what the
        # latents record of where they came from (``source_fingerprint``)
        source = (data.fingerprint() if isinstance(data, StreamedImages)
                  else data.source_fingerprint)
        if cache_dir is None:
            return _latent_dataset(self._encode_images(data, batch_size, workers, progress),
                                   data, source, self)
        cache = self._cache_file(cache_dir, data, source if isinstance(data, StreamedImages)
                                 else data.fingerprint())
        kept = read_kept(cache, lambda path: mapped.read_tensor(path, "latents"))
        if kept is not None:
            return _latent_dataset(kept, data, source, self)
        if isinstance(data, StreamedImages):
            latents, keys, spent = self._encode_streamed(data, cache, batch_size, workers,
                                                       progress, checkpoint_seconds)
            with atomic_writer(cache) as tmp:
                save_file({"latents": latents, "keys": keys}, str(tmp))
            for partial in spent:
                partial.unlink(missing_ok=True)
        else:
            latents = self._encode_images(data, batch_size, workers, progress,
                                          partial_file(cache), checkpoint_seconds)
            with atomic_writer(cache) as tmp:
                save_file({"latents": latents}, str(tmp))
            partial_file(cache).unlink(missing_ok=True)
        if cache.stat().st_size >= mapped.MAP_FROM:  # mapped from the file, the encoded copy
            latents = mapped.read_tensor(cache, "latents")  # freed: processes share the file
        return _latent_dataset(latents, data, source, self)

    def _encode_images(self, data: ImageDataset | StreamedImages, batch_size: int, workers: int,
                       progress: bool, partial: Path | None = None,
                       checkpoint_seconds: float = CHECKPOINT_SECONDS) -> torch.Tensor:
        """Every image in order, continuing the latents ``partial`` holds (the first ones)."""
        latents, done = _resume(partial, len(data))
        if isinstance(data, ImageDataset):
            batches = (data.images[i:i + batch_size]  # as held; ``encode`` takes 8-bit pixels
                       for i in range(done, len(data), batch_size))
        else:
            batches = data.batches(batch_size, workers, start=done)
        saved = time.monotonic()
        starts = progress_bar(range(done, len(data), batch_size), enabled=progress,
                              desc="encoding", initial=done // batch_size,
                              total=-(-len(data) // batch_size))
        for start, images in zip(starts, batches):
            if isinstance(images, Unreadable):  # no cache to keep the rest in: stop here
                raise images.errors[0]
            encoded = self.encode(images)
            if latents is None:  # filled in place: no second copy of the latents
                latents = torch.empty(len(data), *encoded.shape[1:])
            latents[start:start + len(encoded)] = encoded
            end = start + len(encoded)
            if partial is not None and end < len(data) and (
                    time.monotonic() - saved >= checkpoint_seconds):
                with atomic_writer(partial) as tmp:
                    save_file({"latents": latents[:end].contiguous()}, str(tmp))
                saved = time.monotonic()
        return latents

    def _encode_streamed(self, source: StreamedImages, cache: Path, batch_size: int,
                         workers: int, progress: bool, checkpoint_seconds: float
                         ) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
        """Streamed images' latents and keys, and the unfinished encodes they used: latents
        kept for its images (by this run before an interruption, or by an encode of an earlier
        state of a folder) reused, the others encoded. Unreadable images are skipped, and
        named together at the end, after the others' latents are kept (in
        ``partial_file(cache)``) for the next run."""
        keys = source.item_keys()
        latents, done, used = _kept_latents(cache, source.name, self.fingerprint, keys)
        todo = torch.nonzero(~done).flatten().tolist()
        partial, saved, unreadable, position = partial_file(cache), time.monotonic(), [], 0
        bar = progress_bar(total=len(keys), initial=int(done.sum()), enabled=progress,
                           desc="encoding", unit="image")
        try:
            for images in source.batches(batch_size, workers, indices=todo):
                rows = todo[position:position + len(images)]
                position += len(rows)
                bar.update(len(rows))
                if isinstance(images, Unreadable):
                    images, rows, errors = source.readable(rows)
                    unreadable += errors
                    if not rows:
                        continue
                encoded = self.encode(images)
                if latents is None:  # filled in place: no second copy of the latents
                    latents = torch.zeros(len(keys), *encoded.shape[1:])
                latents[rows], done[rows] = encoded, True  # a row counts once it is whole
                if time.monotonic() - saved >= checkpoint_seconds and position < len(todo):
                    _keep_partial(partial, latents, keys, done)
                    saved = time.monotonic()
        except KeyboardInterrupt:  # Ctrl-C: keep every latent made, not only the last save's
            if latents is not None:
                _keep_partial(partial, latents, keys, done)
            raise
        bar.close()
        if unreadable:
            if latents is not None:
                _keep_partial(partial, latents, keys, done)
            raise all_unreadable(unreadable, len(keys), source)
        return latents, keys, [partial, *used]


def partial_file(cache: Path) -> Path:
    """Where an unfinished encode keeps the latents it has done (next to the cache file)."""
    return cache.with_name(cache.name.replace(".safetensors", ".partial.safetensors"))


def _keep_partial(partial: Path, latents: torch.Tensor, keys: torch.Tensor,
                  done: torch.Tensor) -> None:
    """The latents of a folder's encode so far, each row under its file's key (0: not yet)."""
    with atomic_writer(partial) as tmp:
        save_file({"latents": latents, "keys": torch.where(done, keys, 0)}, str(tmp))


def _partials(cache: Path, name: str, vae: str) -> list[Path]:
    """The unfinished encodes of folders named ``name`` with this VAE, this one's first."""
    own = partial_file(cache)
    others = cache.parent.glob(f"{glob.escape(name)}-*-{vae}.partial.safetensors")
    return [own, *sorted(path for path in others if path != own)]


def _kept_latents(cache: Path, name: str, vae: str, keys: torch.Tensor
                  ) -> tuple[torch.Tensor | None, torch.Tensor, list[Path]]:
    """The latents already made for the files ``keys`` name, wherever the cache keeps them
    (this encode's partial; finished or unfinished encodes of an earlier state of a folder of
    this name, with this VAE), which files they cover, and the unfinished encodes they came
    from (spent once this one is finished)."""
    latents, done, used = None, torch.zeros(len(keys), dtype=torch.bool), []
    own = partial_file(cache)
    finished = sorted(cache.parent.glob(f"{glob.escape(name)}-*-{vae}.safetensors"))
    for path in [*_partials(cache, name, vae), *finished]:
        if done.all():
            break
        # the keys alone first: the latents are read only when some match
        stored_keys = read_kept(path, lambda file: _row_keys(file, keys if file == own else None))
        if stored_keys is None:
            continue
        row_of = {key: row for row, key in enumerate(stored_keys.tolist()) if key}
        wanted = [(i, row_of[key]) for i, key in enumerate(keys.tolist())
                  if not done[i] and key in row_of]
        stored = read_kept(path, lambda file: load_file(str(file))["latents"]) if wanted else None
        if stored is None:
            continue
        if latents is None:
            latents = torch.zeros(len(keys), *stored.shape[1:])
        mine, theirs = (torch.tensor(column) for column in zip(*wanted))
        latents[mine], done[mine] = stored[theirs], True
        used += [path] if path.name.endswith(".partial.safetensors") else []
    return latents, done, used


def _row_keys(path: Path, own_keys: torch.Tensor | None) -> torch.Tensor | None:
    """The file keys a latents file keeps its rows under, read without its latents. A partial
    written before keys were kept holds this encode's first files in order: given their keys
    (``own_keys``), those; None for any other file without keys."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        if "keys" in file.keys():  # noqa: SIM118 (safe_open has no __contains__)
            return file.get_tensor("keys")
        if own_keys is not None:
            return own_keys[:file.get_slice("latents").get_shape()[0]]
    return None


def _resume(partial: Path | None, count: int) -> tuple[torch.Tensor | None, int]:
    """The latents buffer and the number of images already encoded by an interrupted run."""
    done = None if partial is None else read_kept(
        partial, lambda path: load_file(str(path))["latents"])
    if done is None:  # none yet, or unreadable: started over
        return None, 0
    latents = torch.empty(count, *done.shape[1:])
    latents[:len(done)] = done
    return latents, len(done)


def is_latent(config: ModelInputs) -> bool:
    """A model config whose inputs are VAE latents: any channel count but 1 or 3 (released
    DiT and SiT models take 4). Their samples need a VAE to become images."""
    return config.in_channels not in (1, 3)


def recorded_vae(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a latent model's data was encoded with (``LatentSpace.encoded_with``: the VAE's
    folder, fingerprint and factors), as its compression or training recorded it
    (``origin_fields``; the latest first), or as the diffusers pipeline it was loaded from
    holds it, when that folder is still there: the default VAE of ``sample``, ``evaluate``,
    the server and the demo (``open_recorded_vae``), and of the images train and compress
    encode for it."""
    for step in ("compression", "training", "pipeline"):  # a DiTPipeline folder's vae/
        record = usable_vae(((metadata or {}).get(step) or {}).get("vae"))
        if record is not None:
            return record
    return None


def usable_vae(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``record`` (``LatentSpace.encoded_with``) when the VAE folder it names is still there."""
    if record and record.get("path") and (Path(record["path"]) / "config.json").exists():
        return record
    return None


def open_recorded_vae(record: dict[str, Any], device: str | torch.device | None = "cpu"
                      ) -> LatentSpace:
    """The VAE ``recorded_vae`` found, opened with the factors the latents were made with; a
    warning when its weights are no longer those (the folder was replaced since)."""
    space = LatentSpace.from_pretrained(record["path"], scale=record.get("scale"),
                                        shift=record.get("shift"), device=device)
    if record.get("fingerprint") not in (None, space.fingerprint):
        warnings.warn(f"the VAE in {record['path']} is not the one the data was encoded with "
                      "(its weights changed since): pass that VAE (--vae DIR, vae=)",
                      stacklevel=2)
    return space


def trained_vae(provenance: dict[str, Any]) -> str | None:
    """The VAE the reference ``train.py`` run of a model encoded its data with, as the
    checkpoint's args record it (``--vae ema`` or ``mse``: ``sd-vae-ft-ema`` or
    ``sd-vae-ft-mse``); None when they do not say."""
    vae = (provenance.get("trained_with") or {}).get("vae")
    return f"sd-vae-ft-{vae}" if vae in ("ema", "mse") else None


def decoder_for(config: ModelInputs, vae: LatentSpace | str | os.PathLike | Any | None,
                device: str | torch.device | None = "cpu", *,
                trained_with: str | None = None) -> LatentSpace | Any | None:
    """The decoder that turns a model's samples into images: ``vae`` opened (a folder) or as
    given (a ``LatentSpace``, or an export's ONNX decoder, which has the same ``decode`` and
    ``image_shape``), None for a pixel model without one; a latent model without one stops
    here with the fix, before anything is sampled, naming the VAE it was ``trained_with``
    (``trained_vae`` of its provenance) when that is known."""
    if vae is None:
        if is_latent(config):
            which = (f"{trained_with}, which its train.py run encoded with" if trained_with
                     else "sd-vae-ft-ema for DiT-XL/2 and SiT-XL/2")
            raise DataError(
                f"this model samples {config.in_channels}x{config.input_size}x"
                f"{config.input_size} VAE latents, not images: pass the VAE that encoded its "
                "data (vae= in Python, --vae DIR on the command line: a local diffusers "
                f"AutoencoderKL folder, {which})")
        return None
    if not is_latent(config):  # before the VAE is opened: its folder may not even exist
        raise DataError(f"this model samples {config.in_channels}x{config.input_size}x"
                        f"{config.input_size} images, not VAE latents: drop the VAE (--vae, "
                        "vae=)")
    opened = isinstance(vae, (str, os.PathLike))
    space = LatentSpace.from_pretrained(vae, device=device) if opened else vae
    channels = space.latent_channels
    if channels != config.in_channels:
        raise DataError(f"the VAE has {channels} latent channels but the model takes "
                        f"{config.in_channels}; pass the VAE its data was encoded with")
    return space


def to_latents(data: ImageDataset | StreamedImages, vae: LatentSpace | str | os.PathLike,
               cache_dir: str | os.PathLike | None = None, *,
               config: ModelInputs | None = None,
               device: str | torch.device | None = "cpu", workers: int = 0,
               progress: bool = True) -> ImageDataset:
    """Images (in memory, or ``StreamedImages``, streamed by ``workers`` reader processes)
    encoded with ``vae`` (a ``LatentSpace`` or its folder) for a latent model to train on, the
    latents cached under ``cache_dir`` and, after an interruption, resumed from there
    (``encode_dataset``); latents are returned as they are. ``config``: the model's, checked
    against the VAE and the images' size before anything is encoded (an encode may take
    hours; a wrong size found after it would waste them)."""
    if not data.pixels:
        return data
    if config is not None:
        space = decoder_for(config, vae, device)  # its latent channels are the model's
        size = space.image_shape(config)[1]
        if data.image_size != size:
            raise DataError(
                f"the model takes {config.in_channels}x{config.input_size}x{config.input_size} "
                f"latents, which this VAE makes from {size}x{size} images, but {data.name} "
                f"holds {data.image_size}x{data.image_size} images; pass --image-size {size} "
                f"(image_size={size}) to scale and centre-crop them")
    else:
        space = LatentSpace.from_pretrained(vae, device=device) if isinstance(
            vae, (str, os.PathLike)) else vae
    return space.encode_dataset(data, cache_dir=cache_dir, progress=progress, workers=workers)


def check_latents(latents: torch.Tensor, vae: torch.nn.Module) -> None:
    """Refuse latents that are not ``[N, C, H, W]`` with the VAE's latent channels."""
    expected = getattr(getattr(vae, "config", None), "latent_channels", None)
    if latents.dim() != 4 or (expected is not None and latents.shape[1] != expected):
        raise DataError(f"the VAE decodes [N, {expected}, H, W] latents, got shape "
                        f"{tuple(latents.shape)}; pass the VAE the model's data was encoded with")


def _image_dataset(images: torch.Tensor, data: ImageDataset) -> ImageDataset:
    name = data.name.removesuffix("-latent")
    return ImageDataset(images, data.labels.clone(), data.num_classes, f"{name}-decoded",
                        list(data.class_names))


def _latent_dataset(latents: torch.Tensor, data: ImageDataset | StreamedImages,
                    source_fingerprint: str | None, space: LatentSpace) -> ImageDataset:
    """The latents of ``data``, keeping its ``origin`` and the fingerprint of the images it
    was read from (a compress report then names the images, where the demo's evaluation
    finds them), and what they were encoded with (``space``)."""
    return ImageDataset(latents, data.labels.clone(), data.num_classes, f"{data.name}-latent",
                        list(data.class_names), pixels=False, origin=data.origin,
                        source_fingerprint=source_fingerprint,
                        encoded_with=space.encoded_with)
