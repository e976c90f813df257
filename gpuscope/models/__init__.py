"""Models to profile: the default real model from the registry, and synthetic llama-shaped ones."""
from gpuscope.models.default import default_model
from gpuscope.models.synth import ModelShape, parse_shape, synth_model

__all__ = ["ModelShape", "default_model", "parse_shape", "synth_model"]
