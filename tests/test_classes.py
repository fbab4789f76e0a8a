"""Classes: data that holds a subset of a model's classes under the model's own ids (a
released DiT-XL/2 fine-tuned on a few ImageNet classes labelled with their ImageNet ids), and
classes named by the data they were trained on."""

import json

import numpy as np
import pytest

from entpruner_sdk.cli import main
from entpruner_sdk.compress import compress
from entpruner_sdk.data import DataError, ImageDataset, load_data, resolve_labels
from entpruner_sdk.evaluation.classifier import save_classifier, train_classifier
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.evaluation.generation import balanced_labels
from entpruner_sdk.models import DiffusionTransformer, resize_classes
from entpruner_sdk.models.io import load, save
from entpruner_sdk.training import TrainConfig, train
from entpruner_sdk.utils.cache import cache_root
from tests.conftest import randomized, tiny_config, tiny_vae
from tests.test_compress import FAST

IDS = [2, 5, 7]  # the classes held, under the 10-class model's own ids


@pytest.fixture
def subset_npz(tmp_path):
    """Digits of classes 2, 5 and 7 with their original labels, as an .npz (whose class
    count is then the largest label + 1 = 8), and a briefly trained domain classifier cached
    where evaluate looks (the subject here is which classes are sampled, not the figures)."""
    digits = load_data("digits")
    keep = np.isin(digits.labels.numpy(), IDS)
    path = tmp_path / "subset.npz"
    np.savez(path, images=digits.images.numpy()[keep], labels=digits.labels.numpy()[keep])
    data = load_data(path)
    save_classifier(train_classifier(data, steps=20), data,
                    cache_root() / "classifiers" / f"{data.name}-{data.fingerprint()}")
    return path


def ten_classes():
    return randomized(DiffusionTransformer(tiny_config("dit", depth=4)))


def test_the_dataset_knows_which_classes_it_holds(subset_npz):
    data = load_data(subset_npz)
    assert data.num_classes == 8 and data.classes_present == IDS
    assert balanced_labels(7, IDS).tolist() == [2, 5, 7, 2, 5, 7, 2]


def test_evaluation_samples_only_the_classes_the_data_holds(subset_npz):
    report = evaluate(ten_classes(), subset_npz, samples=6, steps=2, features=("domain",),
                      progress=False)
    assert report.classes == IDS and len(report.per_class_accuracy) == 3
    assert "holds 3 of the model's 10 classes" in report.notes[0]
    assert "| 5 |" in report.to_markdown() and "| 0 |" not in report.to_markdown()


def test_train_keeps_the_classes_only_when_told(subset_npz):
    quick = TrainConfig(steps=1, batch_size=4)
    # gaps in the labels: keeping the classes is named first
    with pytest.raises(DataError, match=r"subset holds 3 classes under labels up to 7 \(2, 5, "
                                        r"7\) but the model has 10; if the labels are the "
                                        r"model's own class ids .* \(--keep-classes; "
                                        r"keep_classes=True\); if they are new classes, resize"):
        train(ten_classes(), subset_npz, quick, progress=False)
    result = train(ten_classes(), subset_npz, quick, keep_classes=True, progress=False)
    assert result.ema.config.num_classes == 10  # the label embedder is kept
    assert result.ema.provenance["data_classes"] == IDS
    # training it again on data of every class drops the note
    again = train(result.ema, "digits", quick, progress=False)
    assert "data_classes" not in again.ema.provenance


def test_compress_keeps_the_classes_and_reports_them(subset_npz, tmp_path):
    with pytest.raises(DataError, match="--keep-classes"):
        compress(ten_classes(), subset_npz, 2, out_dir=tmp_path / "refused", **FAST)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="pass one of them"):
        compress(ten_classes(), subset_npz, 2, keep_classes=True, num_classes=8, **FAST)
    result = compress(ten_classes(), subset_npz, 2, keep_classes=True, out_dir=tmp_path / "run",
                      **dict(FAST, report_samples=6))
    summary = result.report["summary"]
    assert summary["data_classes"] == IDS and "resized_classes" not in summary
    assert 0 <= summary["quality_pruned"]["class_accuracy"] <= 1
    assert "holds 3 of the model's classes (2, 5, 7)" in (tmp_path / "run" / "report.md"
                                                         ).read_text()
    saved = load(tmp_path / "run" / "model")
    assert saved.config.num_classes == 10 and saved.provenance["data_classes"] == IDS


def test_cli_keep_classes_and_sampling_defaults(subset_npz, tmp_path, capsys):
    model_dir = tmp_path / "ft" / "model"
    common = ["--steps", "1", "--batch-size", "4", "--quiet", "--device", "cpu"]
    save(ten_classes(), tmp_path / "ten")
    fine_tune = ["train", "--model", str(tmp_path / "ten"), "--data", str(subset_npz),
                 "--out", str(tmp_path / "ft"), *common]
    assert main(fine_tune) == 2
    assert "--keep-classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one or the other
        main([*fine_tune, "--keep-classes", "--num-classes", "8"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main([*fine_tune, "--keep-classes"]) == 0
    # without --labels, sample draws the classes it was fine-tuned on, not all ten
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(model_dir), "--steps", "2", "--per-class", "2",
                 "--out", str(out), "--npz", str(tmp_path / "s.npz"), "--quiet",
                 "--device", "cpu"]) == 0
    assert np.load(tmp_path / "s.npz")["arr_1"].tolist() == [2, 2, 5, 5, 7, 7]
    assert main(["compress", "--model", str(model_dir), "--data", str(subset_npz),
                 "--budget", "2", "--keep-classes", "--steps", "4", "--batch-size", "4",
                 "--calibration-per-class", "2", "--calibration-times", "2",
                 "--report-samples", "0", "--out", str(tmp_path / "run"), "--quiet",
                 "--device", "cpu", "--hflip"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["summary"]["data_classes"] == IDS
    assert report["settings"]["hflip"] is True  # mirrored batches (not for digits: a check)


def test_server_and_demo_offer_the_fine_tuned_classes(subset_npz, tmp_path):
    pytest.importorskip("onnxruntime")
    from entpruner_sdk.apps.pair import load_pair
    from entpruner_sdk.serve.models import load_served_model

    teacher = ten_classes()
    save(teacher, tmp_path / "teacher")
    compress(teacher, subset_npz, 2, keep_classes=True, out_dir=tmp_path / "run", **FAST)
    for backend in ("torch", "onnxruntime"):  # the ONNX export keeps the provenance
        served = load_served_model("m", str(tmp_path / "run" / "model"), backend=backend)
        assert served.info()["data_classes"] == IDS and served.info()["num_classes"] == 10
    assert "data_classes" not in load_served_model("t", str(tmp_path / "teacher")).info()
    pair = load_pair(str(tmp_path / "teacher"), str(tmp_path / "run"))
    assert not pair.errors and pair.classes == IDS


# ---------------------------------------------------------------------- class names
def test_labels_resolve_from_ids_and_names():
    names = ["cat", "dog", "7"]
    assert resolve_labels([0, "1", "dog", " cat"], 3, names) == [0, 1, 1, 0]
    assert resolve_labels(["2"], 3, names) == [2]  # a number is always an id
    # a name written otherwise: case, and spaces, _ or - between words, do not count
    assert resolve_labels(["Golden_Retriever", "german-shepherd"], 3,
                          ["tench", "golden retriever", "German shepherd"]) == [1, 2]
    with pytest.raises(ValueError, match=r"unknown class label 'cow': the classes are 0..2 "
                                         r"\(0 cat, 1 dog, 2 7\)"):
        resolve_labels(["cow"], 3, names)
    for bad in (3, -1, "dog"):
        with pytest.raises(ValueError, match="the classes are 0..2$"):
            resolve_labels([bad], 3)  # no names: ids only


def test_sample_and_an_export_take_class_names_in_python(tmp_path):
    import torch

    from entpruner_sdk.export import export, load_exported
    from entpruner_sdk.sampling import sample

    model = randomized(DiffusionTransformer(tiny_config("dit", num_classes=3),
                                            provenance={"class_names": ["cat", "dog", "cow"]}))
    by_id = sample(model, [2, 0], steps=2, seed=1)
    assert torch.equal(sample(model, ["cow", "cat"], steps=2, seed=1), by_id)
    assert torch.equal(sample(model, ["cow", 0], steps=2, seed=1), by_id)
    with pytest.raises(ValueError, match=r"unknown class label 'emu': the classes are 0..2 "
                                         r"\(0 cat, 1 dog, 2 cow\)"):
        sample(model, ["emu"], steps=2)
    runtime = load_exported(export(model, tmp_path / "onnx", "onnx", verify=False,
                                   exporter="torchscript").directory)
    assert torch.equal(runtime.sample(["cow", "cat"], steps=2, seed=1),
                       runtime.sample([2, 0], steps=2, seed=1))


def test_training_records_the_data_class_names_and_resizing_drops_them():
    photos = load_data("photos", image_size=8)
    model = randomized(DiffusionTransformer(tiny_config("dit", num_classes=8, in_channels=3)))
    trained = train(model, photos, TrainConfig(steps=1, batch_size=4), progress=False).ema
    assert trained.provenance["class_names"][:2] == ["astronaut", "coffee"]
    assert "class_names" not in resize_classes(trained, 3).provenance
    # data named by its ids does not overwrite names the model has
    ids_only = ImageDataset(photos.images, photos.labels, 8)
    again = train(trained, ids_only, TrainConfig(steps=1, batch_size=4), progress=False).ema
    assert again.provenance["class_names"] == trained.provenance["class_names"]


def test_compress_names_the_classes_of_resized_data(tmp_path):
    photos = load_data("photos", image_size=8)
    first_three = photos.labels < 3
    subset = ImageDataset(photos.images[first_three], photos.labels[first_three], 3,
                          name="photos-0-2", class_names=["astronaut", "coffee", "cat"])
    model = randomized(DiffusionTransformer(tiny_config("dit", num_classes=8, in_channels=3,
                                                        depth=4)))
    model.provenance["class_names"] = list(load_data("photos").class_names)
    result = compress(model, subset, 2, num_classes=3, **FAST)
    assert result.model.provenance["class_names"] == ["astronaut", "coffee", "cat"]


def test_cli_samples_and_describes_named_classes(tmp_path, capsys):
    npz = tmp_path / "s.npz"
    assert main(["sample", "--model", "dit-photos", "--labels", "coffee,3", "--steps", "2",
                 "--out", str(tmp_path / "g.png"), "--npz", str(npz), "--quiet",
                 "--device", "cpu"]) == 0
    assert np.load(npz)["arr_1"].tolist() == [1, 3]
    assert main(["sample", "--model", "dit-photos", "--labels", "cofee", "--steps", "2",
                 "--out", str(tmp_path / "g.png"), "--quiet", "--device", "cpu"]) == 2
    assert "unknown class label 'cofee': the classes are 0..7 (0 astronaut, 1 coffee" in \
        capsys.readouterr().err
    assert main(["info", "--model", "sit-photos"]) == 0
    assert "classes 0 astronaut, 1 coffee, 2 chelsea" in capsys.readouterr().out


def test_the_demo_shows_class_names(tmp_path):
    from entpruner_sdk.apps.pair import load_pair

    model = randomized(DiffusionTransformer(tiny_config("dit", num_classes=3, depth=4)))
    save(model, tmp_path / "teacher")
    model.provenance["class_names"] = ["a", "b", "c"]
    save(model.keep_blocks([0, 3]), tmp_path / "pruned")
    pair = load_pair(str(tmp_path / "teacher"), str(tmp_path / "pruned"))
    assert not pair.errors and pair.class_choices == [("0 a", 0), ("1 b", 1), ("2 c", 2)]


def test_the_evaluation_names_its_classes(tmp_path):
    from entpruner_sdk.teachers import load_teacher

    report = evaluate(load_teacher("dit-photos"), "photos", samples=8, steps=2,
                      features=("domain",), progress=False)
    assert report.class_names[:2] == ["astronaut", "coffee"] and report.classes == list(range(8))
    assert "| 1 coffee |" in report.save(tmp_path).joinpath("evaluation.md").read_text()


def test_an_imagenet_subset_names_the_classes_it_holds(tmp_path):
    digits = load_data("digits")
    keep = np.isin(digits.labels.numpy(), IDS)
    path = tmp_path / "named.npz"
    np.savez(path, images=digits.images.numpy()[keep], labels=digits.labels.numpy()[keep],
             class_names=np.array(["two", "five", "seven"]))  # one per class held
    data = load_data(path)
    assert data.class_names == ["0", "1", "two", "3", "4", "five", "6", "seven"] and data.named
    model = ten_classes()
    model.provenance["class_names"] = [f"c{i}" for i in range(10)]
    trained = train(model, data, TrainConfig(steps=1, batch_size=4), keep_classes=True,
                    progress=False).ema
    # the data's names over the model's; the classes it does not name keep theirs
    assert trained.provenance["class_names"] == ["c0", "c1", "two", "c3", "c4", "five", "c6",
                                                 "seven", "c8", "c9"]
    assert resolve_labels(["five", "c9"], 10, trained.provenance["class_names"]) == [5, 9]
    np.savez(path, images=digits.images.numpy()[keep], labels=digits.labels.numpy()[keep],
             class_names=np.array(["two", "five"]))
    with pytest.raises(DataError, match=r"2 class_names for 8 classes; give one name per "
                                        r"class, or one per class held \(3, in label order\)"):
        load_data(path)


def test_imagenet_style_folders_take_their_labels_from_the_class_index(tmp_path, capsys):
    from PIL import Image

    from entpruner_sdk.data import ImageFolder
    from entpruner_sdk.data.folder import read_class_index

    # ten classes under WordNet-style ids, as LOC_synset_mapping.txt lists ImageNet's; the
    # folders hold three of them, and two classes share the name "crane", as in ImageNet
    wnids = [f"n0{i}000000" for i in range(10)]
    names = ["tench", "goldfish", "crane", "shark", "hen", "crane", "ostrich", "finch",
             "junco", "robin"]
    index = tmp_path / "LOC_synset_mapping.txt"
    index.write_text("".join(f"{w} {n}, other words\n" for w, n in zip(wnids, names)))
    digits = load_data("digits")
    for label in IDS:
        folder = tmp_path / "subset" / wnids[label]
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.labels == label][:6]):
            pixels = ((image[0] + 1) * 127.5).round().byte().numpy()
            Image.fromarray(pixels).save(folder / f"{i}.png")
    data = load_data(tmp_path / "subset", class_index=index)
    assert data.classes_present == IDS and data.num_classes == 10 and data.class_names == names
    assert data.origin["class_index"] == str(index.resolve())
    json_index = tmp_path / "imagenet_class_index.json"
    json_index.write_text(json.dumps({str(i): [w, n] for i, (w, n) in
                                      enumerate(zip(wnids, names))}))
    assert ImageFolder(tmp_path / "subset", class_index=json_index).labels.tolist() == \
        data.labels.tolist()
    # saved by a Windows editor: CRLF line ends and a byte-order mark
    windows = tmp_path / "windows.txt"
    windows.write_bytes(b"\xef\xbb\xbf" + index.read_text().replace("\n", "\r\n").encode())
    assert read_class_index(windows) == (wnids, names)
    for table in ({str(i): w for i, w in enumerate(wnids)}, wnids):  # folder names only
        json_index.write_text(json.dumps(table))
        bare = ImageFolder(tmp_path / "subset", class_index=json_index)
        assert bare.labels.tolist() == data.labels.tolist() and bare.class_names == wnids
    json_index.write_text(json.dumps({str(i): [w, n] for i, (w, n) in
                                      enumerate(zip(wnids, names))}))
    # encoded for a latent model, streamed: the latents keep the index's labels and names
    pytest.importorskip("diffusers")
    assert main(["encode", "--vae", str(tiny_vae(tmp_path / "vae")), "--data",
                 str(tmp_path / "subset"), "--class-index", str(json_index), "--out",
                 str(tmp_path / "l.npz"), "--workers", "0", "--quiet"]) == 0
    assert "(3 of its 10 classes)" in capsys.readouterr().out
    latents = load_data(tmp_path / "l.npz")
    assert latents.labels.tolist() == data.labels.tolist() and latents.class_names == names
    # the model's class count: no --keep-classes needed, and it records the classes held
    save(ten_classes(), tmp_path / "ten")
    assert main(["train", "--model", str(tmp_path / "ten"), "--data", str(tmp_path / "subset"),
                 "--class-index", str(index), "--out", str(tmp_path / "ft"), "--steps", "1",
                 "--batch-size", "4", "--quiet", "--device", "cpu"]) == 0
    tuned = load(tmp_path / "ft" / "model")
    assert tuned.provenance["data_classes"] == IDS
    assert tuned.provenance["class_names"] == names
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "ft" / "model")]) == 0
    assert "fine-tuned on classes 2 crane, 5 crane, 7 finch" in capsys.readouterr().out
    assert resolve_labels(["junco", "hen"], 10, names) == [8, 4]
    with pytest.raises(ValueError, match="'crane' names the classes 2, 5; give the id"):
        resolve_labels(["crane"], 10, names)
    # folders the index does not list, and an index for data that is not a folder
    (tmp_path / "subset" / "n99999999").mkdir()
    with pytest.raises(DataError, match="the folders n99999999 are not classes of the index"):
        load_data(tmp_path / "subset", class_index=index)
    with pytest.raises(DataError, match="labels class folders and tables; 'digits' is "
                                        "neither: drop it"):
        load_data("digits", class_index=index)
    index.write_text("n00 a\nn00 b\n")
    with pytest.raises(DataError, match=r"lists \['n00'\] more than once"):
        ImageFolder(tmp_path / "subset", class_index=index)
