"""Decoder-only transformers with pluggable normalization placements."""

from models.config import ConfigError, ModelConfig
from models.sizes import SIZES
from models.transformer import Transformer, build_model

__all__ = ["SIZES", "ConfigError", "ModelConfig", "Transformer", "build_model"]
