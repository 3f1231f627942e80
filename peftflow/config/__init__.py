"""The run config: `run` (RunConfig; a stage's own keys come from its package), `load` (reading
LLaMA-Factory YAML), `sections` (registry, promotion, evaluation), `checks` (every cross-field check,
run as validators) and `fingerprint` (what retrain compares); `v1` maps LLaMA-Factory v1 YAML onto it."""

from peftflow.config.load import SCHEMA_V0, SCHEMA_V1, load_config, parse_config, read_config, read_yaml
from peftflow.config.run import DEFAULT_MODEL, RunConfig, demo_config
from peftflow.config.sections import EvaluationConfig, PromotionConfig, RegistryConfig

__all__ = [
    "DEFAULT_MODEL",
    "SCHEMA_V0",
    "SCHEMA_V1",
    "RunConfig",
    "demo_config",
    "load_config",
    "parse_config",
    "read_config",
    "read_yaml",
    "EvaluationConfig",
    "PromotionConfig",
    "RegistryConfig",
]
