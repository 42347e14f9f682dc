"""Clients of the AlexNet Triton server: the Classifier library, alexnet-classify, alexnet-label, alexnet-bench."""

from clients.classifier import Classifier, ClassifierError, Result

__all__ = ["Classifier", "ClassifierError", "Result"]
