import shutil

import pytest
import torch

import entpruner_sdk as ep
from entpruner_sdk.data import DataError, load_data
from entpruner_sdk.models import DiffusionTransformer, resize_classes
from entpruner_sdk.objectives import objective_for
from entpruner_sdk.training import (
    TrainConfig,
    accumulate_gradients,
    drop_labels,
    sample_batch,
    train,
)
from tests.conftest import randomized, tiny_config


def fresh(family="dit", **overrides):
    torch.manual_seed(0)
    return DiffusionTransformer(tiny_config(family, **overrides))


@pytest.mark.parametrize("family", ["dit", "sit"])
def test_training_lowers_the_loss(family):
    config = TrainConfig(steps=60, batch_size=32, lr=2e-3, log_every=20, ema_decay=0.99)
    result = train(fresh(family), "digits", config, device="cpu", progress=False)
    assert len(result.losses) == 60
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    ema, raw = result.ema.state_dict(), result.model.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if k != "pos_embed")


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    config = TrainConfig(steps=6, batch_size=8, lr=1e-3, checkpoint_every=3, log_every=2)
    full = train(fresh(), "digits", config, out_dir=tmp_path / "a", progress=False)
    interrupted = TrainConfig(**{**config.__dict__, "steps": 3})
    train(fresh(), "digits", interrupted, out_dir=tmp_path / "b", progress=False)
    resumed = train(fresh(), "digits", config, out_dir=tmp_path / "b", resume=True,
                    progress=False)
    for a, b in ((full.model, resumed.model), (full.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert full.losses == resumed.losses
    saved = ep.load(tmp_path / "b" / "model")
    assert all(torch.equal(v, resumed.ema.state_dict()[k]) for k, v in saved.state_dict().items())
    assert saved.metadata["training"]["steps"] == 6


def test_resume_needs_a_matching_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(fresh(), "digits", TrainConfig(steps=2, batch_size=4), out_dir=tmp_path,
              resume=True, progress=False)
    train(fresh(), "digits", TrainConfig(steps=2, batch_size=4), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="same model"):
        train(fresh(depth=3), "digits", TrainConfig(steps=4, batch_size=4), out_dir=tmp_path,
              resume=True, progress=False)


def test_resume_refuses_other_data_or_settings_and_a_new_run_keeps_the_checkpoint(tmp_path):
    config = TrainConfig(steps=4, batch_size=4, checkpoint_every=2)
    digits = load_data("digits")
    train(fresh(), digits, config, out_dir=tmp_path, progress=False)
    saved = (tmp_path / "checkpoint" / "state.json").read_text()
    # the same command without --resume would replace the run's checkpoint: refused
    with pytest.raises(FileExistsError, match=r"earlier run \(step 4\).*--resume"):
        train(fresh(), digits, config, out_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint" / "state.json").read_text() == saved
    with pytest.raises(ValueError, match=r"data was digits-train \(1537 images.*now "
                                         r"digits-train \(1536 images"):
        train(fresh(), digits.subset(range(1536)), config, out_dir=tmp_path, resume=True,
              progress=False)
    with pytest.raises(ValueError, match="settings.lr was 0.0001, now 0.001"):
        train(fresh(), digits, TrainConfig(**{**config.__dict__, "lr": 1e-3}),
              out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="at step 4, past steps=3"):
        train(fresh(), digits, TrainConfig(**{**config.__dict__, "steps": 3}),
              out_dir=tmp_path, resume=True, progress=False)
    # a new model's random start may differ: every weight comes from the checkpoint
    longer = TrainConfig(**{**config.__dict__, "steps": 6})
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "copy" / "checkpoint")
    a = train(fresh(), digits, longer, out_dir=tmp_path, resume=True, progress=False)
    b = train(randomized(fresh()), digits, longer, out_dir=tmp_path / "copy", resume=True,
              progress=False)
    assert a.losses == b.losses


def test_incompatible_data_is_refused():
    with pytest.raises(DataError, match="takes 1x8x8 inputs but photos16-train holds 3x16x16"):
        train(fresh(), load_data("photos", image_size=16), TrainConfig(steps=1), progress=False)
    with pytest.raises(DataError, match=r"resize the label embedder to the data's 10 classes "
                                        r"\(--num-classes 10 on train or compress"):
        train(fresh(num_classes=5), "digits", TrainConfig(steps=1), progress=False)
    # fewer classes too: evaluating or compressing on this data afterwards would refuse it
    with pytest.raises(DataError, match="has 10 classes but the model has 12; resize"):
        train(fresh(num_classes=12), "digits", TrainConfig(steps=1), progress=False)
    resized = resize_classes(fresh(num_classes=12), 10)
    assert resized.provenance["resized_classes"] == {"from": 12, "to": 10}
    train(resized, "digits", TrainConfig(steps=1, batch_size=4), progress=False)


def test_accumulated_gradients_are_the_whole_batchs():
    model = randomized(fresh())
    objective = objective_for(model)
    batch = objective.noise_batch(torch.randn(8, 1, 8, 8), torch.arange(8),
                                  torch.Generator().manual_seed(0))

    def loss_of(part):
        return objective.loss(model(part.x_t, part.t, part.y), part).mean()

    gradients = []
    for parts in (1, 2, 8):
        model.zero_grad()
        loss = accumulate_gradients(loss_of, batch, parts, model)
        gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        assert float(loss) == pytest.approx(float(loss_of(batch).detach()), rel=1e-5)
    for other in gradients[1:]:
        for whole, accumulated in zip(gradients[0], other):
            torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-5)


def test_memory_settings_train_the_same_model():
    config = TrainConfig(steps=4, batch_size=8, lr=1e-3)
    plain = train(fresh(), "digits", config, progress=False)
    for memory in (dict(gradient_accumulation=4), dict(gradient_accumulation=2,
                                                       gradient_checkpointing=True)):
        model = fresh()
        saved = train(model, "digits", TrainConfig(**{**config.__dict__, **memory}),
                      progress=False)
        torch.testing.assert_close(torch.tensor(saved.losses), torch.tensor(plain.losses))
        for name, value in plain.ema.state_dict().items():
            torch.testing.assert_close(saved.ema.state_dict()[name], value, rtol=1e-4,
                                       atol=1e-6)
        assert not model.gradient_checkpointing  # the caller's model is left as it was


def test_out_of_memory_names_the_settings_that_lower_it_checkpointing_first():
    batch = objective_for(fresh()).noise_batch(torch.zeros(8, 1, 8, 8), torch.zeros(8).long())

    def too_big(part):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. "
                                          "GPU 0 has a total capacity of 23.6 GiB")

    model = fresh()
    with pytest.raises(torch.cuda.OutOfMemoryError,
                       match=r"CUDA out of memory training on micro-batches of 4 images: "
                             r"recompute activations in backward \(gradient_checkpointing=True, "
                             r"--gradient-checkpointing; about 1.2x the time\), split each "
                             r"step's batch further \(gradient_accumulation=4, "
                             r"--gradient-accumulation 4\) or lower batch_size$"):
        accumulate_gradients(too_big, batch, 2, model)
    model.gradient_checkpointing = True  # already on: what is left to lower
    with pytest.raises(torch.cuda.OutOfMemoryError,
                       match=r"of 4 images: split each step's batch further "
                             r"\(gradient_accumulation=4, --gradient-accumulation 4\) or lower "
                             r"batch_size$"):
        accumulate_gradients(too_big, batch, 2, model)


def test_label_dropout_uses_the_null_class():
    y = torch.arange(1000) % 10
    dropped = drop_labels(y, 0.1, 10, torch.Generator().manual_seed(0))
    share = (dropped == 10).float().mean()
    assert 0.07 < share < 0.13 and torch.equal(dropped[dropped != 10], y[dropped != 10])


def test_flipped_batches_mirror_half_the_images_and_leave_plain_runs_as_they_were():
    data = load_data("digits")
    plain_generator, flip_generator = (torch.Generator().manual_seed(3) for _ in range(2))
    images, labels = sample_batch(data, 64, plain_generator, torch.device("cpu"))
    flipped, flip_labels = sample_batch(data, 64, flip_generator, torch.device("cpu"),
                                        hflip=True)
    assert torch.equal(labels, flip_labels)  # the same samples, some mirrored
    mirrored = [not torch.equal(a, b) and torch.equal(a.flip(-1), b)
                for a, b in zip(images, flipped)]
    unchanged = [torch.equal(a, b) for a, b in zip(images, flipped)]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and 16 < sum(mirrored) < 48
    # without hflip the generator draws only the indices, so earlier runs repeat exactly
    reference = torch.Generator().manual_seed(3)
    torch.randint(0, len(data), (64,), generator=reference)
    assert torch.equal(plain_generator.get_state(), reference.get_state())
    assert not torch.equal(data.images[0], data.images[0].flip(-1))  # the digits do mirror
    assert train(fresh(), data, TrainConfig(steps=2, batch_size=4, hflip=True),
                 progress=False).losses


def test_an_rgb_model_trains_on_gray_images():
    # a folder of gray pictures loads as one channel; a model that takes RGB sees each gray
    # value in all three channels, as a viewer shows the picture
    model = DiffusionTransformer(tiny_config(in_channels=3))
    result = train(model, "digits", TrainConfig(steps=2, batch_size=4), device="cpu",
                   progress=False)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.parametrize("setting, named", [
    (dict(batch_size=0), "batch_size=0: must be at least 1"),
    (dict(steps=0), "steps=0: must be at least 1"),
    (dict(checkpoint_every=0), "checkpoint_every=0: must be at least 1"),
    (dict(lr=0.0), "lr=0.0: the learning rate must be positive"),
    (dict(ema_decay=1.0), r"ema_decay=1.0: must be in \[0, 1\)"),
    (dict(gradient_accumulation=0), "gradient_accumulation=0: must be at least 1"),
    (dict(batch_size=8, gradient_accumulation=3), "batch_size 8 does not split into 3 equal "
                                                  "micro-batches; use a multiple of 3"),
])
def test_settings_out_of_range_are_refused_when_made(setting, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(**setting)
