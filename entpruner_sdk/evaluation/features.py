"""Feature extractors for the distribution figures: the dataset classifier's penultimate
layer (FD-domain) and Inception (FID), and feature extraction shared over the ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from entpruner_sdk.data.datasets import unit_range
from entpruner_sdk.evaluation.classifier import DomainClassifier, batch_for
from entpruner_sdk.utils import distributed
from entpruner_sdk.utils.digest import network_fingerprint

# images (in [-1, 1] or 8-bit), progress= -> [N, D] features; each has a ``fingerprint``
FeatureExtractor = Callable[..., torch.Tensor]


class DomainFeatures:
    """The dataset classifier's penultimate layer as a feature extractor."""

    def __init__(self, classifier: DomainClassifier) -> None:
        self.classifier = classifier
        self.fingerprint = network_fingerprint(classifier)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 512, progress: bool = False
                 ) -> torch.Tensor:
        """Features of images in [-1, 1], or of 8-bit ones (a folder's reference)."""
        batch_size = batch_for(images, batch_size)
        return torch.cat([self.classifier.features(unit_range(images[i:i + batch_size]))
                          .double() for i in range(0, len(images), batch_size)])


def feature_extractors(features: tuple[str, ...], classifier: DomainClassifier,
                       device: str | torch.device, notes: list[str]
                       ) -> dict[str, FeatureExtractor]:
    """The extractors ``features`` names. Without the ``fid`` extra, Inception is skipped
    with a line in ``notes``, unless it is the only one asked for."""
    from entpruner_sdk.evaluation.inception import FeatureNetworkMissing, InceptionFeatures

    extractors: dict[str, FeatureExtractor] = {}
    if "domain" in features:
        extractors["domain"] = DomainFeatures(classifier)
    if "inception" in features:
        try:
            extractors["inception"] = InceptionFeatures(device)
        except FeatureNetworkMissing as error:
            if features == ("inception",):
                raise
            notes.append(f"standard FID skipped: {error}")
    return extractors


def sharded_features(extractor: FeatureExtractor, images: torch.Tensor, progress: bool
                     ) -> torch.Tensor:
    """Feature extraction split over the ranks (contiguous shares), gathered in order."""
    if not distributed.is_distributed():
        return extractor(images, progress=progress)
    share = images.tensor_split(distributed.world_size())[distributed.rank()]
    parts = distributed.gather_objects(extractor(share, progress=False))
    return torch.cat(parts)
