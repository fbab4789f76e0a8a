import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import entpruner_sdk as ep
from entpruner_sdk.cli import COMMANDS, build_parser, main
from entpruner_sdk.cli.common import note_unfinished_runs
from entpruner_sdk.data import load_data
from entpruner_sdk.models import DiffusionTransformer
from tests.conftest import holding, randomized, tiny_config


def saved_pixels(images: torch.Tensor):
    """Samples as ``sample --npz`` saves them: 8-bit pixels, [N, H, W, C]."""
    from entpruner_sdk.data.datasets import eight_bit

    return eight_bit(images).permute(0, 2, 3, 1).numpy()


def test_every_command_has_help_with_examples(capsys):
    for command in [None, *COMMANDS]:
        with pytest.raises(SystemExit) as exit_info:
            main(([command] if command else []) + ["--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out
        examples = out.split("examples:")[1].splitlines()
        # one shell line per example line: an unescaped backslash in the source joins two
        assert max(len(line) for line in examples) <= 100, command


def test_every_option_says_what_it_does_and_its_default():
    commands = next(a for a in build_parser()._actions if a.choices and "compress" in a.choices)
    for name, parser in commands.choices.items():
        for action in parser._actions:
            assert action.help, f"entpruner {name} {action.option_strings}: no help text"
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
    assert "(default: 0.9)" in commands.choices["compress"].format_help()  # --kd-weight


def test_the_long_commands_group_their_options_and_end_with_the_run_group():
    commands = next(a for a in build_parser()._actions if a.choices and "compress" in a.choices)
    for name in ("compress", "evaluate", "train", "sample", "serve"):
        groups = [g for g in commands.choices[name]._action_groups if g._group_actions]
        loose = [a.option_strings for g in groups if g.title == "options"
                 for a in g._group_actions if a.dest != "help"]
        assert not loose, f"entpruner {name}: options outside a group: {loose}"
        assert len(groups) >= 4, name  # help's own group, then three or more of the command's
        run = {a.dest for a in groups[-1]._group_actions}
        assert groups[-1].title == "run" and {"device", "quiet", "mixed_precision"} <= run, name


def test_compress_and_train_options_default_to_their_configs():
    from entpruner_sdk.compress import CompressConfig
    from entpruner_sdk.training import TrainConfig

    def flat(config) -> dict:
        settings = {}
        for name, value in vars(config).items():
            settings.update(flat(value) if hasattr(value, "__dataclass_fields__")
                            else {name: value})
        return settings

    for command, config in (("compress", CompressConfig()), ("train", TrainConfig())):
        args = build_parser().parse_args([command, "--model", "m", "--budget", "2", "--out",
                                          "o"] if command == "compress"
                                         else [command, "--model", "m", "--out", "o"])
        shared = {name: value for name, value in flat(config).items() if name in vars(args)}
        assert len(shared) >= 9  # the options that share a setting's name and meaning
        for name, value in shared.items():
            option = vars(args)[name]
            assert option == value or (isinstance(value, tuple) and tuple(option) == value), (
                command, name, option, value)


def test_every_benchmark_option_has_help():
    """The benchmark scripts' ``--help`` documents every option too (read from the source)."""
    for script in sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
                assert any(k.arg == "help" for k in node.keywords), f"{script.name} {names}"


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "entpruner_sdk", "--help"],
                            capture_output=True, text=True, check=True)
    assert "quickstart" in result.stdout


WITHOUT_EXTRAS = """
import sys
for name in ("fastapi", "uvicorn", "gradio", "ray"):
    sys.modules[name] = None  # import fails, as when the serve and app extras are absent
from entpruner_sdk.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_core_commands_run_without_the_serve_and_app_extras():
    """A GPU box with only the core dependencies must still compress; the commands that need
    an extra say which one to install."""
    run = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, "info", "--model", "dit-digits",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["config"]["depth"] == 12
    run = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, "serve", "--model", "dit-digits"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "pip install 'entpruner-sdk[serve]'" in run.stderr


def test_train_info_and_sample_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--family", "sit", "--depth", "2", "--hidden", "32", "--heads", "2",
                 "--steps", "4", "--batch-size", "8", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert (out / "model" / "model.safetensors").exists()
    assert (out / "checkpoint" / "state.json").exists()  # kept by default, for --resume
    assert main(["train", "--family", "sit", "--depth", "2", "--hidden", "32", "--heads", "2",
                 "--steps", "4", "--batch-size", "8", "--out", str(out), "--resume",
                 "--no-keep-checkpoint", "--quiet", "--device", "cpu"]) == 0
    assert not (out / "checkpoint").exists() and (out / "model" / "model.safetensors").exists()
    # a released SiT file fine-tuned on the path it was trained on, which the file cannot say
    import entpruner_sdk as ep

    torch.save(ep.load(out / "model").state_dict(), tmp_path / "released.pt")
    assert main(["train", "--model", str(tmp_path / "released.pt"), "--family", "sit",
                 "--num-heads", "2", "--flow-path", "gvp", "--steps", "1", "--batch-size", "8",
                 "--out", str(tmp_path / "gvp"), "--quiet", "--device", "cpu"]) == 0
    assert ep.load(tmp_path / "gvp").objective == {"path": "gvp"}
    assert main(["sample", "--model", str(out / "model"), "--labels", "1,2", "--steps", "2",
                 "--out", str(tmp_path / "g.png"), "--npz", str(tmp_path / "s.npz"),
                 "--quiet", "--device", "cpu"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    import numpy as np

    saved = np.load(tmp_path / "s.npz")
    assert saved["arr_0"].shape == (2, 8, 8, 1) and saved["arr_1"].tolist() == [1, 2]
    # N of each label listed, a row per class (--per-class was ignored with --labels)
    assert main(["sample", "--model", str(out / "model"), "--labels", "1,2", "--per-class",
                 "3", "--steps", "2", "--out", str(tmp_path / "rows.png"), "--npz",
                 str(tmp_path / "rows.npz"), "--quiet", "--device", "cpu"]) == 0
    assert np.load(tmp_path / "rows.npz")["arr_1"].tolist() == [1, 1, 1, 2, 2, 2]
    from PIL import Image

    with Image.open(tmp_path / "rows.png") as grid:
        assert grid.width > 1.4 * grid.height  # 2 rows of 3
    capsys.readouterr()
    # settings out of range: one line that names them, before any work
    assert main(["sample", "--model", str(out / "model"), "--per-class", "0",
                 "--out", str(tmp_path / "none.png")]) == 2
    assert "--per-class 0: at least 1 image of each class" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()
    # an empty --labels (a script's unset variable) is no request for every class
    assert main(["sample", "--model", str(out / "model"), "--labels", " ",
                 "--out", str(tmp_path / "none.png")]) == 2
    assert "--labels is empty: name class ids or names" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()
    # the grid's suffix picks its format; one Pillow cannot write is refused before sampling
    assert main(["sample", "--model", str(out / "model"), "--labels", "1", "--steps", "2",
                 "--out", str(tmp_path / "g.jpg"), "--quiet", "--device", "cpu"]) == 0
    with Image.open(tmp_path / "g.jpg") as grid:
        assert grid.format == "JPEG"
    # the settings it sampled with: the family's guidance, not given here
    assert capsys.readouterr().out.strip() == f"1 sample (heun x 2, cfg 2) -> {tmp_path / 'g.jpg'}"
    assert main(["sample", "--model", str(out / "model"), "--out", str(tmp_path / "g.xyz")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"entpruner sample: error: cannot write an image grid to {tmp_path / 'g.xyz'}: Pillow "
        "writes no .xyz files; use .png (lossless), .jpg or .webp")
    assert main(["train", "--model", "no-such-model", "--batch-size", "0",
                 "--out", str(tmp_path / "t0")]) == 2
    assert capsys.readouterr().err.strip() == (
        "entpruner train: error: batch_size=0: must be at least 1")
    # a run that diverges stops with the fix, not a traceback
    assert main(["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads", "2",
                 "--steps", "20", "--batch-size", "8", "--lr", "1e30", "--quiet",
                 "--device", "cpu", "--out", str(tmp_path / "diverged")]) == 2
    assert capsys.readouterr().err.strip() == (
        "entpruner train: error: training loss is not finite; lower the learning rate or "
        "check the data for NaN")


def test_a_new_model_trained_twice_with_one_seed_is_the_same_model(tmp_path):
    from safetensors.torch import load_file

    runs = [tmp_path / name for name in ("a", "b")]
    for out in runs:
        assert main(["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads",
                     "2", "--steps", "2", "--batch-size", "4", "--out", str(out), "--quiet",
                     "--device", "cpu", "--no-keep-checkpoint"]) == 0
    a, b = (load_file(out / "model" / "model.safetensors") for out in runs)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_sample_takes_the_sit_reference_sampler_flags(tmp_path, capsys):
    import numpy as np

    from entpruner_sdk.objectives import objective_for
    from entpruner_sdk.sampling import sample
    from entpruner_sdk.teachers import resolve_model

    model = resolve_model("sit-digits")
    common = ["sample", "--model", "sit-digits", "--labels", "1,2", "--cfg", "2", "--quiet",
              "--device", "cpu", "--out", str(tmp_path / "grid.png")]
    for sampler, steps, flags, settings in (
            ("dopri5", 250, ["--atol", "1e-2", "--rtol", "1e-2"], dict(atol=1e-2, rtol=1e-2)),
            ("heun-sde", 5, ["--diffusion-norm", "0.5", "--last-step-size", "0.1"],
             dict(diffusion_norm=0.5, last_step_size=0.1)),
            # the reference's spelling, and its --last-step None
            ("euler-maruyama", 5, ["--diffusion-form", "SBDM", "--last-step", "None"],
             dict(diffusion_form="SBDM", last_step=None))):
        npz = tmp_path / f"{sampler}.npz"
        assert main([*common, "--sampler", sampler, "--steps", str(steps), *flags,
                     "--npz", str(npz)]) == 0
        got = np.load(npz)["arr_0"]
        run = dict(sampler=sampler, steps=steps, cfg_scale=2.0, clip_denoised=True)
        tuned = objective_for(model).with_sampler_settings(**settings)
        assert np.array_equal(got, saved_pixels(sample(model, [1, 2], objective=tuned, **run)))
        assert not np.array_equal(got, saved_pixels(sample(model, [1, 2], **run)))
    said = capsys.readouterr().out  # the settings used: dopri5's steps are a cap
    assert "2 samples (dopri5 up to 250 steps, cfg 2) -> " in said
    assert "2 samples (heun-sde x 5, cfg 2) -> " in said
    # a setting the sampler does not use is refused, not ignored
    assert main([*common, "--atol", "1e-3"]) == 2
    assert "atol sets only dopri5, not heun: drop it or change the sampler" in (
        capsys.readouterr().err)
    assert main([*common, "--model", "dit-digits", "--diffusion-norm", "0"]) == 2
    assert "DIT sampling has no setting diffusion_norm" in capsys.readouterr().err
    assert main([*common, "--sampler", "heun-sde", "--last-step", "None",
                 "--last-step-size", "0.1"]) == 2
    assert "last_step None takes none: drop one of them" in capsys.readouterr().err
    assert main([*common, "--sampler", "heun-sde", "--diffusion-form", "vp"]) == 2
    assert "unknown SDE diffusion_form 'vp'; choose one of constant, SBDM" in (
        capsys.readouterr().err)


def test_sample_makes_many_images_a_batch_at_a_time(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from entpruner_sdk.sampling import sample

    # three images two at a time: batch b seeded SEED + b; the --npz name kept as given
    npz = tmp_path / "samples"
    assert main(["sample", "--model", "dit-digits", "--labels", "1,2,3", "--steps", "2",
                 "--seed", "5", "--batch-size", "2", "--out", str(tmp_path / "g.png"),
                 "--npz", str(npz), "--quiet", "--device", "cpu"]) == 0
    run = dict(steps=2, clip_denoised=True, device="cpu")
    expected = torch.cat([sample("dit-digits", [1, 2], seed=5, **run),
                          sample("dit-digits", [3], seed=6, **run)])
    assert np.array_equal(np.load(npz)["arr_0"], saved_pixels(expected))
    # one batch is sample() with the seed itself, as before batches existed
    assert main(["sample", "--model", "dit-digits", "--labels", "1,2,3", "--steps", "2",
                 "--seed", "5", "--out", str(tmp_path / "one.png"), "--npz",
                 str(tmp_path / "one.npz"), "--quiet", "--device", "cpu"]) == 0
    assert np.array_equal(np.load(tmp_path / "one.npz")["arr_0"],
                          saved_pixels(sample("dit-digits", [1, 2, 3], seed=5, **run)))
    with Image.open(tmp_path / "one.png") as grid:  # 8-pixel digits shown 4x: 4 * (3 * 9 + 1)
        assert grid.size == (112, 40)
    capsys.readouterr()
    # the grid previews at most --grid-max images, in whole rows of a class; the .npz has all
    assert main(["sample", "--model", "dit-digits", "--labels", "1,2,3", "--per-class", "2",
                 "--steps", "2", "--grid-max", "5", "--out", str(tmp_path / "cut.png"), "--npz",
                 str(tmp_path / "all.npz"), "--quiet", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().endswith(
        f"(the grid shows the first 4; all are in {tmp_path / 'all.npz'})")
    assert len(np.load(tmp_path / "all.npz")["arr_0"]) == 6
    # ADM's layout, as evaluate --save-samples writes it: data to train on or measure against
    assert load_data(tmp_path / "all.npz").labels.tolist() == [1, 1, 2, 2, 3, 3]
    with Image.open(tmp_path / "cut.png") as grid:  # 2 rows of 2
        assert grid.size == (4 * (2 * 9 + 1), 4 * (2 * 9 + 1))
    for flag in ("--batch-size", "--grid-max"):
        assert main(["sample", "--model", "dit-digits", flag, "0",
                     "--out", str(tmp_path / "none.png")]) == 2
        assert f"{flag} 0: at least 1 image" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_sample_npz_continues_from_its_finished_batches(tmp_path, capsys,
                                                                       monkeypatch, request):
    import numpy as np

    from entpruner_sdk import sampling

    def command(npz, *flags):
        return ["sample", "--model", "sit-digits", "--labels", "1,2,3,4,5", "--steps", "2",
                "--sampler", "euler-maruyama", "--batch-size", "2", "--out",
                str(tmp_path / "g.png"), "--quiet", "--device", "cpu", *flags,
                *(["--npz", str(tmp_path / npz)] if npz else [])]

    assert main(command("whole.npz")) == 0
    real, made, crash_at = sampling.sample_batch_at, [], [3]

    def interrupted(model, labels, batch_size, index, **settings):  # the real one, stopped
        made.append(index)
        if len(made) in crash_at:
            raise KeyboardInterrupt
        return real(model, labels, batch_size, index, **settings)

    monkeypatch.setattr(sampling, "sample_batch_at", interrupted)
    capsys.readouterr()
    assert main(command("resumed.npz")) == 130  # in the last of three batches
    kept = tmp_path / "sampling-in-progress"
    assert capsys.readouterr().err.strip() == (
        f"entpruner sample: interrupted; {kept} holds 2 finished sample batches: run the same "
        "command to continue from them")
    assert not (tmp_path / "resumed.npz").exists()
    # the same command started twice: the second is refused while the first holds the folder
    (folder,) = kept.glob("resumed-npz-*")
    holder = holding(folder, request)
    made.clear()
    crash_at.clear()
    assert main(command("resumed.npz")) == 2 and made == []
    assert capsys.readouterr().err.strip() == (
        f"entpruner sample: error: {folder} is in use: another process is making these same "
        "samples right now (the same command, started twice?). Let it finish, or stop it and "
        "run this again, which continues from the batches it finished")
    # other settings never take them: another seed makes every batch, and leaves them alone;
    # a folder another process is filling is its work in progress, not left behind
    assert main(command("other.npz", "--seed", "1")) == 0 and made == [0, 1, 2]
    assert "note:" not in capsys.readouterr().err
    holder.kill()  # as a crash would: the OS frees its claim, and nothing stale is left
    holder.wait()
    note_unfinished_runs(kept, "sample --npz run")
    assert re.fullmatch(
        rf"note: {re.escape(str(kept))} still holds the sample batches of 1 sample --npz run\(s\) "
        r"that did not finish, with other models or settings \([\d.]+ k?B\): the command that "
        r"started one continues from them; delete the folder if none will run again",
        capsys.readouterr().err.strip())
    with np.load(tmp_path / "whole.npz") as whole, np.load(tmp_path / "other.npz") as other:
        assert not np.array_equal(whole["arr_0"], other["arr_0"])
    (damaged,) = kept.glob("resumed-npz-*/batch_00001.safetensors")
    damaged.write_bytes(b"not a safetensors file")  # a disk fault: made again, not trusted
    made.clear()
    capsys.readouterr()
    assert main(command("resumed.npz")) == 0
    assert made == [1, 2]
    assert capsys.readouterr().out.splitlines()[-1] == (
        "1 of the 3 batches were those an interrupted run had finished")
    with np.load(tmp_path / "whole.npz") as whole, np.load(tmp_path / "resumed.npz") as resumed:
        assert np.array_equal(whole["arr_0"], resumed["arr_0"])  # noisy steps: seeds matter
        assert whole["arr_1"].tolist() == resumed["arr_1"].tolist() == [1, 2, 3, 4, 5]
    assert not kept.exists()  # gone once the file is written
    # a grid alone keeps nothing, and says so
    crash_at.append(len(made) + 1)
    assert main(command(None)) == 130
    assert capsys.readouterr().err.strip() == (
        "entpruner sample: interrupted; a grid alone keeps nothing; with --npz F the finished "
        "batches are kept")


def test_sample_compiled_makes_the_eager_samples(tmp_path):
    import numpy as np

    from entpruner_sdk.models.io import save

    model = save(randomized(DiffusionTransformer(tiny_config("sit", depth=2))), tmp_path / "m")
    run = ["sample", "--model", str(model), "--labels", "1,2,3", "--steps", "3", "--cfg", "2",
           "--batch-size", "2", "--sampler", "heun", "--quiet", "--device", "cpu"]
    for name, flags in (("eager", []), ("compiled", ["--compile", "default"])):
        assert main([*run, *flags, "--out", str(tmp_path / f"{name}.png"),
                     "--npz", str(tmp_path / f"{name}.npz")]) == 0
    eager, compiled = (np.load(tmp_path / f"{name}.npz")["arr_0"].astype(int)
                       for name in ("eager", "compiled"))
    # 8-bit pixels: a float difference of 1e-5 may still round a pixel one level apart
    assert np.abs(compiled - eager).max() <= 1 and (compiled != eager).mean() < 0.01


def test_a_grid_shows_large_samples_as_they_are_and_small_ones_larger(tmp_path):
    from PIL import Image

    from entpruner_sdk.sampling import save_grid

    for size, shown in ((8, 4 * 8), (64, 2 * 64), (256, 256)):
        save_grid(torch.zeros(1, 3, size, size), tmp_path / f"{size}.png")
        with Image.open(tmp_path / f"{size}.png") as grid:  # one pixel of border each side
            assert grid.size == (shown + 2 * shown // size, shown + 2 * shown // size)


def test_a_folder_of_mixed_sizes_trains_at_image_size(tmp_path, capsys):
    from tests.test_data import write_folder

    write_folder(tmp_path / "mixed", sizes=((12, 12), (20, 14)))
    train = ["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads", "2",
             "--data", str(tmp_path / "mixed"), "--steps", "1", "--batch-size", "4",
             "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]
    assert main(train) == 2
    assert "--image-size N" in capsys.readouterr().err
    assert main([*train, "--image-size", "8"]) == 0
    assert main(["info", "--model", str(tmp_path / "run" / "model")]) == 0
    assert "input 3x8x8  classes 2" in capsys.readouterr().out


def test_train_sizes_a_registry_model_as_told_and_a_trained_one_refuses_a_size(tmp_path):
    import entpruner_sdk as ep

    assert main(["train", "--model", "DiT-S/2", "--depth", "2", "--hidden", "32", "--heads",
                 "2", "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "small"),
                 "--quiet", "--device", "cpu"]) == 0
    config = ep.load(tmp_path / "small" / "model").config  # DiT-S/2 at that size
    assert (config.depth, config.hidden_size, config.num_heads, config.patch_size) == (
        2, 32, 2, 2)
    with pytest.raises(SystemExit, match="--depth sizes a new model, and dit-digits is a "
                                         "trained one, fine-tuned at its own size"):
        main(["train", "--model", "dit-digits", "--depth", "2", "--steps", "1", "--out",
              str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_train_fine_tunes_on_another_class_count_with_the_option(tmp_path, capsys):
    import numpy as np

    from entpruner_sdk.data import load_data

    digits = load_data("digits")
    keep = (digits.labels < 3).numpy()
    np.savez(tmp_path / "three.npz", images=digits.images.numpy()[keep],
             labels=digits.labels.numpy()[keep])
    base = ["--steps", "1", "--batch-size", "4", "--quiet", "--device", "cpu"]
    main(["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads", "2",
          "--out", str(tmp_path / "ten"), *base])
    fine_tune = ["train", "--model", str(tmp_path / "ten" / "model"), "--data",
                 str(tmp_path / "three.npz"), "--out", str(tmp_path / "three"), *base]
    assert main(fine_tune) == 2
    assert "has 3 classes but the model has 10; resize" in capsys.readouterr().err
    assert main([*fine_tune, "--num-classes", "3"]) == 0
    assert main(["info", "--model", str(tmp_path / "three" / "model")]) == 0
    assert "classes 3" in capsys.readouterr().out


def test_the_projects_warnings_are_one_line_naming_the_command(tmp_path, capsys):
    """Python's form named our file and line and echoed a line of our source."""
    import warnings

    before = warnings.showwarning
    assert main(["sample", "--model", "sit-digits", "--labels", "1", "--sampler", "heun-sde",
                 "--steps", "5", "--quiet", "--device", "cpu",
                 "--out", str(tmp_path / "grid.png")]) == 0
    err = capsys.readouterr().err
    assert "entpruner sample: warning: heun-sde x 5 with diffusion_form sigma" in err
    assert "RuntimeWarning" not in err and ".py:" not in err
    assert warnings.showwarning is before  # put back for whatever runs next in the process


def test_released_checkpoints_take_family_and_head_count(tmp_path, capsys):
    model = randomized(DiffusionTransformer(tiny_config("sit", hidden_size=64, num_heads=2)))
    torch.save(model.state_dict(), tmp_path / "released.pt")
    for command in ("info", "sample", "evaluate", "export", "serve", "compress"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--num-heads" in capsys.readouterr().out, command
    assert main(["info", "--model", str(tmp_path / "released.pt"), "--family", "sit",
                 "--num-heads", "2"]) == 0
    assert "SIT  depth 4  hidden 64  heads 2" in capsys.readouterr().out


def test_info_prints_json(tmp_path, capsys):
    main(["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads", "2",
          "--steps", "1", "--batch-size", "4", "--out", str(tmp_path), "--quiet",
          "--device", "cpu"])
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "model"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "dit" and info["config"]["depth"] == 2
    assert info["provenance"]["kept_blocks"] == [0, 1]
    # what it samples with, as the server lists it, the family's defaults named
    assert info["samplers"] == ["ddpm", "ddim", "dpm-solver++"]
    assert info["defaults"] == {"sampler": "ddim", "steps": 50, "cfg_scale": 2.0}
    assert main(["info", "--model", str(tmp_path / "model")]) == 0
    assert ("\nsamplers ddim (default: 50 steps, cfg 2), ddpm, dpm-solver++\n"
            in capsys.readouterr().out)


def test_info_says_how_a_compressed_model_was_made(tmp_path, capsys):
    from entpruner_sdk.compress import compress

    result = compress(randomized(DiffusionTransformer(tiny_config("dit", depth=4))), "digits",
                      2, steps=4, batch_size=4, interval=2, calibration_per_class=2,
                      calibration_times=2, proxy_samples=4, report_samples=0,
                      progress=False, device="cpu")
    result.save(tmp_path)
    assert main(["info", "--model", str(tmp_path / "model")]) == 0
    removed = sorted({0, 1, 2, 3} - set(result.model.kept_blocks))
    printed = capsys.readouterr().out
    assert (f"kept blocks {result.model.kept_blocks}\ncompressed to keep 2 blocks by ced "
            f"(adaptive) on digits-train in 4 fine-tuning steps; removed blocks {removed}\n"
            "sampling speedup ") in printed
    latency = result.report["summary"]["sampling_latency"]
    assert f"sampling speedup {latency['speedup']:.2f}x (" in printed
    assert repr(result) == (f"CompressResult(DIT 4 -> 2 blocks, kept {result.model.kept_blocks}, "
                            f"keep 2 blocks by ced, sampling speedup {latency['speedup']:.2f}x)")
    # the saved result reads back whole: the same report and the same weights
    from entpruner_sdk import CompressResult

    loaded = CompressResult.load(tmp_path)
    assert loaded.report == json.loads(json.dumps(result.report)) and repr(loaded) == repr(result)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 result.model.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="is not a compress output"):
        CompressResult.load(tmp_path / "model")
    assert "quality of" not in printed  # report_samples=0: no figures to show
    assert main(["info", "--model", str(tmp_path / "model"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compression"]["steps"] == 4
    # its export carries the same summary: info of the export says how it was made too
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "onnx",
                 "--out", str(tmp_path / "onnx"), "--no-check", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "onnx")]) == 0
    from_export = capsys.readouterr().out
    assert from_export.startswith(printed.split("\nexport:")[0]) and "export: onnx" in from_export
    assert main(["info", "--model", str(tmp_path / "onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compression"] == result.report["summary"]


def test_a_compressed_model_records_its_original(tmp_path, capsys):
    from entpruner_sdk.models.io import save
    from entpruner_sdk.training import model_identity

    teacher = randomized(DiffusionTransformer(tiny_config("dit", depth=4)))
    save(teacher, tmp_path / "teacher")
    quick = ["--steps", "4", "--interval", "2", "--batch-size", "4", "--calibration-per-class",
             "2", "--calibration-times", "2", "--report-samples", "0", "--quiet", "--device",
             "cpu"]
    assert main(["compress", "--model", str(tmp_path / "teacher"), "--budget", "3", *quick,
                 "--out", str(tmp_path / "run")]) == 0
    made = ep.load(tmp_path / "run" / "model").provenance["compression"]["original"]
    assert made == {"source": str((tmp_path / "teacher").resolve()),
                    "model": model_identity(teacher)}
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "run" / "model")]) == 0
    assert f"compressed from {made['source']} to keep 3 blocks by ced" in capsys.readouterr().out
    # compressed again, it keeps its lineage: each compression back to the first
    assert main(["compress", "--model", str(tmp_path / "run"), "--budget", "2", *quick,
                 "--importance", "bi", "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "again")]) == 0
    said = capsys.readouterr().out
    assert (f"compressed from {(tmp_path / 'run').resolve()} to keep 2 blocks by bi" in said
            and f"  before that: compressed from {made['source']} to keep 3 blocks by ced"
            in said)
    assert ep.load(tmp_path / "again").kept_blocks == [0, 3]  # the teacher's indices
    assert ep.load_teacher("dit-digits").loaded_from == "dit-digits"  # a teacher, by name


def test_a_full_disk_is_one_line_that_says_what_was_kept(tmp_path, capsys, monkeypatch):
    import errno

    from entpruner_sdk.compress import runner

    real, saves = runner.save_checkpoint, []

    def disk_fills_up(directory, tensors, meta):
        saves.append(meta["step"])
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        real(directory, tensors, meta)

    monkeypatch.setattr(runner, "save_checkpoint", disk_fills_up)
    out = tmp_path / "run"
    assert main(["compress", "--model", "dit-digits", "--budget", "10", "--steps", "6",
                 "--interval", "2", "--batch-size", "4", "--calibration-per-class", "2",
                 "--calibration-times", "2", "--checkpoint-every", "2", "--report-samples",
                 "0", "--out", str(out), "--quiet", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"entpruner compress: error: [Errno 28] No space left on device: "
                            f"'{out / 'checkpoint'}'; {out / 'checkpoint'} holds step "
                            f"{saves[0]}: run the same command with --resume")
    assert "Traceback" not in error


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "nope.pt"), "--family", "dit"]) == 2
    assert "nor an existing file or folder" in capsys.readouterr().err
    assert main(["train", "--model", "DiT-S/2", "--data", str(tmp_path / "x"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "neither a bundled dataset" in capsys.readouterr().err


def test_evaluate_command_writes_json_and_markdown(tmp_path, capsys):
    main(["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads", "2",
          "--steps", "1", "--batch-size", "4", "--out", str(tmp_path), "--quiet",
          "--device", "cpu"])
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--samples", "20",
                 "--steps", "2", "--features", "domain", "--out", str(tmp_path / "eval"),
                 "--quiet", "--device", "cpu", "--save-samples", "--likelihood", "4",
                 "--likelihood-steps", "10"]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["settings"]["samples"] == 20 and "fd_domain" in report["metrics"]
    assert report["likelihood"]["images"] == 4 and report["likelihood"]["bits_per_dim"][
        "mean"] > 0 and "variational bound over 10 timesteps" in report["likelihood"]["method"]
    printed = capsys.readouterr().out
    assert "| class_accuracy |" in printed and "| this model |" in printed
    # the samples in ADM's format, and no batches left behind once the evaluation ended
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "evaluation.json", "evaluation.md", "samples.npz"]
    assert len(load_data(tmp_path / "eval" / "samples.npz")) == 20
    assert "note:" not in capsys.readouterr().err
    # batches an unfinished evaluation with other settings left in the same --out stay for
    # its rerun, and a finished evaluation says they are there and what room they take
    other = tmp_path / "eval" / "sampling-in-progress" / "model-0123"
    other.mkdir(parents=True)
    (other / "batch_00000.safetensors").write_bytes(bytes(1500))
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--samples", "4",
                 "--steps", "2", "--features", "domain", "--out", str(tmp_path / "eval"),
                 "--quiet", "--device", "cpu", "--original", str(tmp_path / "model")]) == 0
    printed = capsys.readouterr()
    assert (f"note: {other.parent} still holds the sample batches of 1 evaluation(s) that did "
            "not finish, with other models or settings (1.5 kB)") in printed.err
    # with --original, its figures beside the model's (here the model itself: ratio 1)
    assert "| metric | original | this model | ratio to original |" in printed.out
    assert "| 1.000x |" in printed.out.split("| fd_domain |")[1].splitlines()[0]
    assert [p.name for p in other.parent.iterdir()] == ["model-0123"]
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--features", "lpips",
                 "--samples", "4", "--out", str(tmp_path / "e2")]) == 2
    assert "unknown feature spaces" in capsys.readouterr().err


def test_evaluate_compares_a_model_with_the_data_it_was_compressed_or_trained_on(tmp_path,
                                                                                 capsys):
    from tests.test_data import write_folder

    write_folder(tmp_path / "shop", sizes=((12, 12), (20, 14)), per_class=4)
    run = ["--quiet", "--device", "cpu"]
    assert main(["train", "--family", "dit", "--depth", "3", "--hidden", "32", "--heads", "2",
                 "--data", str(tmp_path / "shop"), "--image-size", "8", "--steps", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "t"), *run]) == 0
    assert main(["compress", "--model", str(tmp_path / "t" / "model"), "--data",
                 str(tmp_path / "shop"), "--image-size", "8", "--budget", "2", "--steps", "2",
                 "--batch-size", "4", "--calibration-per-class", "2", "--calibration-times",
                 "2", "--report-samples", "0", "--out", str(tmp_path / "c"), *run]) == 0
    capsys.readouterr()
    # no --data: the folder it was fine-tuned on, read at the size it was read at then (the
    # default, digits, is 1x8x8 and 10 classes: this model could not be compared with it)
    evaluate = ["evaluate", "--model", str(tmp_path / "c"), "--samples", "4", "--steps", "2",
                "--features", "domain", "--out", str(tmp_path / "e"), *run]
    assert main(evaluate) == 0
    assert (f"comparing with {(tmp_path / 'shop').resolve()}, image_size 8: the data "
            f"{tmp_path / 'c'} was compressed on") in capsys.readouterr().out
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["settings"]["reference"] == "shop" and report["class_names"] == ["a", "b"]
    # the model it was compressed from, with the data it was trained on
    assert main([*evaluate[:2], str(tmp_path / "t" / "model"), *evaluate[3:]]) == 0
    assert (f"comparing with {(tmp_path / 'shop').resolve()}, image_size 8: the data "
            f"{tmp_path / 't' / 'model'} was trained on") in capsys.readouterr().out
    (tmp_path / "shop").rename(tmp_path / "moved")
    assert main(evaluate) == 2
    assert (f"was compressed on {(tmp_path / 'shop').resolve()}, image_size 8, which is not "
            "there any more: pass --data") in capsys.readouterr().err
    assert main([*evaluate, "--data", str(tmp_path / "moved"), "--image-size", "8"]) == 0
    assert "comparing with" not in capsys.readouterr().out  # the data asked for, as it is
    # a bundled teacher, with the dataset it is named for (not digits)
    assert main(["evaluate", "--model", "dit-photos", "--samples", "8", "--steps", "2",
                 "--features", "domain", "--reference-size", "16", "--out",
                 str(tmp_path / "teacher"), *run]) == 0
    report = json.loads((tmp_path / "teacher" / "evaluation.json").read_text())
    assert report["settings"]["reference"] == "photos16-train"


def test_a_hugging_face_dataset_saved_to_disk_is_data_for_every_command(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["ant", "bee"])})
    table = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
                   for _ in range(8)], "label": [0, 1] * 4}, features=features)
    # as load_dataset finds it by name (hf:NAME; here a folder of its files, as on the Hub)
    (tmp_path / "insects").mkdir()
    table.to_parquet(str(tmp_path / "insects" / "train.parquet"))
    table.select(range(4)).to_parquet(str(tmp_path / "insects" / "test.parquet"))
    run = ["--quiet", "--device", "cpu"]
    spec = f"hf:{tmp_path / 'insects'}"
    assert main(["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads", "2",
                 "--data", spec, "--split", "test", "--image-size", "8", "--steps", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "t"), *run]) == 0
    model = ep.load(tmp_path / "t" / "model")
    assert model.provenance["class_names"] == ["ant", "bee"]  # the ClassLabel's names
    capsys.readouterr()
    # evaluate, told no data, compares with the split it was trained on, read as then
    evaluate = ["evaluate", "--model", str(tmp_path / "t" / "model"), "--samples", "4",
                "--steps", "2", "--features", "domain", "--out", str(tmp_path / "e"), *run]
    assert main(evaluate) == 0
    assert (f"comparing with {spec}, split test, image_size 8: the data "
            f"{tmp_path / 't' / 'model'} was trained on") in capsys.readouterr().out
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["settings"]["reference"] == "insects-test"
    assert report["settings"]["reference_size"] == 4
    # saved with save_to_disk: a folder --data takes as a dataset, not as class folders
    datasets.DatasetDict({"train": table, "test": table.select(range(6))}).save_to_disk(
        str(tmp_path / "saved"))
    assert main([*evaluate, "--data", str(tmp_path / "saved"), "--split", "test",
                 "--image-size", "8"]) == 0
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["settings"]["reference"] == "saved-test"
    assert report["settings"]["reference_size"] == 6


def test_compress_command(tmp_path, capsys):
    main(["train", "--family", "dit", "--depth", "4", "--hidden", "32", "--heads", "2",
          "--steps", "2", "--batch-size", "4", "--gradient-accumulation", "2",
          "--gradient-checkpointing", "--out", str(tmp_path / "t"), "--quiet", "--device", "cpu"])
    training = ep.load(tmp_path / "t" / "model").metadata["training"]
    assert training["gradient_accumulation"] == 2 and training["gradient_checkpointing"]
    assert main(["compress", "--model", str(tmp_path / "t" / "model"), "--budget", "2",
                 "--steps", "6", "--batch-size", "4", "--interval", "2",
                 "--gradient-accumulation", "4", "--gradient-checkpointing",
                 "--calibration-per-class", "2", "--calibration-times", "2",
                 "--report-samples", "8", "--report-likelihood", "2",
                 "--prune-fraction", "0.5", "--ced-output", "clipped",
                 "--ced-weighting", "normalized", "--no-keep-checkpoint",
                 "--out", str(tmp_path / "c"), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "depth 4 -> 2" in out and (tmp_path / "c" / "report.json").exists()
    assert re.search(r"sampling speedup [\d.]+x \([\d.]+-[\d.]+ over 5 rounds\) on cpu", out)
    summary = json.loads((tmp_path / "c" / "report.json").read_text())["summary"]
    before, after = summary["quality_original"], summary["quality_pruned"]
    assert (f"quality of 8 samples (ddim x 50, cfg 2.0): class accuracy "
            f"{before['class_accuracy']:.4f} -> {after['class_accuracy']:.4f}, FD-domain "
            f"{before['fd_domain']:.4f} -> {after['fd_domain']:.4f}, PSNR to the original "
            f"{after['psnr']:.2f} dB") in out
    quality = next(line for line in out.splitlines() if line.startswith("quality of"))
    assert main(["info", "--model", str(tmp_path / "c")]) == 0  # kept with the model
    assert quality in capsys.readouterr().out
    # evaluate, told nothing of sampling or data, measures as the report did: its figures
    assert main(["evaluate", "--model", str(tmp_path / "c"), "--samples", "8", "--features",
                 "domain", "--out", str(tmp_path / "e"), "--quiet", "--device", "cpu"]) == 0
    evaluated = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert {k: evaluated["settings"][k] for k in ("sampler", "steps", "cfg_scale")} == {
        "sampler": "ddim", "steps": 50, "cfg_scale": 2.0}
    for name in ("class_accuracy", "fd_domain"):
        assert evaluated["metrics"][name] == pytest.approx(after[name], rel=1e-6)
    likelihood = summary["likelihood"]
    assert (f"bits per dimension of 2 real images: "
            f"{likelihood['original_bits_per_dim']['mean']:.4f} -> "
            f"{likelihood['bits_per_dim']['mean']:.4f} (paired difference "
            f"{likelihood['difference']['mean']:+.4f} +- ") in out
    # the result stays, the checkpoint (and any copy a save in flight left) does not
    assert ep.load(tmp_path / "c" / "model").depth == 2
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "importance.png", "loss.png", "model", "report.json", "report.md"]
    settings = json.loads((tmp_path / "c" / "report.json").read_text())["settings"]
    assert settings["schedule"]["prune_fraction"] == 0.5 and settings["ced_output"] == "clipped"
    assert settings["ced_weighting"] == "normalized"
    assert settings["gradient_accumulation"] == 4 and settings["gradient_checkpointing"]
    assert main(["compress", "--model", str(tmp_path / "t" / "model"), "--budget", "9",
                 "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "keep between 2 and 3" in capsys.readouterr().err
    # text that is no budget is refused as the arguments are read, before the model is
    for budget, reason in (("half", "cannot read budget 'half'"),
                           ("1x", "a speedup budget must be above 1 (e.g. 2x), got 1x")):
        with pytest.raises(SystemExit):
            main(["compress", "--model", str(tmp_path / "missing"), "--budget", budget,
                  "--out", str(tmp_path / "d")])
        assert f"argument --budget: {reason}" in capsys.readouterr().err
    # --protect: block indices, or none
    plan = ["compress", "--model", str(tmp_path / "t" / "model"), "--budget", "2",
            "--calibration-per-class", "2", "--calibration-times", "2", "--dry-run", "--quiet",
            "--device", "cpu", "--out", str(tmp_path / "p")]
    for protect, protected in (("none", []), ("1", [1]), (None, [0, 3])):
        assert main(plan + (["--protect", protect] if protect else [])) == 0
        assert json.loads((tmp_path / "p" / "plan.json").read_text())["protected"] == protected
    with pytest.raises(SystemExit):
        main([*plan, "--protect", "0,x"])
    assert ("argument --protect: '0,x' is neither 'none' nor comma-separated block indices"
            in capsys.readouterr().err)


def test_ctrl_c_says_which_checkpoint_holds_the_work(tmp_path, capsys):
    import signal
    import time

    main(["train", "--family", "dit", "--depth", "4", "--hidden", "32", "--heads", "2",
          "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "t"), "--quiet",
          "--device", "cpu"])
    command = [sys.executable, "-m", "entpruner_sdk", "compress", "--model",
               str(tmp_path / "t" / "model"), "--budget", "2", "--steps", "100000",
               "--batch-size", "4", "--interval", "2", "--calibration-per-class", "2",
               "--calibration-times", "2", "--report-samples", "0", "--out",
               str(tmp_path / "c"), "--quiet", "--device", "cpu"]
    # a shell's background job (nohup ... &) starts with SIGINT ignored, and Python keeps
    # that; give the child the default so Ctrl-C reaches it however the tests were started
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = tmp_path / "c" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the first removal writes a checkpoint
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    error = process.communicate(timeout=60)[1]
    step = json.loads(state.read_text())["step"]
    assert process.returncode == 130 and "Traceback" not in error, error
    assert (f"entpruner compress: interrupted; {state.parent} holds step {step}: run the same "
            "command with --resume") in error
    # before the first checkpoint there is nothing to resume, and the message says so
    with pytest.MonkeyPatch.context() as patch:
        def interrupt(args):
            raise KeyboardInterrupt

        patch.setitem(COMMANDS, "train", interrupt)
        assert main(["train", "--family", "dit", "--depth", "2", "--hidden", "32", "--heads",
                     "2", "--out", str(tmp_path / "fresh")]) == 130
    assert capsys.readouterr().err.strip() == (
        "entpruner train: interrupted; no checkpoint was written yet, so running it again "
        "starts over")


def test_an_interrupted_evaluation_says_what_it_kept(tmp_path, capsys, monkeypatch):
    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, "evaluate", interrupt)
    command = ["evaluate", "--model", "dit-digits", "--out", str(tmp_path)]
    assert main(command) == 130
    assert capsys.readouterr().err.strip() == (
        "entpruner evaluate: interrupted; no sample batch was finished yet, so running it "
        "again starts over")
    for model, batches in (("model-0123", 3), ("original-4567", 1)):  # what evaluate leaves
        folder = tmp_path / "sampling-in-progress" / model
        folder.mkdir(parents=True)
        for b in range(batches):
            (folder / f"batch_{b:05d}.safetensors").write_bytes(b"")
    assert main(command) == 130
    assert capsys.readouterr().err.strip() == (
        f"entpruner evaluate: interrupted; {tmp_path / 'sampling-in-progress'} holds 4 "
        "finished sample batches: run the same command to continue from them")


def test_cache_lists_and_clears_its_parts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENTPRUNER_CACHE", str(tmp_path))
    for path, size in (("classifiers/digits-0123/classifier.safetensors", 1000),
                       ("vae-decoders/abc/vae_decoder.onnx", 2000),
                       ("vae-decoders/.abc.5f3e/vae_decoder.onnx", 500),  # a killed export's
                       ("old-stuff/x.bin", 10)):  # a folder of no known kind
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(bytes(size))
    assert main(["cache", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["root"] == str(tmp_path)
    parts = {part["kind"]: (part["entries"], part["bytes"]) for part in listed["parts"]}
    assert parts["classifiers"] == (1, 1000) and parts["vae-decoders"] == (1, 2500)
    assert parts["old-stuff"] == (1, 10) and parts["latents"] == (0, 0)
    assert main(["cache"]) == 0
    text = capsys.readouterr().out
    assert "vae-decoders      1 entries     2.5 kB  VAE decoders exported to ONNX" in text
    assert text.splitlines()[-1].split() == ["total", "3.5", "kB"]

    assert main(["cache", "--clear", "vae-decoders", "nonsense"]) == 2  # refused whole
    assert "no cache named nonsense; choose from classifiers," in capsys.readouterr().err
    assert (tmp_path / "vae-decoders").is_dir()
    assert main(["cache", "--clear", "vae-decoders", "latents"]) == 0
    assert capsys.readouterr().out.strip() == f"freed 2.5 kB from {tmp_path}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifiers", "old-stuff"]
    assert main(["cache", "--clear", "all"]) == 0
    assert capsys.readouterr().out.strip() == f"freed 1.0 kB from {tmp_path}"
    assert list(tmp_path.iterdir()) == []


def test_compress_dry_run_plans_without_fine_tuning(tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(["compress", "--model", "dit-digits", "--budget", "6", "--out", str(out),
                 "--dry-run", "--calibration-per-class", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Compression plan: DIT, keep 6 blocks")
    plan = json.loads((out / "plan.json").read_text())
    assert (out / "plan.md").read_text() in printed
    assert plan["depth_after"] == 6 and len(plan["kept_blocks"]) == 6 and plan["final"]
    assert f"compress with these settings keeps blocks {plan['kept_blocks']}." in printed
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "plan.md"]  # nothing else


@pytest.mark.slow
def test_the_main_job_compresses_both_teachers_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "quickstart"
    assert main(["quickstart", "--out", str(out), "--samples", "20", "--compress-steps", "6",
                 "--quiet", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["model"]: row for row in summary["rows"]}
    assert sorted(rows) == ["dit-digits", "dit-digits-pruned", "sit-digits", "sit-digits-pruned"]
    for name in ("dit-digits", "sit-digits"):
        teacher, pruned = rows[name], rows[f"{name}-pruned"]
        assert (teacher["depth"], pruned["depth"]) == (12, 6)
        assert pruned["parameters"] < teacher["parameters"] and pruned["gflops"] < teacher["gflops"]
        kept = pruned["extra"]["kept_blocks"]
        assert len(kept) == 6 and ep.load(out / f"{name}-pruned" / "model").kept_blocks == kept
        assert pruned["fidelity_psnr"] > 0 and teacher["fidelity_psnr"] is None
        # both sampled in one evaluation, batch by batch in turn: the speedup of their batches
        assert teacher["sample_seconds"] > 0 and pruned["extra"]["sampling_speedup"] > 0
        for row in (teacher, pruned):
            assert 0 <= row["class_accuracy"] <= 1 and row["fd_domain"] >= 0
            assert Path(row["grid"]).stat().st_size > 0
    # the trained digit classifier that judges the samples reads real held-out digits well
    assert summary["classifier_test_accuracy"] > 0.9
    printed = capsys.readouterr().out
    assert "teachers vs pruned on digits (20 samples each" in printed
    assert "sit-digits-pruned" in printed and "sampled batch by batch in turn" in printed


def test_env_says_what_this_machine_offers(capsys, monkeypatch):
    import importlib.util
    from importlib import metadata

    from entpruner_sdk.utils.device import computed_on

    monkeypatch.delenv("ENTPRUNER_AUTOCAST", raising=False)
    assert main(["env", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["entpruner_sdk"] == metadata.version("entpruner-sdk")
    assert found["torch"]["version"] == torch.__version__
    assert found["policy"] == {"variable": "ENTPRUNER_AUTOCAST", "value": None, "mode": "auto"}
    assert found["devices"][0]["device"] == "cpu" and found["devices"][0]["arithmetic"] == "fp32"
    # the CPU named as the checkpoints made on it record it ("x86_64 AVX2", say)
    assert found["devices"][0]["name"] == computed_on("cpu")["processor"]
    assert len(found["devices"]) == 1 + torch.cuda.device_count()
    assert {p["name"] for p in found["core"]} >= {"torch", "numpy", "safetensors"}
    assert all(p["ok"] for p in found["core"])  # this environment runs the suite
    # every extra pyproject declares is described, and "installed" is what imports here
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = {e["extra"]: e for e in found["extras"]}
    assert set(extras) == set(declared["project"]["optional-dependencies"]) - {"all"}
    for extra, module in (("onnx", "onnxscript"), ("tensorrt", "tensorrt"),
                          ("serve", "fastapi"), ("latent", "diffusers")):
        assert extras[extra]["installed"] == (importlib.util.find_spec(module) is not None)

    monkeypatch.setenv("ENTPRUNER_AUTOCAST", "bf16")
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert "devices (ENTPRUNER_AUTOCAST=bf16: bf16)" in text
    assert re.search(r"^  cpu     .*: bf16 autocast$", text, re.MULTILINE)
    assert f"core requirements: {len(found['core'])}, all met" in text
    assert "extras (pip install 'entpruner-sdk[NAME]'):" in text
    assert re.search(r"^  tensorrt  (installed|missing  )  TensorRT engines", text, re.MULTILINE)


def test_env_names_a_missing_or_too_old_package_and_a_source_tree(monkeypatch):
    from packaging.requirements import Requirement

    from entpruner_sdk.cli.env import _package, describe
    from entpruner_sdk.utils import environment

    old = environment.requirement_status(Requirement("numpy>=999"))
    assert (old["version"], old["ok"]) == (np_version(), False)
    assert _package(old) == f"numpy {np_version()} (needs >=999)"
    missing = environment.requirement_status(Requirement("no-such-entpruner-package>=1"))
    assert _package(missing) == "no-such-entpruner-package missing (>=1)"
    # run from a source tree on PYTHONPATH, the package has no metadata to read extras from
    monkeypatch.setattr(environment, "DISTRIBUTION", "entpruner-sdk-not-installed")
    lines = describe(environment.environment())
    assert lines[0].startswith("entpruner-sdk not installed (a source tree): pip install -e .")
    assert "extras: unknown without the package's metadata (pip install -e .)" in lines


def np_version() -> str:
    from importlib import metadata

    return metadata.version("numpy")
