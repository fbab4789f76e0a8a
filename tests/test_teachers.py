"""The bundled teachers really generate their classes."""

import pytest
import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation.classifier import class_accuracy, domain_classifier
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import DEFAULT_TEACHERS, SAMPLING, as_model, load_teacher
from tests.conftest import randomized, tiny_config


@pytest.mark.parametrize("name", DEFAULT_TEACHERS)
def test_teacher_samples_are_recognised_as_their_class(name):
    teacher = load_teacher(name)
    assert teacher.depth >= 12 and teacher.family == name.split("-")[0]
    assert "training_command" in teacher.provenance
    classifier = domain_classifier(load_data("digits"))
    labels = torch.arange(10).repeat_interleave(10)
    images = sample(teacher, labels, seed=1, device="cpu", clip_denoised=True,
                    **SAMPLING[teacher.family])
    assert class_accuracy(classifier, images, labels) >= 0.9


def test_unknown_teacher_is_named():
    with pytest.raises(ValueError, match="bundled teachers"):
        load_teacher("dit-imagenet")


@pytest.mark.parametrize("name", ["dit-photos", "sit-photos"])
def test_photos_teachers_fit_the_photos_data(name):
    from entpruner_sdk.data.datasets import check_fits

    teacher = load_teacher(name)
    assert teacher.depth == 12 and teacher.pos_embed.dtype == torch.float32
    check_fits(teacher.config, load_data("photos"), exact_classes=True)


def test_a_misspelt_teacher_name_is_answered_with_the_names(tmp_path):
    from entpruner_sdk.models.io import CheckpointError

    with pytest.raises(CheckpointError) as raised:
        sample("dit-digts", [1], steps=1)
    assert str(raised.value) == (
        "dit-digts is neither a bundled teacher (dit-digits, sit-digits, dit-photos, "
        "sit-photos) nor an existing file or folder; did you mean dit-digits?")
    with pytest.raises(CheckpointError, match="folder; pass a checkpoint file or a model dir"):
        sample(str(tmp_path / "runs" / "model"), [1], steps=1)


def test_every_verb_takes_a_model_by_name_or_path_and_refuses_other_modules(tmp_path):
    from entpruner_sdk import DiffusionTransformer, TrainConfig, compress, evaluate, plan, train
    from entpruner_sdk.export import export
    from entpruner_sdk.models.io import from_state_dict, save

    teacher = load_teacher("sit-digits")
    labels = [3, 7]
    by_object = sample(teacher, labels, steps=2, seed=5)
    assert torch.equal(sample("sit-digits", labels, steps=2, seed=5), by_object)
    save(teacher, tmp_path / "model")
    assert torch.equal(sample(tmp_path / "model", labels, steps=2, seed=5), by_object)
    options = dict(calibration_per_class=2, calibration_times=2, proxy_samples=4)
    assert plan("sit-digits", "digits", 6, **options).removed_blocks == plan(
        teacher, "digits", 6, **options).removed_blocks
    report = evaluate(str(tmp_path / "model"), "digits", samples=10, steps=2,
                      features=("domain",), original="sit-digits", progress=False)
    assert report.original_metrics == report.metrics  # the same model on the same noise
    assert export("sit-digits", tmp_path / "onnx", "onnx", verify=False,
                  exporter="torchscript").files
    trained = train(tmp_path / "model", "digits", TrainConfig(steps=1, batch_size=4),
                    progress=False, device="cpu")
    assert repr(trained) == (f"TrainResult(SIT depth 12, 1 steps, last loss "
                             f"{trained.losses[0]:.4f}; .model, .ema)")
    tuned = trained.model
    assert tuned.depth == teacher.depth and not torch.equal(
        tuned.final_layer.linear.weight, teacher.final_layer.linear.weight)
    tiny = tmp_path / "tiny"
    save(randomized(DiffusionTransformer(tiny_config("sit", depth=4))), tiny)
    assert compress(tiny, "digits", 2, steps=2, batch_size=4, interval=1,
                    calibration_per_class=2, calibration_times=2, proxy_samples=4,
                    report_samples=0, progress=False, device="cpu").model.depth == 2
    # a module of another class: the way to convert it, before any work
    with pytest.raises(TypeError, match=r"model is a Linear, not an entpruner "
                                        r"DiffusionTransformer.*from_state_dict"):
        compress(torch.nn.Linear(2, 2), "digits", 6)
    with pytest.raises(TypeError, match="original is a Sequential.*from_state_dict"):
        evaluate(teacher, "digits", samples=10, original=torch.nn.Sequential())
    with pytest.raises(TypeError, match="must be a DiffusionTransformer, a bundled teacher "
                                        "name or a path to a model; got a value of type int"):
        sample(12, labels)
    # the conversion it names works on a model in the reference layout
    converted = from_state_dict(teacher.state_dict(), "sit", num_heads=4)
    assert torch.equal(sample(converted, labels, steps=2, seed=5), by_object)


def reference_module(kind: str, model):
    """A module built as the reference models.py builds its model: a class named DiT or SiT
    holding the same submodules, ``num_heads`` as an attribute and ``pos_embed`` as a frozen
    parameter (that file is not a package, so it is rebuilt here from its layout)."""
    module = type(kind, (torch.nn.Module,), {})()
    for name, child in model.named_children():
        module.add_module(name, child)
    module.pos_embed = torch.nn.Parameter(model.pos_embed.detach().clone(), requires_grad=False)
    module.num_heads = model.config.num_heads
    return module


def test_a_reference_dit_or_sit_module_is_taken_as_it_is():
    from entpruner_sdk import plan

    teacher = load_teacher("sit-digits")
    labels = [3, 7]
    module = reference_module("SiT", teacher)
    assert torch.equal(sample(module, labels, steps=2, seed=5),
                       sample(teacher, labels, steps=2, seed=5))
    wrapped = torch.nn.Module()  # DistributedDataParallel keeps the model as .module
    wrapped.module = module
    options = dict(calibration_per_class=2, calibration_times=2, proxy_samples=4)
    assert plan(wrapped, "digits", 6, **options).removed_blocks == plan(
        teacher, "digits", 6, **options).removed_blocks
    # the class names the family: the same weights as a DiT are a DiT
    assert as_model(reference_module("DiT", teacher)).family == "dit"
    # a reference module built without label dropout has no null row, and is read so
    plain = randomized(DiffusionTransformer(tiny_config("dit", class_dropout_prob=0.0)))
    assert as_model(reference_module("DiT", plain)).config == plain.config
    # a module of that name without the reference layout is still refused
    other = type("DiT", (torch.nn.Module,), {})()
    other.num_heads = 4
    with pytest.raises(TypeError, match="model is a DiT, not an entpruner"):
        as_model(other)
