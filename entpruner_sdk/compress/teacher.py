"""The teacher of a compression run: the user's model, frozen, with the label embedder the
run gives it; and an original made comparable with a model that run compressed."""

from __future__ import annotations

import copy

import torch

from entpruner_sdk.models.transformer import DiffusionTransformer, resize_classes


def make_teacher(model: DiffusionTransformer, num_classes: int | None,
                 device: torch.device) -> DiffusionTransformer:
    """A frozen copy of ``model`` on ``device``, its label embedder resized to
    ``num_classes`` when that differs (``model`` itself is left as it is)."""
    teacher = copy.deepcopy(model).to(device)
    if num_classes is not None and num_classes != teacher.config.num_classes:
        teacher = resize_classes(teacher, num_classes)
    return teacher.eval().requires_grad_(False)


def as_compressed(original: DiffusionTransformer,
                  pruned: DiffusionTransformer) -> DiffusionTransformer:
    """``original`` as the teacher of the run that made ``pruned``: with its label embedder
    resized the same way when that run resized it (``num_classes``), else unchanged.

    Side-by-side sampling and fidelity need the two models to take the same labels; for the
    classes both have, the resized original samples exactly as before."""
    resized = pruned.provenance.get("resized_classes")
    if resized and resized["from"] == original.config.num_classes != pruned.config.num_classes:
        return resize_classes(original, resized["to"]).eval()
    return original
