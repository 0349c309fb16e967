"""Typed config: schema (pydantic models) and loader (presets, files, overrides, errors)."""

from sftpipe.config.loader import PRESETS, ConfigError, dump_config, load_config, save_config
from sftpipe.config.schema import (
    Config,
    DataConfig,
    EvalConfig,
    ExportConfig,
    LoraConfig,
    ModelConfig,
    SourceConfig,
    TrainConfig,
)

__all__ = [
    "PRESETS", "Config", "ConfigError", "DataConfig", "EvalConfig", "ExportConfig", "LoraConfig",
    "ModelConfig", "SourceConfig", "TrainConfig", "dump_config", "load_config", "save_config",
]
