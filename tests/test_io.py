import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import entpruner_sdk as ep
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.models.diffusers_convert import diffusers_to_reference, reference_to_diffusers
from tests.conftest import randomized, tiny_config


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_released_plain_state_dict_loads_strictly(tmp_path, tiny_dit):
    path = tmp_path / "DiT-tiny.pt"
    torch.save(tiny_dit.state_dict(), path)
    loaded = ep.load(path, family="dit", num_heads=2)
    assert loaded.config == tiny_dit.config
    assert same_weights(loaded, tiny_dit)
    assert loaded.provenance["source"] == "DiT-tiny.pt"
    assert len(loaded.provenance["source_sha256"]) == 64


def test_a_guessed_head_count_is_said_and_a_published_one_is_not(tmp_path, tiny_dit):
    from entpruner_sdk.models.config import published_num_heads

    torch.save(tiny_dit.state_dict(), tmp_path / "custom.pt")  # width 32, 2 heads
    with pytest.warns(UserWarning, match="width 32 is not a published DiT/SiT size: assuming "
                                         "1 head of 64 channels; pass num_heads="):
        guessed = ep.load(tmp_path / "custom.pt", family="dit")
    assert guessed.config.num_heads == 1  # loads without error: hence the warning
    assert published_num_heads(1152) == 16 and published_num_heads(384) == 6
    assert published_num_heads(32) is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ep.load(tmp_path / "custom.pt", family="dit", num_heads=2).config.num_heads == 2


def test_training_checkpoint_uses_the_ema_weights(tmp_path, tiny_sit):
    raw = randomized(DiffusionTransformer(tiny_sit.config), seed=7)
    path = tmp_path / "0400000.pt"
    torch.save({"model": raw.state_dict(), "ema": tiny_sit.state_dict(), "opt": {},
                "args": {"model": "SiT-tiny"}}, path)
    loaded = ep.load(path, family="sit", num_heads=2)
    assert same_weights(loaded, tiny_sit) and not same_weights(loaded, raw)


def reference_checkpoint(path, weights, **args):
    """A checkpoint as the DiT and SiT repositories' train.py writes it: the raw and EMA
    weights, the optimizer and the run's argparse.Namespace."""
    import argparse

    raw = randomized(DiffusionTransformer(weights.config), seed=7)
    optimizer = torch.optim.AdamW(raw.parameters(), lr=1e-4)
    raw(torch.randn(2, weights.config.in_channels, 8, 8), torch.rand(2),
        torch.tensor([1, 2])).square().mean().backward()
    optimizer.step()  # an optimizer state with tensors in it, as after any step
    namespace = argparse.Namespace(
        data_path="/data/train", results_dir="results", image_size=256, epochs=1400,
        global_batch_size=256, global_seed=0, vae="ema", num_workers=4, log_every=100,
        ckpt_every=50_000, **args)
    torch.save({"model": raw.state_dict(), "ema": weights.state_dict(),
                "opt": optimizer.state_dict(), "args": namespace}, path)
    return path


def test_a_reference_train_py_checkpoint_loads_with_what_its_args_say(tmp_path, tiny_sit,
                                                                      capsys):
    from entpruner_sdk.cli import main

    sit_args = dict(model="SiT-tiny", num_classes=10, path_type="GVP", prediction="velocity",
                    loss_weight=None, train_eps=None, sample_eps=None)
    path = reference_checkpoint(tmp_path / "0050000.pt", tiny_sit, **sit_args)
    loaded = ep.load(path, num_heads=2)  # the args name the family
    assert same_weights(loaded, tiny_sit) and loaded.family == "sit"
    assert loaded.objective == {"path": "gvp"}  # sampled as a linear path, it would be noise
    trained = loaded.provenance["trained_with"]
    assert trained["model"] == "SiT-tiny" and trained["vae"] == "ema"
    assert "data_path" not in trained  # where the run kept its files is not the model's
    assert main(["info", "--model", str(path), "--num-heads", "2"]) == 0
    shown = capsys.readouterr().out
    assert "flow path gvp" in shown
    assert "trained by train.py as SiT-tiny, 256 px images, 10 classes, path GVP" in shown
    # what a family given by hand contradicts, and what this package cannot run, is refused
    with pytest.raises(ep.CheckpointError, match=r"a SIT by its training args \(SiT-tiny\) "
                                                 r"but family='dit' was given"):
        ep.load(path, family="dit", num_heads=2)
    for setting, refused in (({"path_type": "VP"}, "SiT's VP path; entpruner implements the "
                                                   "Linear and GVP paths only"),
                             ({"prediction": "noise"}, "predicts the noise")):
        other = reference_checkpoint(tmp_path / "other.pt", tiny_sit, **{**sit_args,
                                                                         **setting})
        with pytest.raises(ep.CheckpointError, match=refused):
            ep.load(other, num_heads=2)
    # a model trained without label dropout has no null row; the table alone misreads it
    plain = randomized(DiffusionTransformer(tiny_config("dit", class_dropout_prob=0.0)))
    path = reference_checkpoint(tmp_path / "dit.pt", plain, model="DiT-tiny", num_classes=10)
    loaded = ep.load(path, num_heads=2)
    assert loaded.config == plain.config and same_weights(loaded, plain)
    # a released file records no flow path: flow_path= gives it; what a file records is kept
    torch.save(tiny_sit.state_dict(), tmp_path / "released.pt")
    assert ep.load(tmp_path / "released.pt", "sit", num_heads=2).objective == {}  # linear
    assert ep.load(tmp_path / "released.pt", "sit", num_heads=2,
                   flow_path="gvp").objective == {"path": "gvp"}
    for source, family, path, refused in (
            (tmp_path / "0050000.pt", None, "linear", "trained on the gvp path, not linear"),
            (tmp_path / "dit.pt", None, "gvp", "holds a DiT, which has no flow path"),
            (tmp_path / "released.pt", "sit", "vp", "unknown flow path 'vp'")):
        with pytest.raises(ep.CheckpointError, match=refused):
            ep.load(source, family, num_heads=2, flow_path=path)
    assert main(["info", "--model", str(tmp_path / "released.pt"), "--family", "sit",
                 "--num-heads", "2", "--flow-path", "gvp"]) == 0
    assert "flow path gvp" in capsys.readouterr().out
    # arguments holding an object of another kind are still refused, with the EMA's way out
    import pathlib

    torch.save({"ema": tiny_sit.state_dict(), "args": {"data": pathlib.PurePosixPath("/d")}},
               tmp_path / "odd.pt")
    with pytest.raises(ep.CheckpointError, match=r"PurePosixPath.*torch.save\(checkpoint"
                                                 r"\['ema'\], 'weights.pt'\)"):
        ep.load(tmp_path / "odd.pt", family="sit")


def test_a_file_in_torchs_old_format_loads_though_it_cannot_be_mapped(tmp_path, tiny_dit):
    # files are mapped, so a training checkpoint's optimizer state is never read; the format
    # of torch before 1.6 cannot be, and is read whole
    torch.save(tiny_dit.state_dict(), tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError, match="mmap can only be used"):
        torch.load(tmp_path / "legacy.pt", mmap=True, weights_only=True)
    assert same_weights(ep.load(tmp_path / "legacy.pt", "dit", num_heads=2), tiny_dit)


def test_a_model_of_a_newer_format_is_refused_with_the_upgrade(tmp_path, tiny_sit):
    ep.save(tiny_sit, tmp_path / "m")
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    # a later version's model, with a field this one does not know
    document["format_version"] += 1
    document["config"]["qk_norm"] = True
    (tmp_path / "m" / "config.json").write_text(json.dumps(document))
    with pytest.raises(ep.CheckpointError, match=r"holds a model saved by a newer "
                                                 r"entpruner-sdk \(format 2; version .* reads "
                                                 r"format 1 and older\): upgrade it"):
        ep.load(tmp_path / "m")


def test_a_released_file_under_its_own_name_needs_no_family(tmp_path):
    from entpruner_sdk.models.config import config_from_name

    # the released files' names (SiT-XL-2-256x256.pt) state the family and the architecture;
    # S/8 at 64 px stands in for XL/2 at 256 px, which is 2.7 GB
    model = DiffusionTransformer(config_from_name("SiT-S/8", input_size=8))
    torch.save(model.state_dict(), tmp_path / "SiT-S-8-64x64.pt")
    assert ep.load(tmp_path / "SiT-S-8-64x64.pt").family == "sit"
    # a name whose architecture is not the weights' says nothing: the family is asked for
    (tmp_path / "SiT-S-8-64x64.pt").rename(tmp_path / "SiT-B-8-64x64.pt")
    with pytest.raises(ep.CheckpointError, match="does not record whether it is a DiT or a SiT"):
        ep.load(tmp_path / "SiT-B-8-64x64.pt")
    assert ep.load(tmp_path / "SiT-B-8-64x64.pt", "dit").family == "dit"


def test_released_safetensors_and_inferred_config(tmp_path):
    model = randomized(DiffusionTransformer(tiny_config("dit", learn_sigma=False, depth=3,
                                                        num_classes=7, input_size=16,
                                                        patch_size=4, in_channels=3)))
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = ep.load(path, family="dit", num_heads=2)
    assert loaded.config == model.config
    assert same_weights(loaded, model)


def test_save_load_round_trip_is_exact(tmp_path, tiny_sit):
    tiny_sit.objective = {"path": "gvp"}
    pruned = tiny_sit.keep_blocks([0, 2])
    ep.save(pruned, tmp_path / "m", note="hello")
    loaded = ep.load(tmp_path / "m")
    assert loaded.config == pruned.config and same_weights(loaded, pruned)
    assert loaded.kept_blocks == [0, 2] and loaded.objective == {"path": "gvp"}
    assert loaded.metadata == {"note": "hello"}
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["family"] == "sit" and document["provenance"]["kept_blocks"] == [0, 2]
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 2])
    assert torch.equal(loaded(x, t, y), pruned(x, t, y))
    # a compress output folder holds the model as model/, beside its report: either loads
    ep.save(pruned, tmp_path / "run" / "model")
    assert same_weights(ep.load(tmp_path / "run"), pruned)
    with pytest.raises(ep.CheckpointError, match="has no config.json"):
        ep.load(tmp_path)  # neither


def test_family_of_our_directory_is_checked(tmp_path, tiny_dit):
    ep.save(tiny_dit, tmp_path / "m")
    with pytest.raises(ep.CheckpointError, match="holds a DIT model"):
        ep.load(tmp_path / "m", family="sit")


def test_released_file_without_family_is_refused(tmp_path, tiny_dit):
    torch.save(tiny_dit.state_dict(), tmp_path / "x.pt")
    with pytest.raises(ep.CheckpointError, match="family='dit' or family='sit'"):
        ep.load(tmp_path / "x.pt")


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path, tiny_dit):
    corrupt = tmp_path / "corrupt.pt"
    torch.save(tiny_dit.state_dict(), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    with pytest.raises(ep.CheckpointError, match="corrupt"):
        ep.load(corrupt, family="dit")
    foreign = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, foreign)
    with pytest.raises(ep.CheckpointError, match="not a DiT/SiT state dict"):
        ep.load(foreign, family="dit")
    with pytest.raises(ep.CheckpointError, match="nor an existing file or folder; pass a"):
        ep.load(tmp_path / "missing.pt", family="dit")
    # a bundled teacher by name, as every verb takes it; a misspelt one is answered
    assert ep.load("sit-digits").loaded_from == "sit-digits"
    with pytest.raises(ep.CheckpointError, match="did you mean sit-digits?"):
        ep.load("sit-digit")
    # a folder of ours that is not a model says what it is and what to pass
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "evaluation.json").write_text("{}")
    with pytest.raises(ep.CheckpointError, match="holds an evaluation report, not a model: "
                       "read evaluation.md"):
        ep.load(tmp_path / "eval")
    truncated = dict(tiny_dit.state_dict())
    truncated.pop("blocks.1.mlp.fc2.bias")
    torch.save(truncated, tmp_path / "truncated.pt")
    with pytest.raises(ep.CheckpointError, match="do not fit"):
        ep.load(tmp_path / "truncated.pt", family="dit", num_heads=2)


class Arbitrary:
    """A pickled class: weights_only loading must refuse to import it."""


def test_pickled_objects_are_not_loaded(tmp_path):
    torch.save({"x": Arbitrary()}, tmp_path / "evil.pt")
    with pytest.raises(ep.CheckpointError) as refused:
        ep.load(tmp_path / "evil.pt", family="dit")
    # the object is named and the safe way out given; torch's advice to load with
    # weights_only=False is not passed on
    assert str(refused.value) == (
        f"cannot read {tmp_path / 'evil.pt'} safely: it holds the Python object "
        f"{Arbitrary.__module__}.Arbitrary, and loading it would run code from the file "
        "(weights_only=True refuses it). If you trust its source, load it yourself once and "
        "save its tensors: for a training checkpoint the EMA weights, "
        "torch.save(checkpoint['ema'], 'weights.pt'), else "
        "torch.save(model.state_dict(), 'weights.pt')")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ep.CheckpointError) as refused:
        ep.load(tmp_path / "text.pt", family="dit")
    assert str(refused.value).startswith(f"cannot read {tmp_path / 'text.pt'}: UnpicklingError: ")
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)


def test_diffusers_directory_loads_with_converted_keys(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    hf = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
        num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    # Converted checkpoints carry identical embedder copies in every block; mirror that.
    state = hf.state_dict()
    for key in list(state):
        if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
            state[key] = state["transformer_blocks.0." + key.split(".", 2)[2]]
    hf.load_state_dict(state)
    hf.save_pretrained(tmp_path / "hf")
    model = ep.load(tmp_path / "hf", family="dit")
    assert (model.depth, model.config.hidden_size, model.config.num_heads) == (3, 32, 2)
    assert model.config.learn_sigma and model.config.num_classes == 10
    back = reference_to_diffusers(model.state_dict())
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in back)
    again = diffusers_to_reference(back, 32, 16)
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    # the verbs take the module itself as a DiT, as DiTPipeline samples it
    from entpruner_sdk.teachers import as_model

    held = as_model(hf)
    assert held.config == model.config and held.provenance["source"].endswith("(in memory)")
    assert all(torch.equal(held.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match=r"model is a Linear, .* diffusers' "
                                        r"DiTTransformer2DModel and DiTPipeline"):
        ep.sample(torch.nn.Linear(2, 2), [1])


def test_a_diffusers_dit_computes_the_reference_function(tmp_path):
    """The converted model is diffusers' own, up to the timestep embedding: diffusers spaces its
    frequencies over 127 (``downscale_freq_shift=1``), the reference DiT, whose weights the
    released diffusers folders hold, over 128; with that one setting aligned the outputs agree."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    hf = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    with torch.no_grad():  # adaLN-Zero starts as the identity: give every weight a value
        for parameter in hf.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for block in hf.transformer_blocks[1:]:  # one embedder, as converted folders hold
            block.norm1.emb.load_state_dict(hf.transformer_blocks[0].norm1.emb.state_dict())
    hf.save_pretrained(tmp_path / "hf")
    model = ep.load(tmp_path / "hf", family="dit").eval()
    for block in hf.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    x, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 3, 9, 10])  # 10: the null class
    t = torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        expected = hf(x, timestep=t, class_labels=y).sample
        torch.testing.assert_close(model(x, t, y), expected, rtol=1e-4, atol=1e-4)


def test_diffusers_directory_needs_family(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                    out_channels=8, num_layers=1, sample_size=8, patch_size=2,
                                    num_embeds_ada_norm=4).save_pretrained(tmp_path / "hf")
    with pytest.raises(ep.CheckpointError, match="family"):
        ep.load(tmp_path / "hf")
    # a download cut short is named with the fix
    weights = tmp_path / "hf" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ep.CheckpointError, match="diffusion_pytorch_model.safetensors: .* The "
                                                 "file is corrupt, truncated"):
        ep.load(tmp_path / "hf", family="dit")


def test_half_precision_storage_loads_as_float32(tmp_path, tiny_dit):
    ep.save(tiny_dit, tmp_path / "half", dtype=torch.float16)
    loaded = ep.load(tmp_path / "half")
    assert loaded.pos_embed.dtype == torch.float32
    expected = tiny_dit.blocks[0].attn.qkv.weight.half().float()
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, expected)
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (
        ep.save(tiny_dit, tmp_path / "full") / "model.safetensors").stat().st_size


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    from entpruner_sdk.utils.files import atomic_directory

    target = tmp_path / "export"
    target.mkdir()
    (target / "old.onnx").write_text("old")
    with pytest.raises(RuntimeError, match="parity"), atomic_directory(target) as staging:
        (staging / "new.onnx").write_text("new")
        raise RuntimeError("parity check failed")  # e.g. an export that does not match
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging folder left
    assert [p.name for p in target.iterdir()] == ["old.onnx"]
    with atomic_directory(target) as staging:
        (staging / "new.onnx").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # nor the retired one
    assert [p.name for p in target.iterdir()] == ["new.onnx"]


KILLED_WRITER = """
import sys, time
from entpruner_sdk.utils.files import atomic_directory
with atomic_directory(sys.argv[1]) as staging:
    (staging / "model.onnx").write_bytes(bytes(1000))
    print(staging, flush=True)
    time.sleep(60)  # killed here, as the out-of-memory killer would
"""


def test_what_a_killed_writer_left_is_removed_by_the_next(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    from entpruner_sdk.utils.files import atomic_directory, atomic_write_text

    target = tmp_path / "export"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)],
                              stdout=subprocess.PIPE, text=True)
    left = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert left.parent == tmp_path and (left / "model.onnx").is_file()
    # beside it, a live writer's folder and one from another machine on a shared disk
    host = socket.gethostname()
    live = tmp_path / f".export.{os.getpid()}@{host}.0123abcd"
    remote = tmp_path / f".export.{writer.pid}@not-{host}.0123abcd"
    live.mkdir()
    remote.mkdir()
    with atomic_directory(target) as staging:
        (staging / "model.onnx").write_bytes(b"new")
    assert not left.exists() and live.is_dir() and remote.is_dir()
    assert (target / "model.onnx").read_bytes() == b"new"
    stale_file = tmp_path / f".notes.txt.{writer.pid}@{host}.89abcdef.tmp"
    stale_file.write_text("half")
    atomic_write_text(tmp_path / "notes.txt", "whole")  # files too
    assert not stale_file.exists()


def test_a_checkpoint_save_killed_between_its_renames_keeps_the_previous_one(tmp_path,
                                                                              monkeypatch):
    from entpruner_sdk.utils.checkpoint import (
        discard_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"w": torch.ones(2)}, {"step": 1})
    replace = os.replace

    def dies_before_the_new_one_is_in(source, target):
        if str(target) == str(folder):
            raise OSError("killed")
        replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", dies_before_the_new_one_is_in)
        with pytest.raises(OSError, match="killed"):
            save_checkpoint(folder, {"w": torch.zeros(2)}, {"step": 2})
    assert not folder.exists()  # the previous checkpoint was moved aside, the new one not in
    tensors, meta = load_checkpoint(folder)
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(2))
    save_checkpoint(folder, {"w": torch.zeros(2)}, {"step": 2})
    assert load_checkpoint(folder)[1] == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    # damaged on disk since: said, with the way out, and kept (the run's work is not ours)
    (folder / "state.safetensors").write_bytes(b"garbled")
    with pytest.raises(ValueError, match=f"the checkpoint in {folder} cannot be read .* "
                                         "delete that folder to start the run over"):
        load_checkpoint(folder)
    assert (folder / "state.safetensors").exists()
    # a run that will not be resumed deletes it, with what a killed save left beside it
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", dies_before_the_new_one_is_in)
        with pytest.raises(OSError, match="killed"):
            save_checkpoint(folder, {"w": torch.zeros(2)}, {"step": 3})
    assert list(tmp_path.iterdir())
    discard_checkpoint(folder)
    assert not list(tmp_path.iterdir())


def test_a_save_killed_between_its_two_files_is_refused_on_load(tmp_path, tiny_dit,
                                                                 monkeypatch):
    from entpruner_sdk.models import io

    ep.save(tiny_dit.keep_blocks([0, 1]), tmp_path / "m")
    other = tiny_dit.keep_blocks([2, 3])  # the same shapes: only the kept blocks tell them apart

    def dies_before_the_config(*args):
        raise OSError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(io, "atomic_write_text", dies_before_the_config)
        with pytest.raises(OSError, match="killed"):
            ep.save(other, tmp_path / "m")
    with pytest.raises(ep.CheckpointError, match="come from two different saves .* save the "
                                                  "model again"):
        ep.load(tmp_path / "m")
    ep.save(other, tmp_path / "m")
    assert ep.load(tmp_path / "m").kept_blocks == [2, 3]
    # a directory saved before saves were named still loads
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    del document["save"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(document))
    assert ep.load(tmp_path / "m").kept_blocks == [2, 3]


def test_saved_files_have_ordinary_permissions(tmp_path, tiny_dit):
    ep.save(tiny_dit, tmp_path / "m")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_writes_follow_the_umask_and_leave_no_temporary_file(tmp_path, tiny_dit):
    from entpruner_sdk.utils.files import atomic_write_text, staging_dir

    previous = os.umask(0o027)
    try:
        ep.save(tiny_dit, tmp_path / "group")  # safetensors writes a file of its own
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.json", "{}")
        staging = staging_dir(tmp_path / "private-dir")
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "group" / name).stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert staging.stat().st_mode & 0o777 == 0o700
    assert staging.parent == tmp_path and staging.name.startswith(".private-dir.")
    atomic_write_text(tmp_path / "private.json", "[1]")  # replaces, keeps nothing beside it
    assert (tmp_path / "private.json").read_text() == "[1]"
    assert sorted(p.name for p in tmp_path.iterdir()) == [staging.name, "group",
                                                          "private.json"]


def test_an_output_path_that_cannot_be_made_is_refused_before_the_work(tmp_path, capsys):
    from entpruner_sdk.cli import main
    from entpruner_sdk.compress import compress
    from entpruner_sdk.utils.files import check_output_path

    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    check_output_path(tmp_path / "new" / "deeper", folder=True)  # made as it is written
    check_output_path(tmp_path / "new" / "grid.png", folder=False)
    with pytest.raises(ValueError, match=r"a-file is a file, where a folder is to be written"):
        check_output_path(blocker, folder=True)
    with pytest.raises(ValueError, match=r"is a folder, where a file is to be written"):
        check_output_path(tmp_path, folder=False)
    with pytest.raises(ValueError, match=r"cannot write .*a-file/x/y\.npz: .*a-file is a file, "
                                         r"not a folder"):
        check_output_path(blocker / "x" / "y.npz", folder=False)
    # the commands meet it first: no sampling, no fine-tuning before the error
    assert main(["sample", "--model", "dit-digits", "--out", str(blocker / "g.png")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    assert main(["compress", "--model", "dit-digits", "--budget", "6", "--dry-run", "--out",
                 str(blocker)]) == 2  # a plan is written there too
    assert "a-file is a file, where a folder is to be written" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a-file is a file, where a folder is to be written"):
        compress("dit-digits", "digits", 6, out_dir=blocker)  # before calibration
    assert blocker.read_text() == "in the way"


def refuses_new_files(folder: Path) -> bool:
    try:
        os.close(os.open(folder / ".entpruner-test-probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except PermissionError:
        return True
    except OSError:
        return False
    os.unlink(folder / ".entpruner-test-probe")
    return False


def test_an_output_folder_this_process_may_not_write_in_is_refused_before_the_work(
        tmp_path, capsys):
    from entpruner_sdk.cli import main
    from entpruner_sdk.utils.files import check_output_path

    # sysfs refuses new files even to root, who passes any mode bits; elsewhere a folder
    # without write permission stands in for it
    if refuses_new_files(Path("/sys")):
        closed = Path("/sys")
    elif os.geteuid() != 0:
        closed = tmp_path / "read-only"
        closed.mkdir(mode=0o555)
    else:
        pytest.skip("no folder here that refuses root a new file")
    with pytest.raises(ValueError, match=rf"cannot write {closed}/run: this process may not "
                                         rf"write in {closed} \(Permission denied\); choose"):
        check_output_path(closed / "run", folder=True)
    with pytest.raises(ValueError, match="may not write in"):
        check_output_path(closed / "grid.png", folder=False)
    assert main(["sample", "--model", "dit-digits", "--out", str(closed / "g.png")]) == 2
    assert f"may not write in {closed}" in capsys.readouterr().err
    check_output_path(tmp_path / "run", folder=True)  # writable: no probe file left behind
    assert list(tmp_path.iterdir()) == ([closed] if closed.parent == tmp_path else [])


def test_an_npz_is_written_a_part_at_a_time_and_reads_as_np_savez_writes_it(tmp_path):
    import numpy as np

    from entpruner_sdk.data.datasets import load_npz
    from entpruner_sdk.utils.npz import Chunks, save_npz_streamed

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)  # 48 KiB a part of 4
    on_disk = []

    def parts():
        for start in range(0, 10, 4):
            on_disk.append(sum(f.stat().st_size for f in tmp_path.iterdir()))
            yield images[start:start + 4]

    path = save_npz_streamed(tmp_path / "samples", {  # the name kept as given
        "arr_0": Chunks(10, parts()), "arr_1": np.arange(10)})
    # each part reached the file before the next was asked for: none waited in memory
    assert on_disk[0] < 4096 and all(b - a >= 4 * 64 * 64 * 3 for a, b in
                                     zip(on_disk, on_disk[1:]))
    with np.load(path) as saved:
        assert saved.files == ["arr_0", "arr_1"]
        assert np.array_equal(saved["arr_0"], images)
        assert saved["arr_1"].tolist() == list(range(10))
    assert load_npz(path).labels.tolist() == list(range(10))  # ADM's keys, read back
    # rows that do not add up, or a part unlike the first, leave no file and nothing beside it
    for chunks, message in ((Chunks(11, [images]), "10 rows given of the 11 announced"),
                            (Chunks(9, [images]), "more than the 9 rows announced"),
                            (Chunks(12, [images, images[:2, :32]]),
                             "a part of uint8 (32, 64, 3) after parts of uint8 (64, 64, 3)")):
        with pytest.raises(ValueError, match=re.escape(message)):
            save_npz_streamed(tmp_path / "bad.npz", {"arr_0": chunks})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
