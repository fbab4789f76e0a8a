"""The bundled teachers really generate their classes."""

import pytest
import torch

from entpruner_sdk.data import load_data
from entpruner_sdk.evaluation.classifier import class_accuracy, domain_classifier
from entpruner_sdk.sampling import sample
from entpruner_sdk.teachers import DEFAULT_TEACHERS, SAMPLING, load_teacher


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
