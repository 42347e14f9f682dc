"""Clients of the AlexNet Triton server: the Classifier library, alexnet-classify, alexnet-label, alexnet-bench.

``ClassifierError`` is the one exception to catch; it is a ``ServerError`` (the server failed
or refused) or a ``LocalError`` (a file, the client's own decode, or the options).
"""

from alexnet_server.clients.classifier import Classifier, ClassifierError, Result
from alexnet_server.clients.protocol import LocalError, ServerError

__all__ = ["Classifier", "ClassifierError", "LocalError", "Result", "ServerError"]
