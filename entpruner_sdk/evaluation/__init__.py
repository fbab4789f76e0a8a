"""Evaluation: ``evaluate`` (the verb: FID, FD-domain, precision / recall, class accuracy and
fidelity to an original, for a model or an export) with its ``EvaluationReport``, and the
dataset's own domain classifier (class accuracy, domain features)."""

from entpruner_sdk.evaluation.classifier import DomainClassifier, class_accuracy, domain_classifier
from entpruner_sdk.evaluation.evaluate import evaluate
from entpruner_sdk.evaluation.report import EvaluationReport

__all__ = ["DomainClassifier", "EvaluationReport", "class_accuracy", "domain_classifier",
           "evaluate"]
