"""The model registry: the served pyfunc, the champion gate, the model card, and `unitask register`."""

from unitask.registry.stage import register

__all__ = ["register"]
