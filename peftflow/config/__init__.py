"""The run config: `run` (RunConfig and reading LLaMA-Factory YAML), `sections` (registry,
promotion, evaluation) and `checks` (every cross-field check, run as validators); `v1` maps LLaMA-Factory v1 YAML onto it."""

from peftflow.config.run import (DEFAULT_MODEL, SCHEMA_V0, SCHEMA_V1, RunConfig, demo_config, load_config, parse_config,
                                 read_config, read_yaml)
from peftflow.config.sections import EvaluationConfig, PromotionConfig, RegistryConfig

__all__ = ["DEFAULT_MODEL", "SCHEMA_V0", "SCHEMA_V1", "RunConfig", "demo_config", "load_config", "parse_config",
           "read_config", "read_yaml", "EvaluationConfig", "PromotionConfig", "RegistryConfig"]
