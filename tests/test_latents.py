"""A latent model end to end: encode images with a VAE, sample latents, decode them to images
for the grid, the evaluation, the server and the demo (a tiny random VAE and model)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entpruner_sdk.cli import main
from entpruner_sdk.data import (
    DataError,
    ImageDataset,
    ImageFolder,
    eight_bit,
    load_data,
    unit_range,
)
from entpruner_sdk.data import latents as latents_module
from entpruner_sdk.data.latents import SD_VAE_SCALE, LatentSpace, decoder_for, is_latent
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.evaluation.reference import load_reference
from entpruner_sdk.models.io import load, save
from entpruner_sdk.sampling import sample
from tests.conftest import cache_a_quick_classifier, latent_model, tiny_config, tiny_vae


@pytest.fixture
def tiny_vae_dir(tmp_path):
    return tiny_vae(tmp_path / "vae")


def photos16(count: int = 64):
    """``count`` 16x16 photos, spread over the 8 classes."""
    data = load_data("photos", image_size=16)
    return data.subset(range(0, len(data), len(data) // count))


def test_latent_space_encodes_scaled_and_caches(tiny_vae_dir, tmp_path):
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    data = photos16(16)
    latents = space.encode_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    assert latents.images.shape == (16, 4, 8, 8) and not latents.pixels
    raw = space.vae.encode(data.images[:2]).latent_dist.mean
    assert torch.allclose(latents.images[:2], raw * SD_VAE_SCALE, atol=1e-5)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    again = space.encode_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again.images, latents.images)
    # a cache file the disk garbled is encoded again, and cached again
    from safetensors.torch import load_file

    cached[0].write_bytes(cached[0].read_bytes()[:100])
    remade = space.encode_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(remade.images, latents.images)
    assert torch.equal(load_file(str(cached[0]))["latents"], latents.images)
    decoded = space.decode(latents.images[:2])
    assert decoded.shape == (2, 3, 16, 16) and decoded.abs().max() <= 1


def test_latent_space_needs_a_local_vae_folder(tmp_path):
    with pytest.raises(DataError, match="AutoencoderKL folder"):
        LatentSpace.from_pretrained(tmp_path)


def test_a_diffusers_that_does_not_import_with_this_torch_is_named(tmp_path, monkeypatch):
    """diffusers 0.40 to 0.42 fail at import on torch 2.4 (measured: a RuntimeError from its
    lazy import, an AttributeError for torch.accelerator); such a module stands in here."""
    import sys
    import types

    class BuiltForANewerTorch(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("Failed to import diffusers.models.autoencoders.autoencoder_kl "
                               "because of the following error: infer_schema(func): ...")

    monkeypatch.setitem(sys.modules, "diffusers", BuiltForANewerTorch("diffusers"))
    with pytest.raises(ImportError, match=r"the installed diffusers does not import with torch "
                                          r".*RuntimeError: Failed to import.*diffusers 0\.35 "
                                          r"runs on torch 2\.4\), or upgrade torch"):
        LatentSpace.from_pretrained(tmp_path)


def test_8_bit_images_encode_as_their_floats_do(tiny_vae_dir):
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    pixels = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1])
    from_pixels = space.encode_dataset(ImageDataset(pixels, labels, 2), progress=False)
    floats = space.encode_dataset(ImageDataset(unit_range(pixels), labels, 2), progress=False)
    assert torch.equal(from_pixels.images, floats.images)
    assert torch.equal(space.encode(pixels[:, :1]), space.encode(unit_range(pixels[:, :1])))


def test_decoding_in_batches_and_a_decoded_dataset(tiny_vae_dir, tmp_path):
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    latents = space.encode_dataset(photos16(8), progress=False)
    whole = space.decode(latents.images, batch_size=8)
    assert torch.allclose(space.decode(latents.images, batch_size=3), whole, atol=1e-5)
    decoded = space.decode_dataset(latents, cache_dir=tmp_path / "cache", progress=False,
                                   batch_size=3)
    assert decoded.pixels and decoded.name == "photos16-train-decoded"
    assert decoded.images.dtype == torch.uint8  # 8-bit images, as real ones are
    assert torch.allclose(unit_range(decoded.images), whole, atol=1 / 127.5)
    again = space.decode_dataset(latents, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(again.images, decoded.images)
    from safetensors.torch import load_file, save_file

    cached = next((tmp_path / "cache").iterdir())
    assert load_file(str(cached))["pixels"].dtype == torch.uint8  # a quarter of the floats
    save_file({"images": whole.contiguous()}, str(cached))  # floats, as earlier versions cached
    older = space.decode_dataset(latents, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(older.images, whole)
    cached.write_bytes(b"garbled")  # a disk fault: decoded again
    remade = space.decode_dataset(latents, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(remade.images, decoded.images)
    assert space.image_shape(tiny_config(input_size=8)) == (3, 16, 16)
    with pytest.raises(DataError, match=r"decodes \[N, 4, H, W\] latents, got shape"):
        space.decode(torch.zeros(1, 3, 8, 8))


def test_a_latent_model_needs_its_vae_and_only_a_matching_one(tiny_vae_dir):
    latent, pixel = latent_model().config, tiny_config()
    assert is_latent(latent) and not is_latent(pixel)
    assert decoder_for(pixel, None) is None
    with pytest.raises(DataError, match="samples 4x8x8 VAE latents, not images: .*--vae DIR"):
        decoder_for(latent, None)
    assert isinstance(decoder_for(latent, tiny_vae_dir), LatentSpace)
    with pytest.raises(DataError, match="VAE has 4 latent channels but the model takes 8"):
        decoder_for(tiny_config(in_channels=8), tiny_vae_dir)


def test_a_missing_vae_is_named_when_the_train_py_run_recorded_it(tmp_path, capsys):
    from entpruner_sdk.serve.models import load_served_model

    model = latent_model()
    # what loading a reference train.py checkpoint keeps of its args (tests/test_io.py)
    model.provenance["trained_with"] = {"model": "DiT-tiny", "vae": "mse"}
    save(model, tmp_path / "model")
    named = r"pass the VAE that encoded its data .*: a local diffusers AutoencoderKL folder, " \
            r"sd-vae-ft-mse, which its train.py run encoded with\)"
    assert main(["sample", "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "grid.png"), "--quiet"]) == 2
    assert re.search(named, capsys.readouterr().err)
    with pytest.raises(DataError, match=named):
        load_served_model("m", str(tmp_path / "model"), device="cpu")
    assert main(["info", "--model", str(tmp_path / "model")]) == 0
    assert "decode them with --vae DIR (it was trained with sd-vae-ft-mse)" in (
        capsys.readouterr().out)
    # a model that does not say gets the released models' VAE named, as before
    with pytest.raises(DataError, match=r"sd-vae-ft-ema for DiT-XL/2 and SiT-XL/2\)"):
        decoder_for(latent_model().config, None)


def test_latent_samples_are_never_clipped_to_the_pixel_range():
    model = latent_model()
    clipped = sample(model, [0, 1], steps=4, seed=0, clip_denoised=True)
    assert torch.equal(clipped, sample(model, [0, 1], steps=4, seed=0, clip_denoised=False))
    pixel = latent_model(in_channels=1)  # the same weights' shapes on pixels: clipping acts
    assert not torch.equal(sample(pixel, [0, 1], steps=4, seed=0, clip_denoised=True),
                           sample(pixel, [0, 1], steps=4, seed=0, clip_denoised=False))


def test_evaluate_decodes_a_latent_model_against_images_or_latents(tiny_vae_dir):
    model, original = latent_model().keep_blocks([0, 3]), latent_model()
    images = photos16(64)
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    latents = space.encode_dataset(images, progress=False)
    for data in (images, latents, space.decode_dataset(latents, progress=False)):
        cache_a_quick_classifier(data)
    options = dict(samples=16, steps=3, features=("domain",), progress=False)
    with pytest.raises(DataError, match=r"Inception features need images .*\(--vae DIR\)"):
        evaluate(model, latents, **{**options, "features": ("domain", "inception")})
    in_latent_space = evaluate(model, latents, **options)  # no VAE: measured on latents
    assert "vae" not in in_latent_space.settings
    on_images = evaluate(model, images, vae=tiny_vae_dir, original=original, **options)
    assert on_images.images.shape == (16, 3, 16, 16)
    assert on_images.settings["vae"] and np.isfinite(on_images.metrics["fd_domain"])
    assert on_images.fidelity["psnr"] > 0
    on_decoded = evaluate(model, latents, vae=tiny_vae_dir, **options)
    # same noise, same decoder; against the 8-bit decoded reference, held as 8-bit pixels
    assert on_decoded.settings["samples_held"] == "uint8"
    assert torch.equal(on_decoded.images, eight_bit(on_images.images))
    assert on_decoded.settings["reference"] == "photos16-train-decoded"
    with pytest.raises(DataError, match="decodes this model's samples to 3x16x16 images but "
                                        "digits-train holds 1x8x8"):
        evaluate(model, "digits", vae=tiny_vae_dir, **options)
    # gray photos (one channel, as a folder of them loads) are compared as the RGB the VAE
    # encoded them as
    gray = ImageDataset(images.images.mean(1, keepdim=True), images.labels, 8, "gray16")
    cache_a_quick_classifier(gray.with_channels(3))
    on_gray = evaluate(model, gray, vae=tiny_vae_dir, **options)
    assert np.isfinite(on_gray.metrics["fd_domain"]) and on_gray.settings["reference"] == "gray16"


def photo_folder(folder, count: int = 16):
    """``count`` 16x16 photos written as PNGs in class folders; returns them in memory."""
    data = photos16(count)
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        (folder / data.class_names[label]).mkdir(parents=True, exist_ok=True)
        pixels = eight_bit(image).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / data.class_names[label] / f"{i}.png")
    return data


def test_cli_encode_then_sample_through_the_vae(tiny_vae_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    data = photo_folder(folder)
    out = tmp_path / "latents.npz"
    # the folder streams through two reader processes, in batches of 5 (the last one short)
    assert main(["encode", "--vae", str(tiny_vae_dir), "--data", str(folder), "--out", str(out),
                 "--workers", "2", "--batch-size", "5", "--quiet"]) == 0
    latents = load_data(out)
    assert latents.images.shape == (16, 4, 8, 8) and not latents.pixels
    assert latents.class_names == sorted(set(data.class_names))
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    read = load_data(folder)
    whole = space.encode_dataset(read, progress=False)
    assert torch.allclose(latents.images, whole.images, atol=1e-6)  # as if read whole
    # a folder streams as the 8-bit pixels it holds, a quarter of the bytes of floats
    first = next(ImageFolder(folder).batches(5, workers=2, start=3))
    assert first.dtype == torch.uint8 and torch.equal(first, read.images[3:8])
    assert torch.equal(latents.labels, whole.labels)
    streamed = space.encode_dataset(ImageFolder(folder), cache_dir=tmp_path / "cache",
                                    progress=False)  # in Python, cached by the files' stats
    cached = space.encode_dataset(ImageFolder(folder), cache_dir=tmp_path / "cache")
    assert torch.equal(cached.images, streamed.images)
    # the latents remember where their images are, so a report names the folder
    assert cached.origin == streamed.origin == {"data": str(folder.resolve())}
    assert len(list((tmp_path / "cache").iterdir())) == 1
    # an unreadable image read by a reader process: its message, not the process's traceback
    (folder / data.class_names[data.labels[0]] / "bad.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert main(["encode", "--vae", str(tiny_vae_dir), "--data", str(folder), "--out", str(out),
                 "--workers", "2", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("entpruner encode: error: cannot read image ") and "bad.png" in error
    assert "Traceback" not in error and "worker" not in error
    (folder / data.class_names[data.labels[0]] / "bad.png").unlink()
    save(latent_model(), tmp_path / "model")
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "model")]) == 0
    assert "works on 4-channel VAE latents" in capsys.readouterr().out
    grid, raw = tmp_path / "grid.png", tmp_path / "samples.npz"
    assert main(["sample", "--model", str(tmp_path / "model"), "--labels", "1,2", "--steps", "3",
                 "--out", str(grid), "--quiet"]) == 2
    assert "samples 4x8x8 VAE latents, not images" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path / "model"), "--labels", "1,2", "--steps", "3",
                 "--vae", str(tiny_vae_dir), "--out", str(grid), "--npz", str(raw),
                 "--quiet"]) == 0
    assert np.load(raw)["arr_0"].shape == (2, 16, 16, 3) and grid.stat().st_size > 0


def test_train_and_compress_encode_images_for_a_latent_model_given_its_vae(
        tiny_vae_dir, tmp_path, capsys, monkeypatch):
    from entpruner_sdk.utils.cache import cache_root

    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path / "cache"))  # this test's alone
    folder = tmp_path / "images"
    photo_folder(folder)
    save(latent_model(), tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--data", str(folder), "--quiet",
              "--device", "cpu", "--workers", "0"]
    assert main(["train", *common, "--steps", "1", "--batch-size", "4",
                 "--out", str(tmp_path / "ft")]) == 2
    assert "pass its VAE, --vae DIR on train and compress" in capsys.readouterr().err
    # images of another size than the VAE makes the model's latents from: refused before
    # anything is encoded
    assert main(["compress", *common, "--vae", str(tiny_vae_dir), "--image-size", "12",
                 "--budget", "2", "--out", str(tmp_path / "wrong")]) == 2
    assert ("which this VAE makes from 16x16 images, but images holds 12x12 images; pass "
            "--image-size 16") in capsys.readouterr().err
    assert main(["train", *common, "--vae", str(tiny_vae_dir), "--image-size", "12",
                 "--out", str(tmp_path / "wrong")]) == 2
    assert "pass --image-size 16" in capsys.readouterr().err
    assert not (cache_root() / "latents").exists()
    assert main(["train", *common, "--vae", str(tiny_vae_dir), "--steps", "1", "--batch-size",
                 "4", "--out", str(tmp_path / "ft")]) == 0
    cached = list((cache_root() / "latents").iterdir())
    assert len(cached) == 1  # encoded once, into the cache
    reference, _ = load_reference(ImageFolder(folder), None)
    cache_a_quick_classifier(reference)  # the one `evaluate --data FOLDER --vae` would train
    assert main(["compress", *common, "--vae", str(tiny_vae_dir), "--budget", "2", "--steps",
                 "4", "--interval", "2", "--batch-size", "4", "--calibration-per-class", "2",
                 "--calibration-times", "2", "--report-samples", "4",
                 "--out", str(tmp_path / "run")]) == 0
    assert list((cache_root() / "latents").iterdir()) == cached  # read back, not encoded again
    # the report compares the decoded samples with the real images, not with the latents'
    # reconstructions: no latent is decoded, and no second classifier is trained
    assert not (cache_root() / "decoded").exists()
    assert len(list((cache_root() / "classifiers").iterdir())) == 1
    # the latents are those encode writes, and the report names the images, where the demo's
    # evaluation finds them
    assert main(["encode", "--vae", str(tiny_vae_dir), "--data", str(folder), "--out",
                 str(tmp_path / "l.npz"), "--workers", "0", "--quiet"]) == 0
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    encoded = space.encode_dataset(ImageFolder(folder), cache_dir=cache_root() / "latents")
    assert torch.equal(encoded.images, load_data(tmp_path / "l.npz").images)
    summary = json.loads((tmp_path / "run" / "report.json").read_text())["summary"]
    assert summary["data_source"] == str(folder.resolve())
    assert summary["quality_settings"]["reference"] == "images"
    assert summary["quality_settings"]["samples_held"] == "uint8"
    assert load(tmp_path / "run" / "model").depth == 2


def interrupt_the_read_of(image: int, images: type, monkeypatch) -> list[int]:
    """Ctrl-C once, when ``images`` (a ``StreamedImages`` class) reads image ``image`` (in a
    batch of 3, the 3rd batch for image 7); returns the list of the images read."""
    reads, read, interrupt = [], images.read, [True]

    def interrupted(self, index):
        reads.append(index)
        if index == image and interrupt:
            interrupt.clear()
            raise KeyboardInterrupt
        return read(self, index)

    monkeypatch.setattr(images, "read", interrupted)
    return reads


@pytest.mark.parametrize("save_every", [0.0, 3600.0])  # after every batch; only at Ctrl-C
def test_an_interrupted_encode_continues_where_it_stopped(tiny_vae_dir, tmp_path, capsys,
                                                           monkeypatch, save_every):
    folder = tmp_path / "images"
    for i in range(10):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 2}" / f"{i}.png")
    reads = interrupt_the_read_of(7, ImageFolder, monkeypatch)
    out = tmp_path / "latents.npz"
    command = ["encode", "--vae", str(tiny_vae_dir), "--data", str(folder), "--out", str(out),
               "--workers", "0", "--batch-size", "3", "--quiet"]
    monkeypatch.setattr(latents_module, "CHECKPOINT_SECONDS", save_every)
    assert main(command) == 130 and not out.exists()
    assert capsys.readouterr().err.strip() == (
        f"entpruner encode: interrupted; {out}.encoding holds 6 images' latents: run the same "
        "command to continue from there")
    reads.clear()
    assert main(command) == 0
    assert sorted(set(reads)) == list(range(6, 10))  # the first 6 were not read again
    assert not (tmp_path / "latents.npz.encoding").exists()
    whole = LatentSpace.from_pretrained(tiny_vae_dir).encode_dataset(
        ImageFolder(folder), batch_size=3, progress=False)
    assert torch.equal(load_data(out).images, whole.images)  # as if never interrupted


def test_a_hugging_face_dataset_on_disk_encodes_row_by_row_and_continues(
        tiny_vae_dir, tmp_path, capsys, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from entpruner_sdk.data.datasets import open_data
    from entpruner_sdk.data.hugging_face import HuggingFaceImages
    from entpruner_sdk.data.latents import to_latents
    from entpruner_sdk.evaluation.reference import images_behind

    data = photos16(12)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=data.class_names)})
    datasets.Dataset.from_dict(
        {"image": [Image.fromarray(eight_bit(image).permute(1, 2, 0).numpy())
                   for image in data.images], "label": data.labels.tolist()},
        features=features).save_to_disk(str(tmp_path / "photos"))
    reads = interrupt_the_read_of(7, HuggingFaceImages, monkeypatch)
    monkeypatch.setattr(latents_module, "CHECKPOINT_SECONDS", 0.0)
    out = tmp_path / "latents.npz"
    command = ["encode", "--vae", str(tiny_vae_dir), "--data", str(tmp_path / "photos"),
               "--out", str(out), "--workers", "0", "--batch-size", "3", "--quiet"]
    assert main(command) == 130 and not out.exists()
    assert "holds 6 images' latents: run the same command" in capsys.readouterr().err
    reads.clear()
    assert main(command) == 0
    assert sorted(set(reads)) == list(range(6, len(data)))  # the first 6 were not read again
    monkeypatch.undo()
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    whole = space.encode_dataset(load_data(tmp_path / "photos"), batch_size=3, progress=False)
    encoded = load_data(out)
    assert torch.allclose(encoded.images, whole.images, atol=1e-6)  # as if read whole
    assert encoded.class_names == data.class_names and torch.equal(encoded.labels, data.labels)
    # in Python alike, through reader processes; the latents remember the dataset, so a
    # report compares the samples with its images
    opened = open_data(tmp_path / "photos")
    latents = to_latents(opened, space, tmp_path / "cache", workers=2, progress=False)
    assert torch.allclose(latents.images, whole.images, atol=1e-6)
    assert latents.origin == {"data": str((tmp_path / "photos").resolve())}
    assert latents.source_fingerprint == opened.fingerprint()
    assert isinstance(images_behind(latents, decoded=True), HuggingFaceImages)
    assert images_behind(latents, decoded=False) is latents  # latents compared as latents


def test_a_new_version_of_a_hugging_face_dataset_encodes_only_its_new_images(
        tiny_vae_dir, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from entpruner_sdk.data.datasets import open_data
    from entpruner_sdk.data.hugging_face import HuggingFaceImages

    data, cache = photos16(12), tmp_path / "cache"
    pictures = [Image.fromarray(eight_bit(image).permute(1, 2, 0).numpy())
                for image in data.images]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=data.class_names)})

    def saved(version: str, rows: list[int]) -> Path:  # a save_to_disk of those rows
        folder = tmp_path / version / "photos"
        datasets.Dataset.from_dict({"image": [pictures[row] for row in rows],
                                    "label": [int(data.labels[row]) for row in rows]},
                                   features=features).save_to_disk(str(folder))
        return folder

    space = LatentSpace.from_pretrained(tiny_vae_dir)
    space.encode_dataset(open_data(saved("v1", list(range(8)))), cache, batch_size=3,
                         progress=False)
    reads, read = [], HuggingFaceImages.read

    def counted(self, index):
        reads.append(index)
        return read(self, index)

    monkeypatch.setattr(HuggingFaceImages, "read", counted)
    # v2 drops rows 0 and 1, reorders the rest and adds four new images
    v2 = open_data(saved("v2", [7, 6, 5, 4, 3, 2, 8, 9, 10, 11]))
    encoded = space.encode_dataset(v2, cache, batch_size=3, progress=False)
    assert sorted(reads) == [6, 7, 8, 9]  # the new images' rows, and no other
    whole = space.encode_dataset(v2, batch_size=3, progress=False)
    torch.testing.assert_close(encoded.images, whole.images)  # as if encoded anew

    # rows that keep only a path to their image file are keyed by the file's stats: a file
    # rewritten is encoded again, alone
    files = []
    for row in range(4):
        files.append(tmp_path / "files" / f"{row}.png")
        files[-1].parent.mkdir(exist_ok=True)
        pictures[row].save(files[-1])
    linked = datasets.Dataset.from_dict({"image": [str(file) for file in files],
                                         "label": data.labels[:4].tolist()}, features=features)
    assert linked.data.column("image")[0]["bytes"].as_py() is None  # a path, no bytes
    space.encode_dataset(HuggingFaceImages(linked, name="linked"), cache, progress=False)
    pictures[11].save(files[2])
    reads.clear()
    changed = space.encode_dataset(HuggingFaceImages(linked, name="linked"), cache,
                                   progress=False)
    assert reads == [2]
    torch.testing.assert_close(changed.images[2], space.encode_dataset(
        HuggingFaceImages(linked, name="linked"), progress=False).images[2])


def test_an_encode_names_every_bad_image_and_then_encodes_only_what_changed(
        tiny_vae_dir, tmp_path, monkeypatch):
    folder, cache = tmp_path / "images", tmp_path / "cache"
    for i in range(10):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 2}" / f"{i}.png")
    good = {name: (folder / name).read_bytes() for name in ("c0/2.png", "c1/7.png")}
    (folder / "c0" / "2.png").write_bytes(b"")  # downloads that failed
    (folder / "c1" / "7.png").write_bytes(good["c1/7.png"][:50])
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    reads, read = [], ImageFolder.read

    def counted(self, index):
        reads.append(self.files[index].relative_to(folder).as_posix())
        return read(self, index)

    monkeypatch.setattr(ImageFolder, "read", counted)
    with pytest.raises(DataError, match=r"(?s)2 of the 10 images read from .*c0/2\.png: .*"
                                        r"c1/7\.png: .*delete or replace them"):
        space.encode_dataset(ImageFolder(folder), cache, batch_size=3, progress=False)
    # mended: only they are encoded; the 8 others' latents were kept
    for name, content in good.items():
        (folder / name).write_bytes(content)
    reads.clear()
    mended = space.encode_dataset(ImageFolder(folder), cache, batch_size=3, progress=False)
    assert sorted(reads) == ["c0/2.png", "c1/7.png"]
    whole = space.encode_dataset(ImageFolder(folder), batch_size=3, progress=False)
    torch.testing.assert_close(mended.images, whole.images)  # as if nothing had been wrong
    # images added later: only they are encoded, the rest come from the finished encode
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "c1" / "10.png")
    reads.clear()
    grown = space.encode_dataset(ImageFolder(folder), cache, batch_size=3, progress=False)
    assert reads == ["c1/10.png"]
    whole = space.encode_dataset(ImageFolder(folder), batch_size=3, progress=False)
    torch.testing.assert_close(grown.images, whole.images)
    assert len(grown) == 11
    assert not list(cache.glob("*.partial.safetensors"))  # spent, once finished


def test_an_encode_continues_a_partial_from_before_keys_were_kept(tiny_vae_dir, tmp_path,
                                                                  monkeypatch):
    from safetensors.torch import save_file

    folder, cache = tmp_path / "images", tmp_path / "cache"
    photo_folder(folder)
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    whole = space.encode_dataset(ImageFolder(folder), batch_size=4, progress=False)
    opened = ImageFolder(folder)
    partial = latents_module.partial_file(space._cache_file(cache, opened, opened.fingerprint()))
    cache.mkdir()
    save_file({"latents": whole.images[:6].contiguous()}, str(partial))  # the first 6, as then
    reads, read = [], ImageFolder.read
    monkeypatch.setattr(ImageFolder, "read", lambda self, i: reads.append(i) or read(self, i))
    resumed = space.encode_dataset(opened, cache, batch_size=4, progress=False)
    assert sorted(reads) == list(range(6, len(whole)))
    torch.testing.assert_close(resumed.images, whole.images)
    assert not partial.exists()


def test_compress_a_latent_model_reports_on_decoded_images(tiny_vae_dir, tmp_path,
                                                           monkeypatch):
    from entpruner_sdk.compress import compress
    from entpruner_sdk.evaluation.inception import FeatureNetworkMissing, inception_path

    space = LatentSpace.from_pretrained(tiny_vae_dir)
    latents = space.encode_dataset(photos16(64), progress=False)
    cache_a_quick_classifier(space.decode_dataset(latents, progress=False))
    fast = dict(steps=8, batch_size=8, interval=4, calibration_per_class=2,
                calibration_times=2, proxy_samples=4, report_samples=8, progress=False)
    try:
        inception_path()
    except FeatureNetworkMissing:
        pass  # without the fid extra the config refuses "inception" first, elsewhere tested
    else:  # latents that do not say which VAE made them (made elsewhere)
        from dataclasses import replace

        with pytest.raises(DataError, match="standard FID in the report needs images"):
            compress(latent_model(), replace(latents, encoded_with=None), 2,
                     report_features=("domain", "inception"), **fast)
        # latents that name theirs are decoded by it, for the report's images
        from entpruner_sdk.compress.checks import check_report_decoder
        from entpruner_sdk.compress.config import CompressConfig

        config = CompressConfig.from_options(report_features=("domain", "inception"))
        decoder = check_report_decoder(latent_model(), config, data=latents)
        assert decoder.fingerprint == space.fingerprint
    opened = []  # the real loader, counted: the check before training opens the VAE once
    real_open = LatentSpace.from_pretrained.__func__
    monkeypatch.setattr(LatentSpace, "from_pretrained", classmethod(
        lambda cls, *args, **kwargs: opened.append(args) or real_open(cls, *args, **kwargs)))
    result = compress(latent_model(), latents, 2, report_vae=str(tiny_vae_dir), **fast)
    assert len(opened) == 1
    summary = result.report["summary"]
    assert summary["latent"] and summary["quality_settings"]["vae"] == space.fingerprint
    assert summary["quality_settings"]["reference"] == "photos16-train-decoded"
    result.save(tmp_path / "run")
    assert "measured on images decoded by the VAE" in (tmp_path / "run" / "report.md").read_text()


def test_a_latent_model_decodes_with_the_vae_its_data_was_encoded_with(tiny_vae_dir,
                                                                       tmp_path, capsys):
    import entpruner_sdk as ep
    from entpruner_sdk.data.latents import recorded_vae
    from entpruner_sdk.serve.models import load_served_model

    # encode to an .npz, which keeps the VAE; a model trained on it records it
    assert main(["encode", "--vae", str(tiny_vae_dir), "--data", "photos", "--image-size",
                 "16", "--out", str(tmp_path / "l.npz"), "--quiet"]) == 0
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    assert load_data(tmp_path / "l.npz").encoded_with == space.encoded_with
    ep.save(latent_model(), tmp_path / "new")
    assert main(["train", "--model", str(tmp_path / "new"), "--data", str(tmp_path / "l.npz"),
                 "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    trained = ep.load(tmp_path / "run" / "model")
    assert trained.metadata["training"]["vae"]["path"] == str(tiny_vae_dir.resolve())
    assert recorded_vae(trained.metadata) == space.encoded_with
    # sample, evaluate and the server decode with it when no --vae is given, and say so
    capsys.readouterr()
    assert main(["sample", "--model", str(tmp_path / "run" / "model"), "--labels", "1",
                 "--steps", "2", "--out", str(tmp_path / "g.png"), "--quiet"]) == 0
    assert (f"decoding with {tiny_vae_dir.resolve()}, the VAE its data was encoded with"
            in capsys.readouterr().out)
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.mode == "RGB"  # decoded images, not latents
    served = load_served_model("x", str(tmp_path / "run" / "model"), "torch")
    assert isinstance(served.decoder, LatentSpace)
    assert main(["info", "--model", str(tmp_path / "run" / "model")]) == 0
    assert (f"decode them with {tiny_vae_dir.resolve()}, which its data was encoded with"
            in capsys.readouterr().out)
    # a compress of the .npz reports on images that VAE decodes, as evaluate would measure
    from entpruner_sdk.utils.cache import cache_root

    decoded = space.decode_dataset(load_data(tmp_path / "l.npz"),
                                   cache_dir=cache_root() / "decoded", progress=False)
    cache_a_quick_classifier(decoded)  # the classifier of that reference, briefly trained
    assert main(["compress", "--model", str(tmp_path / "new"), "--data", str(tmp_path / "l.npz"),
                 "--budget", "2", "--steps", "2", "--interval", "1", "--batch-size", "4",
                 "--calibration-per-class", "2", "--calibration-times", "2",
                 "--report-samples", "4", "--out", str(tmp_path / "pruned"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "pruned" / "report.json").read_text())["summary"]
    assert summary["quality_settings"]["vae"] == space.fingerprint
    assert summary["vae"] == space.encoded_with
    # a VAE replaced in that folder is used, with a warning
    replaced = space.vae
    with torch.no_grad():
        replaced.decoder.conv_out.bias.add_(0.5)
    replaced.save_pretrained(tiny_vae_dir)
    assert main(["sample", "--model", str(tmp_path / "run" / "model"), "--labels", "1",
                 "--steps", "2", "--out", str(tmp_path / "g.png"), "--quiet"]) == 0
    assert "is not the one the data was encoded with (its weights changed since)" in (
        capsys.readouterr().err)
    # once the VAE's folder is gone, the model asks for one again
    tiny_vae_dir.rename(tmp_path / "moved")
    assert recorded_vae(trained.metadata) is None
    assert main(["sample", "--model", str(tmp_path / "run" / "model"), "--labels", "1",
                 "--steps", "2", "--out", str(tmp_path / "h.png"), "--quiet"]) == 2
    assert "pass the VAE that encoded its data" in capsys.readouterr().err


def test_a_diffusers_dit_pipeline_folder_is_a_dit_that_decodes_with_its_own_vae(tiny_vae_dir,
                                                                              tmp_path, capsys):
    """The DiT release on the Hub is a DiTPipeline folder: model_index.json, transformer/, vae/,
    scheduler/. It loads as a DiT with its classes named, and its VAE encodes and decodes."""
    import entpruner_sdk as ep
    from entpruner_sdk.data.latents import recorded_vae
    from entpruner_sdk.models.io import CheckpointError
    from entpruner_sdk.teachers import as_model

    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
        num_layers=4, sample_size=8, patch_size=2, num_embeds_ada_norm=8)
    pipeline = diffusers.DiTPipeline(transformer, diffusers.AutoencoderKL.from_pretrained(
        tiny_vae_dir), diffusers.DDIMScheduler())
    folder = tmp_path / "pipeline"
    pipeline.save_pretrained(folder)
    names = ["flower", "china", "coffee", "chelsea", "rocket", "hubble_deep_field",
             "immunohistochemistry", "astronaut"]  # not the photos' order
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(i): f"{name}, another name" for i, name in enumerate(names)}
    (folder / "model_index.json").write_text(json.dumps(index))  # as the Hub's release has it

    model = ep.load(folder)
    assert model.config.family == "dit" and model.provenance["class_names"] == names
    state = ep.load(folder / "transformer", family="dit").state_dict()
    for same in (model, as_model(pipeline), as_model(transformer)):  # in memory too
        assert all(torch.equal(same.state_dict()[k], v) for k, v in state.items())
    assert recorded_vae(model.metadata)["path"] == str((folder / "vae").resolve())
    loaded = as_model(diffusers.DiTPipeline.from_pretrained(folder))  # from that folder
    assert loaded.provenance["class_names"] == names
    assert recorded_vae(loaded.metadata) == recorded_vae(model.metadata)
    with pytest.raises(CheckpointError, match="is a DiTPipeline, which samples its "
                                              "transformer as a DiT .*not family='sit'"):
        ep.load(folder, family="sit")

    # a Hub name the local Hugging Face cache holds reads from there, the VAE inside it too;
    # one it does not hold is refused with the command that downloads it (nothing is fetched)
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--facebook--DiT-tiny" / "snapshots" / "0123abc"
    shutil.copytree(folder, snapshot)
    (cache / "models--facebook--DiT-tiny" / "refs").mkdir()
    (cache / "models--facebook--DiT-tiny" / "refs" / "main").write_text("0123abc")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        hub = ep.load("facebook/DiT-tiny")
        assert hub.provenance["class_names"] == names
        assert recorded_vae(hub.metadata)["path"] == str((snapshot / "vae").resolve())
        assert LatentSpace.from_pretrained("facebook/DiT-tiny/vae").folder == str(
            (snapshot / "vae").resolve())
        with pytest.raises(CheckpointError, match="if it names a Hugging Face Hub repository, "
                                                  "the local cache does not hold it: "
                                                  "download it once "
                                                  r"\(hf download facebook/DiT-XL-2-256 "):
            ep.load("facebook/DiT-XL-2-256")
        with pytest.raises(DataError, match=r"hf download stabilityai/sd-vae-ft-ema "):
            LatentSpace.from_pretrained("stabilityai/sd-vae-ft-ema")
        # runs/typo, where runs/ is here, is a path, however it reads
        (tmp_path / "runs").mkdir()
        patch.chdir(tmp_path)
        with pytest.raises(CheckpointError, match="pass a checkpoint file or a model directory"):
            ep.load("runs/typo")
    # sample decodes with the pipeline's VAE, by class name
    assert main(["sample", "--model", str(folder), "--labels", "coffee", "--steps", "2",
                 "--out", str(tmp_path / "g.png"), "--quiet"]) == 0
    assert (f"decoding with {(folder / 'vae').resolve()}, its diffusers pipeline's VAE"
            in capsys.readouterr().out)
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.mode == "RGB"
    # compress on images: encoded with the pipeline's VAE, their names matched to its classes
    assert main(["compress", "--model", str(folder), "--data", "photos", "--image-size", "16",
                 "--budget", "2", "--steps", "2", "--interval", "1", "--batch-size", "4",
                 "--calibration-per-class", "2", "--calibration-times", "2",
                 "--report-samples", "0", "--out", str(tmp_path / "pruned"), "--quiet"]) == 0
    assert (f"encoding with {(folder / 'vae').resolve()}, the VAE the model decodes with"
            in capsys.readouterr().out)
    pruned = ep.load(tmp_path / "pruned")
    assert recorded_vae(pruned.metadata)["path"] == str((folder / "vae").resolve())
    assert pruned.provenance["class_names"] == names
    # an export keeps the record: sampling it decodes with that VAE too
    from entpruner_sdk.export import export, load_exported

    export(model, tmp_path / "onnx", guided=False, batch=(1, 2, 2))
    assert recorded_vae(load_exported(tmp_path / "onnx").metadata)["path"] == str(
        (folder / "vae").resolve())
    # latents made elsewhere (no record of their VAE): the teacher's is the student's
    from dataclasses import replace

    from entpruner_sdk.compress import compress

    latents = LatentSpace.from_pretrained(folder / "vae").encode_dataset(photos16(16),
                                                                        progress=False)
    result = compress(model, replace(latents, encoded_with=None), 2, steps=2, batch_size=4,
                      interval=1, calibration_per_class=2, calibration_times=2,
                      report_samples=0, progress=False)
    assert result.report["summary"]["vae"]["path"] == str((folder / "vae").resolve())
    # a pipeline on another noise schedule is said to differ from DiT's
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config["beta_schedule"] = "squaredcos_cap_v2"
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="trains on 1000 steps of squaredcos_cap_v2 betas"):
        ep.load(folder)


def test_large_cached_latents_are_mapped_from_the_cache_file(tiny_vae_dir, tmp_path,
                                                             monkeypatch):
    from entpruner_sdk.data import mapped
    from tests.conftest import mapped_files

    monkeypatch.setattr(mapped, "MAP_FROM", 0)  # every cache file is large
    space, data = LatentSpace.from_pretrained(tiny_vae_dir), photos16(8)
    encoded = space.encode_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    (cache,) = (tmp_path / "cache").iterdir()
    assert str(cache) in mapped_files()  # the encoded copy swapped for the file's pages
    again = space.encode_dataset(data, cache_dir=tmp_path / "cache", progress=False)
    whole = space.encode_dataset(data, progress=False)  # no cache: held in memory
    assert torch.equal(again.images, encoded.images)
    torch.testing.assert_close(encoded.images, whole.images)


def test_a_vae_with_its_own_scaling_and_shift_factors_encodes_and_decodes_with_them(
        tiny_vae_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from entpruner_sdk.export import export, load_exported

    # SD3's and FLUX's VAEs declare a scale and a shift; diffusers' pipelines use them so
    config = json.loads((tiny_vae_dir / "config.json").read_text())
    other = tmp_path / "vae-shifted"
    other.mkdir()
    for file in tiny_vae_dir.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    (other / "config.json").write_text(json.dumps(
        {**config, "scaling_factor": 0.5, "shift_factor": 0.25}))
    sd, shifted = LatentSpace.from_pretrained(tiny_vae_dir), LatentSpace.from_pretrained(other)
    assert (sd.scale, sd.shift) == (SD_VAE_SCALE, 0.0)
    assert (shifted.scale, shifted.shift) == (0.5, 0.25)
    images = photos16(4).images
    z = shifted.vae.encode(unit_range(images)).latent_dist.mean
    latents = shifted.encode(images)
    torch.testing.assert_close(latents, (z - 0.25) * 0.5)
    torch.testing.assert_close(shifted.decode(latents), sd.decode(z * SD_VAE_SCALE))
    # the same weights under other factors make other latents: cached apart
    assert shifted.fingerprint != sd.fingerprint
    assert LatentSpace.from_pretrained(other, scale=SD_VAE_SCALE, shift=0.0).fingerprint == (
        sd.fingerprint)  # given as SD's, as SD's
    # an export's decoder undoes both, as the VAE does
    model = latent_model()
    export(model, tmp_path / "onnx", "onnx", vae=other, exporter="torchscript")
    decoder = load_exported(tmp_path / "onnx").decoder
    assert (decoder.scale, decoder.shift) == (0.5, 0.25)
    torch.testing.assert_close(decoder.decode(latents), shifted.decode(latents), atol=1e-4,
                               rtol=0)


def test_an_export_carries_the_vae_decoder_and_samples_images_alone(tiny_vae_dir, tmp_path,
                                                                    capsys):
    pytest.importorskip("onnxruntime")
    from entpruner_sdk.export import export, load_exported
    from entpruner_sdk.serve.models import load_served_model

    model = latent_model()
    result = export(model, tmp_path / "onnx", "onnx", vae=tiny_vae_dir, exporter="torchscript")
    assert result.files["decoder"] == "vae_decoder.onnx"
    assert {c.batch for c in result.parity if c.graph == "decoder"} == {1, 3}
    assert all(c.passed for c in result.parity)
    runtime = load_exported(tmp_path / "onnx")
    space = LatentSpace.from_pretrained(tiny_vae_dir)
    assert runtime.decoder.fingerprint == space.fingerprint
    assert runtime.decoder.image_shape(model.config) == space.image_shape(model.config)
    # the whole pipeline on ONNX Runtime: the same images as PyTorch and the VAE
    onnx_images = runtime.decoder.decode(runtime.sample([1, 2], steps=3, seed=0))
    torch_images = space.decode(sample(model, [1, 2], steps=3, seed=0))
    torch.testing.assert_close(onnx_images, torch_images, atol=1e-3, rtol=0)
    served = load_served_model("x", str(tmp_path / "onnx"), "onnxruntime")  # no --vae needed
    images = served.generate([1, 2], [0], [2], sampler="ddim", steps=3, cfg_scale=1.0)
    assert images.shape == (2, 3, 16, 16)
    assert main(["sample", "--model", str(tmp_path / "onnx"), "--labels", "1", "--steps", "3",
                 "--out", str(tmp_path / "grid.png"), "--npz", str(tmp_path / "s.npz"),
                 "--quiet"]) == 0
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (1, 16, 16, 3)
    # info describes an export from its manifest, as it does a model
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "onnx")]) == 0
    text = capsys.readouterr().out
    checks = len(result.parity)
    assert re.search(r"export: onnx fp32, files model\.onnx \([\d.]+ kB\), model_cfg\.onnx "
                     r"\([\d.]+ kB\), vae_decoder\.onnx \([\d.]+ [kM]B\)", text)
    assert "carries the VAE decoder" in text
    assert f"parity with PyTorch: {checks} of {checks} checks passed" in text
    assert main(["info", "--model", str(tmp_path / "onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["export"]["files"]["decoder"] == "vae_decoder.onnx"
    with pytest.raises(DataError, match="VAE has 4 latent channels but the model takes 8"):
        export(latent_model(in_channels=8), tmp_path / "other", "onnx", vae=tiny_vae_dir)
    # a model of images has no use for a VAE: refused before the VAE's folder is opened
    with pytest.raises(DataError, match="this model samples 1x8x8 images, not VAE latents: "
                                        "drop the VAE"):
        export(latent_model(in_channels=1), tmp_path / "pixels", "onnx",
               vae=tmp_path / "no-such-vae")


def test_a_vae_decoder_is_exported_and_checked_once(tiny_vae_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from entpruner_sdk.export import export, load_exported, onnx_export

    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path / "cache"))  # this test's alone
    first = export(latent_model(), tmp_path / "onnx", "onnx", vae=tiny_vae_dir,
                   exporter="torchscript")
    monkeypatch.setattr(onnx_export, "export_vae_decoder",
                        lambda *a, **k: pytest.fail("the decoder was exported again"))
    # another format of the same model, and a pruned one: the same decoder, from the cache
    for name, model in (("fp16", latent_model()), ("pruned", latent_model().keep_blocks([0]))):
        again = export(model, tmp_path / name, "onnx-fp16" if name == "fp16" else "onnx",
                       vae=tiny_vae_dir, exporter="torchscript")
        decoder = (tmp_path / name / "vae_decoder.onnx").read_bytes()
        assert decoder == (tmp_path / "onnx" / "vae_decoder.onnx").read_bytes()
        assert [c for c in again.parity if c.graph == "decoder"] == [
            c for c in first.parity if c.graph == "decoder"]
        runtime = load_exported(tmp_path / name)
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(runtime.decoder.decode(latents),
                                   LatentSpace.from_pretrained(tiny_vae_dir).decode(latents),
                                   atol=1e-4, rtol=0)
    # another opset is another graph: exported anew
    with pytest.raises(pytest.fail.Exception, match="exported again"):
        export(latent_model(), tmp_path / "opset", "onnx", vae=tiny_vae_dir,
               exporter="torchscript", opset=onnx_export.OPSET - 1)
    # a cached decoder the disk damaged is exported again, not copied into the export
    cached = next((tmp_path / "cache" / "vae-decoders").glob("*/vae_decoder.onnx"))
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(pytest.fail.Exception, match="exported again"):
        export(latent_model(), tmp_path / "damaged", "onnx", vae=tiny_vae_dir,
               exporter="torchscript")
    monkeypatch.undo()  # the exporter back, and with it the cache's folder
    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path / "cache"))
    export(latent_model(), tmp_path / "damaged", "onnx", vae=tiny_vae_dir,
           exporter="torchscript")
    assert load_exported(tmp_path / "damaged").decoder is not None
    assert cached.stat().st_size == len(whole)
