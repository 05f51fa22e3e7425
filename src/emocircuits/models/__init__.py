"""Models: loading (built-in names, folders, GGUF, hub ids) and the architecture registry."""

from emocircuits.models.architectures import SITES, SUPPORTED, Architecture, architecture
from emocircuits.models.loading import (
    BUILTINS,
    DEFAULT_MODEL,
    LoadedModel,
    cache_dir,
    convert_gguf,
    load_model,
    shared_models,
)

__all__ = [
    "BUILTINS",
    "DEFAULT_MODEL",
    "SITES",
    "SUPPORTED",
    "Architecture",
    "LoadedModel",
    "architecture",
    "cache_dir",
    "convert_gguf",
    "load_model",
    "shared_models",
]
