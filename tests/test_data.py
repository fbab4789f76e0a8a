import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from entpruner_sdk.data import (
    DataError,
    ImageDataset,
    ImageFolder,
    load_data,
    open_data,
    save_npz,
    unit_range,
)
from entpruner_sdk.data.folder import class_images
from tests.conftest import mapped_files


def test_digits_bundled_splits_are_disjoint_and_cover_all():
    train, test, full = (load_data("digits", split=s) for s in ("train", "test", "all"))
    assert train.images.shape[1:] == (1, 8, 8) and train.num_classes == 10
    assert len(train) + len(test) == len(full) == 1797
    assert set(test.labels.tolist()) == set(range(10))
    assert train.images.min() == -1 and train.images.max() == 1
    # printed in a notebook, a dataset describes itself instead of dumping its pixels
    assert repr(train) == "ImageDataset('digits-train': 1537 images of 1x8x8, 10 classes)"


def test_photos_bundled_is_rgb_class_conditional_with_held_out_pixels():
    train, test = load_data("photos", split="train", image_size=16), load_data(
        "photos", split="test", image_size=16)
    assert train.images.shape[1:] == (3, 16, 16) and train.num_classes == 8
    assert len(train.class_names) == 8 and "astronaut" in train.class_names
    assert len(test) == 8 * 64 and torch.bincount(test.labels).tolist() == [64] * 8
    # classes differ: mean colour of two photos is not the same
    means = torch.stack([train.images[train.labels == c].mean((0, 2, 3)) for c in range(8)])
    assert torch.cdist(means, means).fill_diagonal_(1).min() > 0.01


def test_unknown_bundled_options():
    with pytest.raises(DataError, match="split"):
        load_data("digits", split="validation")
    with pytest.raises(DataError, match="8x8"):
        load_data("digits", image_size=16)
    with pytest.raises(DataError, match=r"neither a bundled dataset .* folder$"):
        load_data("no-such-data")
    with pytest.raises(DataError, match="nor an existing file or folder; did you mean digits?"):
        load_data("digitz")


def write_folder(root, sizes=((8, 8),), classes=("a", "b"), per_class=3, gray=False):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            array = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
            if gray:
                array[..., 1] = array[..., 2] = array[..., 0]
            Image.fromarray(array).save(root / name / f"{i}.png")


def test_folder_of_class_folders(tmp_path):
    write_folder(tmp_path)
    data = load_data(tmp_path)
    assert data.images.shape == (6, 3, 8, 8) and data.class_names == ["a", "b"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    write_folder(tmp_path / "gray", gray=True)
    assert load_data(tmp_path / "gray").channels == 1
    # what notebooks and Mac archives leave behind is neither a class nor an image
    write_folder(tmp_path / "tidy")
    for junk in (".ipynb_checkpoints", "__MACOSX"):
        (tmp_path / "tidy" / junk).mkdir()
        (tmp_path / "tidy" / junk / "x.png").write_bytes(b"not a png")
    (tmp_path / "tidy" / "a" / "._0.png").write_bytes(b"resource fork")
    tidy = load_data(tmp_path / "tidy")
    assert tidy.class_names == ["a", "b"] and len(tidy) == 6


def test_gray_images_are_shown_as_rgb_to_a_model_that_takes_rgb():
    from entpruner_sdk.data.datasets import check_fits, fit_channels
    from tests.conftest import tiny_config

    digits = load_data("digits")  # gray 8x8
    rgb = fit_channels(tiny_config(in_channels=3), digits)
    assert rgb.images.shape == (len(digits), 3, 8, 8) and rgb.origin == digits.origin
    assert all(torch.equal(rgb.images[:, c], digits.images[:, 0]) for c in range(3))
    assert rgb.images.untyped_storage().nbytes() == digits.images.untyped_storage().nbytes()
    # hashed a chunk at a time: the key of the same pixels held as a copy
    copy = ImageDataset(rgb.images.contiguous(), rgb.labels, rgb.num_classes, rgb.name)
    assert rgb.fingerprint() == copy.fingerprint() != digits.fingerprint()
    check_fits(tiny_config(in_channels=3), rgb)
    # another size is left as it is, so the error names the data's own shape
    assert fit_channels(tiny_config(in_channels=3, input_size=16), digits) is digits
    with pytest.raises(DataError, match="holds 1x8x8"):
        check_fits(tiny_config(in_channels=3, input_size=16), digits)
    # colour is never turned gray silently
    colour = rgb.subset(range(4))
    assert fit_channels(tiny_config(), colour) is colour
    with pytest.raises(DataError, match="takes 1x8x8 inputs but digits-train holds 3x8x8"):
        check_fits(tiny_config(), colour)


def test_open_data_opens_a_folder_and_loads_the_rest(tmp_path):
    from entpruner_sdk.data.datasets import open_data

    write_folder(tmp_path / "f", sizes=((12, 12),))
    opened = open_data(tmp_path / "f", image_size=8)
    assert isinstance(opened, ImageFolder) and opened.image_size == 8
    # it remembers what load_data would: a compress report names the folder it came from
    assert opened.origin == load_data(tmp_path / "f", image_size=8).origin == {
        "data": str((tmp_path / "f").resolve()), "image_size": 8}
    assert isinstance(open_data("digits", split="test"), ImageDataset)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders") as caught:
        load_data(tmp_path / "empty")
    assert "directly" not in str(caught.value)
    # unlabelled images, all at the top: how to make them one class
    write_folder(tmp_path / "flat", sizes=((8, 8),))
    for image in (tmp_path / "flat").rglob("*.png"):
        image.rename(tmp_path / "flat" / f"{image.parent.name}-{image.name}")
    for folder in [p for p in (tmp_path / "flat").iterdir() if p.is_dir()]:
        folder.rmdir()
    loose = len(list((tmp_path / "flat").glob("*.png")))
    with pytest.raises(DataError, match=f"it holds {loose} images directly: images without "
                                        "classes go in one subfolder"):
        load_data(tmp_path / "flat")
    (tmp_path / "noimages" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="contains no images"):
        load_data(tmp_path / "noimages")
    write_folder(tmp_path / "mixed", sizes=((8, 8), (16, 16)))
    with pytest.raises(DataError, match=r"mixes image sizes: .*--image-size N"):
        load_data(tmp_path / "mixed")
    write_folder(tmp_path / "broken")
    (tmp_path / "broken" / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        load_data(tmp_path / "broken")


def test_a_whole_read_names_every_unreadable_image_at_once(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    write_folder(tmp_path, per_class=12)
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "3.png").write_bytes(b"")  # an interrupted download
    (tmp_path / "b" / "5.png").write_bytes(good[:60])  # truncated
    (tmp_path / "b" / "11.png").write_bytes(b"<html>404</html>")  # a saved error page
    # too large for Pillow's guard against decompression bombs (a traceback before)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    PILImage.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a" / "big.png")
    for workers in (0, 2):  # also when reader processes met them
        with pytest.raises(DataError) as error:
            ImageFolder(tmp_path, image_size=8).load(workers=workers)
        lines = str(error.value).splitlines()
        assert lines[0] == f"4 of the 25 images read from {tmp_path} cannot be read:"
        assert [line.split(": ")[0].strip() for line in lines[1:5]] == [
            str(tmp_path / "a" / "3.png"), str(tmp_path / "a" / "big.png"),
            str(tmp_path / "b" / "11.png"), str(tmp_path / "b" / "5.png")]
        assert "exceeds limit of 200 pixels" in lines[2] and "scale it down" in lines[2]
        assert lines[-1] == "delete or replace them"


def test_class_folders_count_their_subfolders_and_refuse_to_be_empty(tmp_path):
    write_folder(tmp_path)
    # images kept in batches below a class folder belong to it, as torchvision's ImageFolder
    # (which DiT's training reads data with) takes them; hidden folders are not images
    (tmp_path / "b" / "batch2").mkdir()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / "b" / "batch2" / "x.png")
    (tmp_path / "b" / ".thumbnails").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b" / ".thumbnails" / "t.png")
    data = load_data(tmp_path)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert (data.images[-1] == 7).all()  # batch2/x.png sorts after b's own images
    # an empty class folder would be a class that is trained and sampled as noise
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("to do")
    with pytest.raises(DataError, match=r"the class folders c hold no images .*add their "
                                        r"images, or move the empty folders out"):
        load_data(tmp_path)


@pytest.mark.timeout(60)  # before, the two loops below never finished (2^40 paths)
def test_links_are_followed_as_torchvision_does_except_round_a_loop(tmp_path):
    write_folder(tmp_path / "data")
    images = tmp_path / "data" / "b"
    (images / "self").symlink_to(images, target_is_directory=True)  # a loop
    (images / "nested").mkdir()
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(images / "nested" / "n.png")
    (images / "nested" / "back").symlink_to(images, target_is_directory=True)  # a loop, deeper
    # a folder elsewhere, linked twice: followed both times, as torchvision follows links
    (tmp_path / "more").mkdir()
    Image.fromarray(np.full((8, 8, 3), 5, np.uint8)).save(tmp_path / "more" / "m.png")
    (images / "more").symlink_to(tmp_path / "more", target_is_directory=True)
    (images / "nested" / "more").symlink_to(tmp_path / "more", target_is_directory=True)
    found = [p.relative_to(images).as_posix() for p in class_images(images)]
    own = [p.name for p in sorted(images.glob("*.png"))]
    assert found == sorted([*own, "more/m.png", "nested/more/m.png", "nested/n.png"])
    data = load_data(tmp_path / "data")
    assert data.labels.tolist().count(1) == len(found)


def test_data_of_another_size_is_refused_with_the_fix_for_its_kind(tmp_path):
    from entpruner_sdk.data import from_arrays
    from entpruner_sdk.data.datasets import check_fits
    from tests.conftest import tiny_config

    model = tiny_config(in_channels=3, input_size=8, num_classes=2)
    write_folder(tmp_path / "big", sizes=((12, 12),))
    folder = load_data(tmp_path / "big")
    with pytest.raises(DataError, match=r"takes 3x8x8 inputs but big holds 3x12x12; scale and "
                                        r"centre-crop the images to 8x8: --image-size 8"):
        check_fits(model, folder)
    arrays = from_arrays({"images": folder.images.numpy(), "labels": folder.labels.numpy()})
    with pytest.raises(DataError, match="holds 3x12x12; resize the images to 8x8$"):
        check_fits(model, arrays)
    latents = ImageDataset(torch.zeros(2, 4, 8, 8), torch.tensor([0, 1]), 2, pixels=False)
    with pytest.raises(DataError, match="these are VAE latents and the model takes images"):
        check_fits(model, latents)


def test_folder_images_are_scaled_and_centre_cropped(tmp_path):
    write_folder(tmp_path / "mixed", sizes=((8, 8), (16, 12), (9, 30)))
    data = load_data(tmp_path / "mixed", image_size=6)
    assert data.images.shape == (6, 3, 6, 6)
    # a wide picture, white in its centred square and black at the sides: the crop keeps
    # only the white, after the box halving (24x12 -> 12x6) and an exact-size bicubic pass
    (tmp_path / "wide" / "w").mkdir(parents=True)
    array = np.zeros((12, 24, 3), dtype=np.uint8)
    array[:, 6:18] = 255
    Image.fromarray(array).save(tmp_path / "wide" / "w" / "0.png")
    wide = load_data(tmp_path / "wide", image_size=6)
    assert wide.images.shape == (1, 1, 6, 6) and (wide.images == 255).all()
    with pytest.raises(DataError, match="image_size=0: must be a positive"):
        load_data(tmp_path / "wide", image_size=0)


def test_an_image_folder_reads_one_image_per_item(tmp_path):
    write_folder(tmp_path / "f", sizes=((8, 8), (16, 12)))
    folder = ImageFolder(tmp_path / "f", image_size=8)
    whole = load_data(tmp_path / "f", image_size=8)
    assert (len(folder), folder.num_classes, folder.class_names) == (6, 2, ["a", "b"])
    assert folder.image_size == 8 and folder.labels.tolist() == whole.labels.tolist()
    for index in range(len(folder)):  # the same pixels, label by label, as the whole read
        image, label = folder[index]
        assert torch.equal(image, unit_range(whole.images[index]))  # held as 8 bits, read in
        assert label == whole.labels[index]                          # [-1, 1] as any item is
    # a folder of one size needs no crop; a stray size stops the read with the fix
    write_folder(tmp_path / "g", sizes=((8, 8), (8, 8), (16, 16)))
    plain = ImageFolder(tmp_path / "g")
    assert plain.image_size == 8 and plain[1][0].shape == (3, 8, 8)
    with pytest.raises(DataError, match=r"mixes image sizes: .*2.png is 16x16; .*--image-size"):
        plain[2]
    # the cache key follows the files without reading pixels: same files, same key
    key = ImageFolder(tmp_path / "f", image_size=8).fingerprint()
    assert key == folder.fingerprint() != ImageFolder(tmp_path / "f", image_size=6).fingerprint()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f" / "a" / "0.png")
    assert ImageFolder(tmp_path / "f", image_size=8).fingerprint() != key


def test_a_whole_read_through_reader_processes_is_the_same(tmp_path):
    write_folder(tmp_path / "f", sizes=((8, 8), (16, 12)), per_class=5)
    folder = ImageFolder(tmp_path / "f", image_size=8)
    alone = folder.load([9, 0, 4, 5], workers=0)
    shared = folder.load([9, 0, 4, 5], workers=2)
    assert torch.equal(alone.images, shared.images) and torch.equal(alone.labels, shared.labels)
    assert alone.labels.tolist() == [1, 0, 0, 1]
    (tmp_path / "f" / "b" / "3.png").write_bytes(b"not a png")  # read by a reader process
    with pytest.raises(DataError, match=r"cannot read image .*3.png: .*delete or replace it"):
        folder.load(workers=2)


READ_UNDER = """
import multiprocessing, sys
import torch
from entpruner_sdk.data import open_data

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    folder = open_data(sys.argv[2], image_size=8)  # a class folder or a saved Hugging Face one
    shared = folder.load(workers=2)
    alone = folder.load(workers=0)
    assert torch.equal(alone.images, shared.images), "the readers' images differ"
    assert torch.equal(alone.labels, shared.labels), "the readers' labels differ"
    batches = torch.cat(list(folder.batches(4, workers=2)))
    assert torch.equal(batches, alone.images), "the readers' batches differ"
    print("read", len(shared))
"""


@pytest.mark.parametrize("kind", ["folder", "hugging-face"])
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_reader_processes_start_as_python_3_14_and_other_systems_start_them(tmp_path, method,
                                                                            kind):
    # Linux forks the readers up to Python 3.13; 3.14 starts them from a fork server, and
    # macOS and Windows spawn them: the images and their reading must pickle to reach them
    write_folder(tmp_path / "f", sizes=((8, 8), (16, 12)), per_class=5)
    data = tmp_path / "f"
    if kind == "hugging-face":  # the same images, saved as a Hugging Face dataset
        datasets = pytest.importorskip("datasets")
        files = sorted(data.glob("*/*.png"))
        datasets.Dataset.from_dict(
            {"image": [str(file) for file in files],
             "label": [int(file.parent.name == "b") for file in files]},
            features=datasets.Features({"image": datasets.Image(),
                                        "label": datasets.ClassLabel(names=["a", "b"])}),
        ).save_to_disk(str(tmp_path / "saved"))
        data = tmp_path / "saved"
    script = tmp_path / "read.py"
    script.write_text(READ_UNDER)
    done = subprocess.run([sys.executable, str(script), method, str(data)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["read", "10"]


def test_large_jpegs_are_decoded_at_a_reduced_scale_before_the_crop(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    from entpruner_sdk.data.folder import center_crop

    (tmp_path / "f" / "a").mkdir(parents=True)
    x = np.linspace(0, 12, 1200)[None, :, None] + np.linspace(0, 7, 900)[:, None, None]
    photo = ((np.sin(x + np.arange(3)) + 1) * 127.5).astype(np.uint8)  # smooth, as photos are
    Image.fromarray(photo).save(tmp_path / "f" / "a" / "big.jpg", quality=95)
    Image.fromarray(photo).save(tmp_path / "f" / "a" / "big.png")
    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, *args: drafts.append(args[1]) or real_draft(self, *args))
    folder = ImageFolder(tmp_path / "f", image_size=64)
    jpeg, png = folder.read(0), folder.read(1)
    assert drafts == [(171, 128)]  # twice the crop on the short side; the PNG is never asked
    with Image.open(tmp_path / "f" / "a" / "big.jpg") as full:  # decoded at full size
        reference = np.asarray(center_crop(full.convert("RGB"), 64))
    assert np.abs(jpeg.astype(int) - reference).mean() < 1.5  # of 255 levels
    with Image.open(tmp_path / "f" / "a" / "big.png") as full:
        assert np.array_equal(png, np.asarray(center_crop(full.convert("RGB"), 64)))


def test_folder_images_are_read_as_a_viewer_shows_them(tmp_path):
    # a camera's picture: stored 16 wide and 8 high, white on its left, with EXIF orientation
    # 6 (turn 90 degrees clockwise to view), so it shows 8 wide and 16 high, white on top
    array = np.zeros((8, 16, 3), dtype=np.uint8)
    array[:, :8] = 255
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6
    (tmp_path / "photos" / "a").mkdir(parents=True)
    image.save(tmp_path / "photos" / "a" / "0.png", exif=exif.tobytes())
    upright = load_data(tmp_path / "photos", image_size=8).images[0, 0]
    assert (upright[:3] == 255).all() and (upright[-3:] == 0).all()
    # without a crop, it is 8x16 as shown, and an image stored 8x16 is its size
    Image.fromarray(np.zeros((16, 8, 3), dtype=np.uint8)).save(tmp_path / "photos" / "a" / "1.png")
    with pytest.raises(DataError, match=r"0.png is 8x16; DiT and SiT take square images: pass"):
        ImageFolder(tmp_path / "photos")  # before any image is read, not after the last
    # 16-bit grayscale keeps its tones (PIL's own conversion clips at 255: all but black white)
    ramp = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    (tmp_path / "deep" / "a").mkdir(parents=True)
    Image.fromarray(ramp).save(tmp_path / "deep" / "a" / "0.png")
    deep = load_data(tmp_path / "deep").images[0, 0]
    assert torch.allclose(deep.double(), torch.from_numpy(ramp / 257), atol=0.5)


def test_loaded_data_remembers_how_it_was_loaded(tmp_path):
    assert load_data("digits").origin == {"data": "digits"}
    assert load_data("photos", split="test", image_size=8).origin == {
        "data": "photos", "split": "test", "image_size": 8}
    write_folder(tmp_path / "f", sizes=((8, 8), (10, 10)))
    folder = load_data(tmp_path / "f", image_size=8)
    assert folder.origin == {"data": str((tmp_path / "f").resolve()), "image_size": 8}
    again = load_data(**folder.origin)
    assert torch.equal(again.images, folder.images)
    assert folder.subset([0, 1]).origin is None  # no longer the data on disk
    path = save_npz(folder, tmp_path / "f.npz")
    assert load_data(path).origin == {"data": str(path.resolve())}
    with pytest.raises(DataError, match="loaded as stored; image_size"):
        load_data(path, image_size=8)


def test_a_folder_of_splits_reads_the_split_asked_for(tmp_path):
    """data/train/cat/*.png and data/val/cat/*.png: the splits' folders are not classes."""
    for split, per_class in (("train", 3), ("Val", 2)):
        write_folder(tmp_path / "data" / split, classes=("cat", "dog"), per_class=per_class)
    train = load_data(tmp_path / "data")  # train, by default
    assert train.class_names == ["cat", "dog"] and len(train) == 6 and train.name == "data-train"
    assert train.origin == {"data": str((tmp_path / "data").resolve()), "split": "train"}
    assert load_data(**train.origin).name == "data-train"  # opened again as it was
    for name in ("val", "validation"):
        assert len(load_data(tmp_path / "data", split=name)) == 4
    with pytest.raises(DataError, match=r"holds the splits train, Val, not 'test': pick one"):
        load_data(tmp_path / "data", split="test")
    # classes that happen to be named so, holding their images, stay classes
    write_folder(tmp_path / "trains", classes=("train", "test"))
    assert load_data(tmp_path / "trains").class_names == ["test", "train"]


def test_a_table_of_image_files_and_classes_reads_as_their_class_folder_would(tmp_path):
    from entpruner_sdk.data import ImageTable

    rng = np.random.default_rng(0)
    rows = []
    for i, name in enumerate(["owl", "cat", "dog", "cat", "owl", "dog"]):  # a CSV's order
        (tmp_path / "folder" / name).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
        image.save(tmp_path / "folder" / name / f"{i}.png")
        rows.append((f"folder/{name}/{i}.png", name))
    (tmp_path / "train.csv").write_text(  # a byte-order mark, any header case, other columns
        "\ufeffid,File_Name,Class\n" + "".join(f"{i},{f},{c}\n" for i, (f, c) in enumerate(rows)))
    table = load_data(tmp_path / "train.csv", image_size=8)
    folder = load_data(tmp_path / "folder", image_size=8)
    assert table.class_names == folder.class_names == ["cat", "dog", "owl"]
    order = [str(file) for file in ImageFolder(tmp_path / "folder", 8).files]
    at = [order.index(str(tmp_path / f)) for f, _ in rows]
    assert torch.equal(table.images, folder.images[at]) and torch.equal(table.labels,
                                                                         folder.labels[at])
    assert table.origin == {"data": str((tmp_path / "train.csv").resolve()), "image_size": 8}
    assert torch.equal(load_data(**table.origin).images, table.images)
    assert isinstance(open_data(tmp_path / "train.csv", image_size=8), ImageTable)
    assert table.name == f"{tmp_path.name}-train"  # its folder's name, then its own

    # a .tsv of class ids and absolute paths; ids stand as written
    (tmp_path / "ids.tsv").write_text("path\tlabel\n" + "".join(
        f"{tmp_path / f}\t{4 if c == 'owl' else 0}\n" for f, c in rows))
    ids = ImageTable(tmp_path / "ids.tsv", image_size=8)
    assert ids.labels.tolist() == [4, 0, 0, 0, 4, 0] and ids.num_classes == 5
    assert ImageTable(tmp_path / "ids.tsv", 8, num_classes=10).num_classes == 10
    with pytest.raises(DataError, match="holds label 4, beyond num_classes=3; raise"):
        ImageTable(tmp_path / "ids.tsv", 8, num_classes=3)
    # a split column: --split picks its rows; every split numbers the classes alike
    (tmp_path / "splits.csv").write_text("file,label,Split\n" + "".join(
        f"{f},{c},{'val' if i >= 4 else 'train'}\n" for i, (f, c) in enumerate(rows)))
    first = load_data(tmp_path / "splits.csv", image_size=8)
    held_out = load_data(tmp_path / "splits.csv", image_size=8, split="validation")
    assert torch.equal(first.images, table.images[:4]) and len(held_out) == 2
    assert held_out.class_names == first.class_names == ["cat", "dog", "owl"]
    assert held_out.labels.tolist() == table.labels[4:].tolist()
    assert held_out.origin["split"] == "validation"
    with pytest.raises(DataError, match="holds the splits train, val, not 'test': pick one"):
        load_data(tmp_path / "splits.csv", split="test")
    # a table written on Windows
    (tmp_path / "windows.csv").write_text("file,label\r\n" + "".join(
        f"{f.replace('/', chr(92))},{c}\r\n" for f, c in rows))
    assert torch.equal(load_data(tmp_path / "windows.csv", image_size=8).images, table.images)
    # Hugging Face's metadata.jsonl: an object per line, ids as numbers, blank lines skipped
    (tmp_path / "metadata.jsonl").write_text("\n".join(
        json.dumps({"file_name": f, "label": 4 if c == "owl" else 0, "extra": [1]})
        for f, c in rows) + "\n\n")
    assert ImageTable(tmp_path / "metadata.jsonl", 8).labels.tolist() == [4, 0, 0, 0, 4, 0]
    (tmp_path / "gap.jsonl").write_text(f'{{"file_name": "{rows[0][0]}", "label": 1}}\n\n'
                                        '{"label": 2}\n')
    with pytest.raises(DataError, match="names no file on line 3"):  # lines as an editor counts
        ImageTable(tmp_path / "gap.jsonl", 8)
    # classes given as a model's keys: the index numbers and names them
    (tmp_path / "index.txt").write_text("n1 dog, hound\nn2 owl\nn3 fox\nn4 cat\n")
    (tmp_path / "keys.csv").write_text("image,label\n" + "".join(
        f"{f},{dict(cat='n4', dog='n1', owl='n2')[c]}\n" for f, c in rows))
    keyed = ImageTable(tmp_path / "keys.csv", 8, class_index=tmp_path / "index.txt")
    assert keyed.class_names == ["dog", "owl", "fox", "cat"]
    assert keyed.labels.tolist() == [1, 3, 0, 3, 1, 0]
    # a row relabelled changes its own key alone, and the fingerprint
    (tmp_path / "moved.csv").write_text("file,label\n" + "".join(
        f"{f},{'owl' if i == 1 else c}\n" for i, (f, c) in enumerate(rows)))
    moved = ImageTable(tmp_path / "moved.csv", 8)
    same = ImageTable(tmp_path / "train.csv", 8)
    changed = (moved.item_keys() != same.item_keys()).nonzero().flatten().tolist()
    assert changed == [1] and moved.fingerprint() != same.fingerprint()


def test_a_table_that_cannot_be_read_says_which_row_and_how_to_mend_it(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    cases = {
        "file,label\n": "has no rows under its header",
        "picture,label\na.png,0\n": "has no column of files: its header is picture, label; "
                                      "name that column file_name, filename, file",
        "file,kind\na.png,0\n": "has no column of classes",
        "file,label\na.png,0\nb.png,1\nc.png,1\n": r"lists 2 files that do not exist \(e.g. "
                                                    r".*b.png, .*c.png\); a file is relative",
        "file,label\n\na.png,0\n,1\n": "names no file on line 4",  # a blank line counts
        "file,label\na.png,0\na.png\n": "rows with fewer cells than its header \\(line 3",
        "file,label\na.png,cat\na.png,\n": "label 1 is '', not a class name",
    }
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"{i}.csv").write_text(text)
        with pytest.raises(DataError, match=message):
            load_data(tmp_path / f"{i}.csv")
    with pytest.raises(DataError, match=r"has no class subfolders; .* it holds 1 images directly"
                                        r".*; or, if 0.csv labels them, pass that table as the "
                                        r"data \(--data .*0.csv\)"):
        load_data(tmp_path)
    with pytest.raises(DataError, match="cannot read the table .*missing.csv"):
        load_data(tmp_path / "missing.csv")
    (tmp_path / "ok.csv").write_text("file,label\na.png,0\n")
    with pytest.raises(DataError, match="split column, and the table .*ok.csv has none: drop"):
        load_data(tmp_path / "ok.csv", split="test")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"use an .npz, a folder of class folders, or a .csv"):
        load_data(tmp_path / "x.json")


def test_npz_layouts_and_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.array([0, 1, 2, 1, 0]))
    data = load_data(tmp_path / "ok.npz")
    assert data.images.shape == (5, 3, 8, 8) and data.num_classes == 3
    assert data.images.dtype == torch.uint8  # held as stored: a quarter of the floats
    assert torch.equal(data.images[0, :, 0, 0], torch.from_numpy(images[0, 0, 0]))
    expected = torch.from_numpy(images[0, 0, 0] / 127.5 - 1).float()
    assert torch.allclose(data[0][0][:, 0, 0], expected)  # an item is in [-1, 1]
    # guided-diffusion's samples and ADM's labelled reference batches: positional arrays
    np.savez(tmp_path / "adm.npz", images, np.array([0, 1, 2, 1, 0]))
    adm = load_data(tmp_path / "adm.npz")
    assert torch.equal(adm.images, data.images) and torch.equal(adm.labels, data.labels)
    np.savez(tmp_path / "unlabelled.npz", images)
    with pytest.raises(DataError, match=r"or ADM's 'arr_0' and 'arr_1'; found \['arr_0'\]"):
        load_data(tmp_path / "unlabelled.npz")
    bad = np.zeros((2, 1, 8, 8), dtype=np.float32)
    bad[1, 0, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=np.array([0, 1]))
    with pytest.raises(DataError, match="NaN or infinite values .*index 1"):
        load_data(tmp_path / "nan.npz")
    np.savez(tmp_path / "range.npz", x=np.full((2, 1, 8, 8), 3.0, np.float32), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"must lie in \[-1, 1\]"):
        load_data(tmp_path / "range.npz")
    np.savez(tmp_path / "labels.npz", x=np.zeros((2, 1, 8, 8), np.float32), y=np.array([0, 7]))
    with pytest.raises(DataError, match="labels must lie in 0..4"):
        load_data(tmp_path / "labels.npz", num_classes=5)
    np.savez(tmp_path / "negative.npz", x=np.zeros((2, 1, 8, 8), np.float32), y=np.array([-1, 1]))
    with pytest.raises(DataError, match="class indices 0, 1, 2, ..., found -1; map the classes"):
        load_data(tmp_path / "negative.npz")
    np.savez(tmp_path / "keys.npz", pixels=np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match=r"'images' \(or 'x', or VAE 'latents'\) and 'labels'"):
        load_data(tmp_path / "keys.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_data(tmp_path / "corrupt.npz")


def test_arrays_in_memory_are_read_as_an_npz_is(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0, 2])
    np.savez(tmp_path / "same.npz", images=images, labels=labels)
    stored = load_data(tmp_path / "same.npz")
    for held in [(images, labels), [torch.from_numpy(images), torch.from_numpy(labels)],
                 {"images": images, "labels": labels}, {"x": images, "y": labels.tolist()}]:
        data = load_data(held)
        assert data.name == "arrays" and data.origin is None and data.num_classes == 3
        assert torch.equal(data.images, stored.images) and torch.equal(data.labels,
                                                                       stored.labels)
    named = load_data({"images": images, "labels": labels, "class_names": ["a", "b", "c"]},
                      num_classes=5)
    assert named.num_classes == 5 and named.class_names[:3] == ["a", "b", "c"]
    latents = load_data({"latents": np.zeros((2, 4, 4, 4), np.float32), "labels": [0, 1]})
    assert not latents.pixels and latents.images.shape == (2, 4, 4, 4)
    # each mistake named with its fix
    with pytest.raises(DataError, match=r"of shape \(6, 8, 8, 3\)\) has no labels; pass "
                                        r"\(images, labels\)"):
        load_data(images)
    with pytest.raises(DataError, match="data of type int is not one entpruner reads"):
        load_data(3)
    with pytest.raises(DataError, match="look like images in \\[0, 1\\]"):
        load_data((images / 255.0, labels))
    with pytest.raises(DataError, match="the arrays must hold arrays 'images'"):
        load_data({"pixels": images, "labels": labels})
    with pytest.raises(DataError, match="arrays are used as they are; image_size"):
        load_data((images, labels), image_size=16)


def test_latents_npz_round_trip_with_class_names(tmp_path):
    rng = np.random.default_rng(0)
    latents = (rng.standard_normal((6, 4, 8, 8)) * 3).astype(np.float32)  # beyond [-1, 1]
    np.savez(tmp_path / "lat.npz", latents=latents, labels=np.array([0, 1, 2, 0, 1, 2]),
             class_names=np.array(["cat", "dog", "owl"]))
    data = load_data(tmp_path / "lat.npz")
    assert not data.pixels and data.channels == 4 and data.class_names == ["cat", "dog", "owl"]
    assert "6 latents of 4x8x8" in repr(data)
    save_npz(data, tmp_path / "again.npz")
    again = load_data(tmp_path / "again.npz")
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)
    assert again.class_names == data.class_names and not again.pixels
    digits = load_data("digits").subset(range(20))
    save_npz(digits, tmp_path / "digits.npz")
    assert load_data(tmp_path / "digits.npz").pixels  # images stay images


def test_latents_npz_errors_name_the_fix(tmp_path):
    np.savez(tmp_path / "four.npz", images=np.zeros((2, 4, 8, 8), np.float32),
             labels=np.array([0, 1]))
    with pytest.raises(DataError, match="store them as \\[N, C, H, W\\] under 'latents'"):
        load_data(tmp_path / "four.npz")
    np.savez(tmp_path / "ints.npz", latents=np.zeros((2, 4, 8, 8), np.int32),
             labels=np.array([0, 1]))
    with pytest.raises(DataError, match="latents must be floats"):
        load_data(tmp_path / "ints.npz")
    np.savez(tmp_path / "flat.npz", latents=np.zeros((2, 8, 8), np.float32),
             labels=np.array([0, 1]))
    with pytest.raises(DataError, match="latents must be \\[N, C, H, W\\]"):
        load_data(tmp_path / "flat.npz")
    np.savez(tmp_path / "names.npz", latents=np.zeros((2, 4, 8, 8), np.float32),
             labels=np.array([0, 1]), class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="3 class_names for 2 classes"):
        load_data(tmp_path / "names.npz", num_classes=2)


def test_torch_dataset_of_latents():
    latents = torch.randn(4, 4, 8, 8) * 3
    data = load_data(TensorDataset(latents, torch.tensor([0, 1, 0, 1])))
    assert not data.pixels and torch.equal(data.images, latents)


def test_torch_dataset_and_dataloader(tmp_path):
    images, labels = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    dataset = TensorDataset(images, labels)
    for source in (dataset, DataLoader(dataset, batch_size=4)):
        data = load_data(source)
        assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
    with pytest.raises(DataError, match="labels must be class indices"):
        load_data(TensorDataset(images, -labels - 1))
    # torchvision's ToTensor gives [0, 1]: refused with the fix, in a torch dataset or an .npz
    with pytest.raises(DataError, match=r"look like images in \[0, 1\].*x \* 2 - 1"):
        load_data(TensorDataset((images + 1) / 2, labels))
    np.savez(tmp_path / "unit.npz", images=((images + 1) / 2).numpy(), labels=labels.numpy())
    with pytest.raises(DataError, match=r"unit.npz: float pixel values span .*look like"):
        load_data(tmp_path / "unit.npz")
    assert load_data(TensorDataset(torch.zeros(2, 1, 8, 8), labels[:2])).num_classes == 2


def test_a_torch_dataset_of_pil_images_is_taken_as_their_8_bit_pixels():
    from PIL import Image

    class Pictures(torch.utils.data.Dataset):  # torchvision's MNIST or CIFAR, no transform
        def __init__(self, arrays):
            self.arrays = arrays  # uint8 [H, W] or [H, W, 3], uint16 (I;16), float32 (F)

        def __len__(self):
            return len(self.arrays)

        def __getitem__(self, i):
            return Image.fromarray(self.arrays[i]), i % 2

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    data = load_data(Pictures(gray))
    assert data.pixels and data.images.dtype == torch.uint8 and data.num_classes == 2
    assert torch.equal(data.images, torch.from_numpy(gray)[:, None])  # one channel, as read
    colour = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    data = load_data(Pictures(colour))
    assert torch.equal(data.images, torch.from_numpy(colour).permute(0, 3, 1, 2))
    # grey and colour mixed: the grey ones as RGB, as a class folder takes them
    mixed = load_data(torch.utils.data.ConcatDataset([Pictures(gray[:2]), Pictures(colour)]))
    assert mixed.images.shape == (4, 3, 8, 8)
    assert torch.equal(mixed.images[1], torch.from_numpy(gray[1])[None].expand(3, 8, 8))
    # 16-bit grey keeps its tones (PIL's own conversion would clip it at 255)
    deep = load_data(Pictures(gray.astype(np.uint16) * 257))
    assert torch.equal(deep.images, torch.from_numpy(gray)[:, None])
    with pytest.raises(DataError, match="32-bit float pixels, whose range is unknown"):
        load_data(Pictures(gray.astype(np.float32)))


def test_8_bit_images_are_held_as_they_are_and_used_in_unit_range():
    from entpruner_sdk.importance.calibration import CalibrationSet
    from entpruner_sdk.objectives import FlowMatching
    from entpruner_sdk.training import sample_batch

    pixels = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 4)
    # PILToTensor's uint8 images, which were once taken as floats of 0..255 and refused
    eight_bit = load_data(TensorDataset(pixels, labels))
    floats = ImageDataset(unit_range(pixels), labels, 2)
    assert eight_bit.images.dtype == torch.uint8 and eight_bit.pixels
    assert torch.equal(unit_range(pixels), pixels.float() / 127.5 - 1)
    # the same digest as the floats (the caches made from them still match), the same items
    assert eight_bit.fingerprint() == floats.fingerprint()
    assert torch.equal(eight_bit[3][0], floats[3][0])
    # training batches and the calibration set are the floats' (encoding: test_latents)
    for hflip in (False, True):
        draws = [sample_batch(data, 6, torch.Generator().manual_seed(0), torch.device("cpu"),
                              hflip) for data in (eight_bit, floats)]
        assert all(torch.equal(a, b) for a, b in zip(*draws))
    objective = FlowMatching(in_channels=3)
    calibrations = [CalibrationSet.build(data, objective, per_class=2, times=2)
                    for data in (eight_bit, floats)]
    assert torch.equal(calibrations[0].images, calibrations[1].images)
    with pytest.raises(DataError, match="latents must be floats, got uint8"):
        ImageDataset(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), labels[:2], 2, pixels=False)


def test_eight_bit_rounds_as_a_saved_image_and_inverts_unit_range():
    from entpruner_sdk.data import eight_bit

    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(eight_bit(unit_range(levels)), levels)  # every level comes back
    assert eight_bit(levels) is levels
    # rounded to the nearest level, as PIL saves x in [-1, 1]; out of range is clipped
    x = torch.tensor([-1.5, -1.0, -0.9999, 0.0, 0.002, 0.9999, 1.0, 2.0]).reshape(1, 1, 1, 8)
    assert eight_bit(x).flatten().tolist() == [0, 0, 0, 128, 128, 255, 255, 255]
    assert ImageDataset(levels, torch.tensor([0]), 1).is_eight_bit
    assert not ImageDataset(unit_range(levels), torch.tensor([0]), 1).is_eight_bit


def test_dataset_helpers():
    data = load_data("digits")
    calib = data.per_class(3, torch.Generator().manual_seed(0))
    assert torch.bincount(calib.labels).tolist() == [3] * 10
    assert data.fingerprint() == load_data("digits").fingerprint()
    assert data.fingerprint() != calib.fingerprint()
    with pytest.raises(DataError, match="square"):
        ImageDataset(torch.zeros(1, 1, 8, 4), torch.zeros(1).long(), 1)


def test_a_hugging_face_dataset_in_memory_or_saved_to_disk(tmp_path, capsys, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (10, 10, 3), dtype=np.uint8) for _ in range(4)]
    features = datasets.Features({"img": datasets.Image(), "extra": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["cat", "dog", "owl"])})
    table = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels],
                                        "extra": [1, 2, 3, 4], "label": [0, 1, 2, 1]},
                                       features=features)
    # the Image and ClassLabel columns found by type, the class names taken from the labels
    data = load_data(table)
    assert data.class_names == ["cat", "dog", "owl"] and data.num_classes == 3
    assert data.images.dtype == torch.uint8 and data.labels.tolist() == [0, 1, 2, 1]
    assert torch.equal(data.images, torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))
    # a streamed one alike; image_size scales and centre-crops each image as a folder's
    cropped = load_data(table.to_iterable_dataset(), image_size=8)
    assert cropped.images.shape == (4, 3, 8, 8)
    from entpruner_sdk.data.folder import center_crop

    expected = np.array(center_crop(Image.fromarray(pixels[2]), 8))
    assert torch.equal(cropped.images[2], torch.from_numpy(expected).permute(2, 0, 1))
    # a dict of splits: split picks one; one it lacks is refused, naming those it has
    splits = datasets.DatasetDict({"train": table, "test": table.select([1, 3])})
    assert load_data(splits, split="test").labels.tolist() == [1, 1]
    with pytest.raises(DataError, match="holds the splits train, test, not 'validation'"):
        load_data(splits, split="validation")
    assert len(load_data(splits, split="testing")) == 2  # another spelling of test
    # saved with save_to_disk: read as a dataset (its split folders are not classes), and
    # remembered by its path and split, so a later process can read it again
    splits.save_to_disk(str(tmp_path / "pets"), max_shard_size="1MB")
    saved = load_data(tmp_path / "pets", split="test")
    assert saved.name == "pets-test" and saved.labels.tolist() == [1, 1]
    assert saved.origin == {"data": str((tmp_path / "pets").resolve()), "split": "test"}
    with pytest.raises(DataError, match="class_index .* labels class folders: drop it"):
        load_data(tmp_path / "pets", class_index=tmp_path / "index.txt")
    # by name for load_dataset (hf:NAME): here a folder of its data files, as on the Hub
    (tmp_path / "files").mkdir()
    table.to_parquet(str(tmp_path / "files" / "train.parquet"))
    table.select([0, 2]).to_parquet(str(tmp_path / "files" / "test.parquet"))
    spec = f"hf:{tmp_path / 'files'}"
    capsys.readouterr()
    monkeypatch.setenv("ENTPRUNER_QUIET", "0")  # the suite silences bars; this one is shown
    named = load_data(spec, split="test")
    assert "reading files-test" in capsys.readouterr().err  # a bar while it decodes
    monkeypatch.setenv("ENTPRUNER_QUIET", "1")
    assert named.labels.tolist() == [0, 2] and named.class_names == ["cat", "dog", "owl"]
    assert named.name == "files-test" and named.origin == {"data": spec, "split": "test"}
    with pytest.raises(DataError, match=r"Unknown split \"validation\""):  # its words
        load_data(spec, split="validation")
    assert load_data(spec, split="testing").labels.tolist() == [0, 2]  # test, otherwise spelt
    # a name the Hub is not asked about (offline): said so, with the ways to work without it
    offline = subprocess.run(
        [sys.executable, "-c", "from entpruner_sdk.data import load_data; "
         "load_data('hf:no-such-user/no-such-dataset')"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert ("DataError: cannot load the Hugging Face dataset 'no-such-user/no-such-dataset': "
            in offline.stderr) and "read from the cache with HF_HUB_OFFLINE=1" in offline.stderr
    # what it cannot read is named, with the fix
    with pytest.raises(DataError, match="columns are img, extra.*rename it to 'label'"):
        load_data(table.remove_columns("label"))
    unlabelled = table.cast_column("label", datasets.Value("int64")).map(
        lambda row, i: {"label": -1 if i == 2 else row["label"]}, with_indices=True)
    with pytest.raises(DataError, match="row 2 has no class label"):
        load_data(unlabelled)
    # labels given as names (a CSV's column of strings) name the classes, in sorted order,
    # as Dataset.class_encode_column numbers them; in memory and streamed alike
    named_rows = table.cast_column("label", datasets.Value("int64")).map(
        lambda row: {"label": ["owl", "cat", "dog"][row["label"]]},
        features=datasets.Features({**features, "label": datasets.Value("string")}))
    for rows in (named_rows, named_rows.to_iterable_dataset()):
        by_name = load_data(rows)
        assert by_name.class_names == ["cat", "dog", "owl"]
        assert by_name.labels.tolist() == [2, 0, 1, 0]
    several = table.cast_column("label", datasets.Value("int64")).map(
        lambda row: {"label": [row["label"]]},
        features=datasets.Features({**features, "label": datasets.Sequence(
            datasets.Value("int64"))}))
    with pytest.raises(DataError, match=r"row 0's class label \[0\] is neither a class id "
                                        "nor a class name: give each row one class"):
        load_data(several)
    floats = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(p[..., 0].astype(np.float32)) for p in pixels],
         "label": [0, 1, 2, 1]}, features=datasets.Features(
            {"img": datasets.Image(), "label": features["label"]}))
    with pytest.raises(DataError, match="row 0's 'img' holds 32-bit float pixels"):
        load_data(floats)
    # data without splits is not read whole when a split is asked for
    with pytest.raises(DataError, match="split='test' .* has none: drop it"):
        load_data(TensorDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])), split="test")


def test_webdataset_shards_are_read_through_hugging_face(tmp_path, monkeypatch):
    """A folder of WebDataset shards (key.png + key.cls in .tar files), the layout large image
    sets are kept in, is what load_dataset reads as the webdataset format: hf:DIR."""
    import io
    import tarfile

    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(6)]
    (tmp_path / "shards").mkdir()
    for shard in range(2):
        with tarfile.open(tmp_path / "shards" / f"train-{shard:04d}.tar", "w") as tar:
            for i in range(shard * 3, shard * 3 + 3):
                png = io.BytesIO()
                Image.fromarray(pixels[i]).save(png, format="PNG")
                for suffix, payload in (("png", png.getvalue()), ("cls", str(i % 2).encode())):
                    member = tarfile.TarInfo(f"{i:06d}.{suffix}")
                    member.size = len(payload)
                    tar.addfile(member, io.BytesIO(payload))
    data = load_data(f"hf:{tmp_path / 'shards'}")
    assert data.labels.tolist() == [0, 1, 0, 1, 0, 1] and data.num_classes == 2
    assert torch.equal(data.images, torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))


def test_a_hugging_face_dataset_on_disk_is_opened_and_read_row_by_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    from entpruner_sdk.data.datasets import open_data
    from entpruner_sdk.data.hugging_face import HuggingFaceImages
    from entpruner_sdk.data.streamed import StreamedSubset
    from entpruner_sdk.evaluation.reference import images_behind, load_reference

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(10)]
    pixels[4] = np.repeat(pixels[4][..., :1], 3, axis=2)  # a gray photo among colour ones
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["ant", "bee"])})
    table = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels],
                                        "label": [0, 1] * 5}, features=features)
    table.save_to_disk(str(tmp_path / "insects"))
    # opened: the labels and classes at once, the images only when used
    opened = open_data(tmp_path / "insects")
    assert isinstance(opened, HuggingFaceImages) and len(opened) == 10
    assert opened.labels.tolist() == [0, 1] * 5 and opened.class_names == ["ant", "bee"]
    assert opened.image_size == 12 and opened.channels == 3
    assert repr(opened) == ("HuggingFaceImages('the Hugging Face dataset insects': 10 images of "
                            "12x12, 2 classes)")
    image, label = opened[3]
    expected = unit_range(torch.from_numpy(pixels[3])).permute(2, 0, 1)
    assert label == 1 and torch.equal(image, expected)
    # read whole, it is what load_data reads, and remembers the dataset it came from
    whole = load_data(tmp_path / "insects")
    assert torch.equal(opened.load().images, whole.images)
    assert torch.equal(opened.load(workers=2).images, whole.images)  # reader processes
    assert whole.origin == opened.origin == {"data": str((tmp_path / "insects").resolve())}
    assert whole.source_fingerprint == opened.fingerprint()
    # the fingerprint keys caches without reading an image: the same for the same rows read
    # the same way, another for another crop or other rows
    assert open_data(tmp_path / "insects").fingerprint() == opened.fingerprint()
    cropped = open_data(tmp_path / "insects", image_size=8)
    assert cropped.fingerprint() != opened.fingerprint() and cropped.read(0).shape == (8, 8, 3)
    keys = opened.item_keys()
    assert len(set(keys.tolist())) == 10 and 0 not in keys.tolist()
    # a Dataset in memory opens alike (remembered nowhere); a streamed one can only be read
    in_memory = open_data(table)
    assert isinstance(in_memory, HuggingFaceImages) and in_memory.origin is None
    assert torch.equal(in_memory.load().images, whole.images)
    assert isinstance(open_data(table.to_iterable_dataset()), ImageDataset)
    # images cast to bytes (decode=False) are decoded all the same, streamed or not
    undecoded = table.cast_column("image", datasets.Image(decode=False))
    assert torch.equal(load_data(undecoded).images, whole.images)
    assert torch.equal(load_data(undecoded.to_iterable_dataset()).images, whole.images)
    # evaluate's reference: a balanced subset, read on first use
    reference, available = load_reference(opened, 4)
    assert isinstance(reference, StreamedSubset) and available == 10
    assert "images" not in reference.__dict__ and reference.labels.tolist() == [0, 1, 0, 1]
    assert torch.equal(reference.images, whole.images[reference.indices])
    # a model's data read from it: compared through the dataset itself, keyed as evaluate's
    behind = images_behind(whole, decoded=False)
    assert isinstance(behind, HuggingFaceImages) and behind.fingerprint() == opened.fingerprint()
    table.select(range(8)).save_to_disk(str(tmp_path / "insects"))  # changed since: the held
    assert images_behind(whole, decoded=False) is whole

    # what cannot be read is named by its row, every one in one error, with the fix
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"not an image", "path": None} if i in (2, 7) else
                   None if i == 5 else Image.fromarray(p)
                   for i, p in enumerate(pixels)], "label": [0, 1] * 5}, features=features)
    broken.save_to_disk(str(tmp_path / "broken"))
    rows = open_data(tmp_path / "broken")
    with pytest.raises(DataError, match=r"cannot read image row 2 of broken: .*; drop the row"):
        rows.read(2)
    with pytest.raises(DataError, match=r"(?s)3 of the 10 images read from the Hugging Face "
                       r"dataset broken cannot be read:\n  row 2 of broken: .*\n  row 5 of "
                       r"broken: it has no image\n.*\ndrop those rows \(dataset.filter\)"):
        rows.load(workers=0)
    # sizes: mixed ones need image_size, as a folder's do; so does a first image not square
    mixed = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p[:10, :10] if i == 6 else p) for i, p in enumerate(pixels)],
         "label": [0, 1] * 5}, features=features)
    mixed.save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(DataError, match="insects mixes image sizes: row 0 is 12x12, row 6 is "
                       "10x10; pass image_size="):
        load_data(HuggingFaceImages(mixed, name="insects"))
    assert load_data(tmp_path / "mixed", image_size=10).images.shape == (10, 3, 10, 10)
    wide = datasets.Dataset.from_dict({"image": [Image.fromarray(pixels[0][:, :8])],
                                       "label": [0]}, features=features)
    with pytest.raises(DataError, match="row 0 is 8x12; DiT and SiT take square images"):
        HuggingFaceImages(wide)
    with pytest.raises(DataError, match="a streamed Hugging Face dataset has no random access"):
        HuggingFaceImages(table.to_iterable_dataset())
    with pytest.raises(DataError, match="split='test' .* and the class folder .* has none"):
        open_data(tmp_path, split="test")  # a folder, not a saved dataset


def test_data_naming_the_models_classes_in_another_order_takes_the_models_ids(tmp_path):
    from entpruner_sdk.data.classes import ids_by_name
    from entpruner_sdk.data.datasets import fit_class_names
    from entpruner_sdk.data.streamed import StreamedSubset

    model = ["zebra", "apple", "mango"]  # the order the model was trained with
    assert ids_by_name(["zebra", "apple", "mango"], [0, 1, 2], model) is None  # its own ids
    assert ids_by_name(["apple", "mango", "zebra"], [0, 1, 2], model) == [1, 2, 0]
    assert ids_by_name(["apple", "zebra"], [0, 1], model) == [1, 0]  # some of its classes
    assert ids_by_name(["zebra", "apple"], [0, 1], model) == [0, 1]  # its first two of three
    assert ids_by_name(["0", "1", "2"], [0, 1, 2], model) is None  # data without names
    assert ids_by_name(["apple", "zebra"], [0, 1], None) is None  # a model without names
    assert ids_by_name(["apple", "zebra"], [0, 1], ["0", "1"]) is None
    assert ids_by_name(["kiwi", "apple"], [0, 1], model) is None  # a new class: ids as given
    # written otherwise: case, and spaces, _ or - between words, do not count
    imagenet = ["tench", "golden retriever", "German shepherd"]
    assert ids_by_name(["German_Shepherd", "golden-retriever"], [0, 1], imagenet) == [2, 1]
    assert ids_by_name(["APPLE", "apple"], [0, 1], ["apple", "APPLE"]) == [1, 0]  # as written
    assert ids_by_name(["Apple"], [0], ["apple", "APPLE"]) is None  # two plain matches
    with pytest.warns(UserWarning, match="the data's class 'apple' is the model's class 1 "
                                         "but is labelled 0, while 'kiwi' is not one of"):
        assert ids_by_name(["apple", "kiwi"], [0, 1], model) is None
    # a name the model gives two classes (ImageNet's two cranes) matches neither
    with pytest.warns(UserWarning, match="while 'crane' names several of the model's classes"):
        assert ids_by_name(["crane", "apple"], [0, 1], ["apple", "crane", "crane"]) is None

    for i, name in enumerate(["zebra", "apple", "mango"] * 2):  # folders are numbered A to Z
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    folder = ImageFolder(tmp_path)
    assert folder.class_names == ["apple", "mango", "zebra"]
    fitted = fit_class_names(folder, model)
    assert fitted.class_names == model and fitted.num_classes == 3
    assert [model[label] for label in fitted.labels] == [f.parent.name for f in fitted.files]
    assert folder.class_names == ["apple", "mango", "zebra"]  # the folder itself as it was
    assert fitted.fingerprint() != folder.fingerprint()  # caches keyed by the labels too
    subset = fit_class_names(StreamedSubset(folder), model)  # evaluate's reference, unread
    assert torch.equal(subset.labels, fitted.labels) and "images" not in subset.__dict__
    held = fit_class_names(load_data(tmp_path), model)  # in memory alike
    assert torch.equal(held.labels, fitted.labels) and held.class_names == model
    assert fit_class_names(held, model) is held  # already the model's


def test_labels_given_as_class_names_are_numbered_and_name_the_classes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    names = ["owl", "cat", "owl", "dog"]

    class Pets(torch.utils.data.Dataset):  # a dataset whose labels are names
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.from_numpy(images[i]).permute(2, 0, 1), names[i]

    # in sorted order, as datasets' class_encode_column numbers them
    for source in ((images, names), (images, np.array(names)), Pets(), DataLoader(Pets(), 3)):
        data = load_data(source)
        assert data.class_names == ["cat", "dog", "owl"] and data.labels.tolist() == [2, 0, 2, 1]
    # an .npz's class_names give the order; a name they lack is refused
    np.savez(tmp_path / "pets.npz", images=images, labels=np.array(names),
             class_names=np.array(["dog", "owl", "cat"]))
    data = load_data(tmp_path / "pets.npz")
    assert data.class_names == ["dog", "owl", "cat"] and data.labels.tolist() == [1, 2, 1, 0]
    np.savez(tmp_path / "short.npz", images=images, labels=np.array(names),
             class_names=np.array(["dog", "owl"]))
    with pytest.raises(DataError, match=r"the labels name classes that class_names lacks "
                                        r"\('cat'\)"):
        load_data(tmp_path / "short.npz")
    with pytest.raises(DataError, match="label 2 is '', not a class name"):
        load_data((images, ["owl", "cat", "", "dog"]))


def test_a_torch_dataset_names_its_classes_as_torchvision_declares_them():
    from entpruner_sdk.data.datasets import fit_class_names

    images = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)

    class Pets(torch.utils.data.Dataset):  # torchvision's ImageFolder, CIFAR10 and kin
        classes = ["cat", "dog", "owl"]
        class_to_idx = {"cat": 0, "dog": 1, "owl": 2}

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.from_numpy(images[i]), [2, 0, 2, 1][i]

    for source in (Pets(), DataLoader(Pets(), 3), torch.utils.data.Subset(Pets(), [0, 1, 2, 3])):
        data = load_data(source)
        assert data.class_names == ["cat", "dog", "owl"] and data.labels.tolist() == [2, 0, 2, 1]
    # the model was trained with its classes in another order: its ids are taken
    fitted = fit_class_names(load_data(Pets()), ["owl", "dog", "cat"])
    assert fitted.labels.tolist() == [0, 2, 0, 1]
    Pets.classes = [("owl", "Strigiformes"), ("cat",), ("dog",)]  # ImageNet's synonyms
    assert load_data(Pets()).class_names == ["owl", "cat", "dog"]
    del Pets.classes  # class_to_idx alone
    Pets.class_to_idx = {"dog": 1, "owl": 2, "cat": 0}
    assert load_data(Pets()).class_names == ["cat", "dog", "owl"]
    assert load_data(Pets(), num_classes=5).class_names == ["cat", "dog", "owl", "3", "4"]
    Pets.class_to_idx = {"dog": 0, "cat": 0}  # no order of names: the ids stand alone
    assert load_data(Pets()).class_names == ["0", "1", "2"]
    Pets.classes = ["cat", "dog"]  # a label beyond the classes declared
    with pytest.raises(DataError, match=r"declares 2 classes \(Pets.classes\) but holds "
                                        "label 2; mend its classes"):
        load_data(Pets())


def test_large_arrays_are_mapped_from_their_files_and_never_written_back(tmp_path,
                                                                          monkeypatch):
    from safetensors.torch import load_file, save_file

    from entpruner_sdk.data import mapped

    latents = np.random.default_rng(0).standard_normal((6, 4, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "latents.npz", latents=latents, labels=np.arange(6) % 3)
    monkeypatch.setattr(mapped, "MAP_FROM", 0)  # every array is large
    data = load_data(tmp_path / "latents.npz")
    assert str(tmp_path / "latents.npz") in mapped_files()
    assert torch.equal(data.images, torch.from_numpy(latents)) and not data.pixels
    data.images[0] = 7.0  # copy-on-write: the process's page, not the file
    assert np.array_equal(np.load(tmp_path / "latents.npz")["latents"], latents)
    # an .npz written a part at a time (sample --npz; zip64 headers) maps alike
    from entpruner_sdk.utils.npz import Chunks, save_npz_streamed

    save_npz_streamed(tmp_path / "parts.npz", {"latents": Chunks(6, [latents[:4], latents[4:]]),
                                               "labels": np.arange(6) % 3})
    parts = mapped.npz_member(tmp_path / "parts.npz", "latents")
    assert isinstance(parts, np.memmap) and np.array_equal(parts, latents)
    # what cannot be mapped is read: compressed members, Fortran order, another byte order
    np.savez_compressed(tmp_path / "small.npz", latents=latents, labels=np.arange(6) % 3)
    np.savez(tmp_path / "odd.npz", fortran=np.asfortranarray(latents),
             swapped=latents.astype(">f4"))
    assert mapped.npz_member(tmp_path / "small.npz", "latents") is None
    assert mapped.npz_member(tmp_path / "odd.npz", "fortran") is None
    assert mapped.npz_member(tmp_path / "odd.npz", "swapped") is None
    assert mapped.npz_member(tmp_path / "odd.npz", "missing") is None
    assert torch.equal(load_data(tmp_path / "small.npz").images, torch.from_numpy(latents))
    # a safetensors file alike; bf16, which numpy lacks, is read; a file cut short is refused
    tensors = {"latents": torch.from_numpy(latents), "keys": torch.arange(6),
               "half": torch.ones(3, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "cache.safetensors"))
    for key, tensor in tensors.items():
        assert torch.equal(mapped.read_tensor(tmp_path / "cache.safetensors", key), tensor)
    assert mapped.safetensors_tensor(tmp_path / "cache.safetensors", "half") is None
    mapped.read_tensor(tmp_path / "cache.safetensors", "latents")[0] = 7.0
    assert torch.equal(load_file(str(tmp_path / "cache.safetensors"))["latents"],
                       tensors["latents"])
    whole = (tmp_path / "cache.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match="is cut short"):
        mapped.read_tensor(tmp_path / "cut.safetensors", "latents")
