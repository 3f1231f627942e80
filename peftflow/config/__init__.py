"""The run config: `run` (RunConfig and reading LLaMA-Factory YAML), `sections` (registry,
promotion, evaluation) and `checks` (every cross-field check, run as validators)."""

from peftflow.config.run import DEFAULT_MODEL, RunConfig, demo_config, load_config, parse_config
from peftflow.config.sections import EvaluationConfig, PromotionConfig, RegistryConfig

__all__ = ["DEFAULT_MODEL", "RunConfig", "demo_config", "load_config", "parse_config", "EvaluationConfig",
           "PromotionConfig", "RegistryConfig"]
