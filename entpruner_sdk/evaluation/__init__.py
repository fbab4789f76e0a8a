"""Evaluation: the domain classifier (class accuracy, domain features)."""

from entpruner_sdk.evaluation.classifier import DomainClassifier, class_accuracy, domain_classifier

__all__ = ["DomainClassifier", "class_accuracy", "domain_classifier"]
