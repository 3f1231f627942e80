"""The config fingerprint: `retrain` compares it with the champion's `config_fingerprint` tag, so it
stays the same across releases for an unchanged config, and a key added to RunConfig (or to one of
its sections) changes no fingerprint until a config sets it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from peftflow.config import EvaluationConfig, RunConfig, demo_config, load_config
from peftflow.config.fingerprint import FINGERPRINTED_AT_FREEZE, hashed_fields

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

MANY = dict(
    model_name_or_path="org/base-7b",
    dataset="a,b",
    lora_rank=16,
    lora_alpha=64,
    lora_target="q_proj,v_proj",
    learning_rate=5e-5,
    bf16=True,
    quantization_bit=4,
    save_total_limit=0,
    warmup_steps=5,
    seed=7,
    use_dora=True,
    enable_thinking=False,
    tool_format="qwen",
    output_dir="/tmp/out",
    registry={"name": "team-model", "experiment": "team", "gguf_outtype": "q8_0"},
    evaluation={"metric": "token_f1", "max_samples": 10, "harness_tasks": ["arc_easy"]},
    promotion={"min_improvement": 0.01, "harness_metric": "arc_easy/acc", "require_approval": True},
    merge=True,
)
DISTILL = dict(
    stage="distill",
    teacher="models:/teacher@champion",
    student_layers=2,
    kd_temperature=3.0,
    kd_direction="reverse",
    teacher_topk=-1,
    kd_unlabeled_dataset="prompts",
)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (RunConfig, "3bfd7b555414f4bb"),
        (demo_config, "82b3ff5452ab3e03"),
        (lambda: load_config(CONFIGS / "demo.yaml")[0], "82b3ff5452ab3e03"),
        (lambda: load_config(CONFIGS / "distill-smollm2-half.yaml")[0], "0fea31d95d4d9180"),
        (lambda: RunConfig(**DISTILL), "0aad2a302663f871"),
        (lambda: RunConfig(**MANY), "c8189236901d421c"),
    ],
    ids=["default", "demo", "demo.yaml", "distill.yaml", "distill", "many-keys"],
)
def test_a_config_keeps_the_fingerprint_it_had(config, expected):
    """Digests printed by RunConfig.fingerprint() at commit b3e8e27, before the rule for added fields:
    a literal from the old code is the point, since what is tested is that a config's fingerprint
    stays the same across code versions (a changed one retrains the champion it tags)."""
    assert config().fingerprint() == expected


def test_the_frozen_names_are_fields():
    """A misspelt name would drop a field at its default from every fingerprint."""
    fields = set(RunConfig.model_fields)
    for name in ("registry", "evaluation", "promotion"):
        fields |= {f"{name}.{k}" for k in RunConfig.model_fields[name].annotation.model_fields}
    assert FINGERPRINTED_AT_FREEZE <= fields


class _WithNewKey(RunConfig):
    later_key: float = Field(0.1, gt=0.0)  # a key a later release adds


class _EvaluationWithNewKey(EvaluationConfig):
    judge: str | None = None


class _WithNewSectionKey(RunConfig):
    evaluation: _EvaluationWithNewKey = Field(default_factory=_EvaluationWithNewKey)


class _Section(BaseModel):
    level: int = 0


class _WithNewSection(RunConfig):
    extra_section: _Section = Field(default_factory=_Section)


@pytest.mark.parametrize(
    ("later", "given"),
    [
        (_WithNewKey, {"later_key": 0.5}),
        (_WithNewSectionKey, {"evaluation": {"judge": "gpt"}}),
        (_WithNewSection, {"extra_section": {"level": 2}}),
    ],
    ids=["field", "section-key", "section"],
)
@pytest.mark.parametrize("base", [{}, MANY, DISTILL], ids=["default", "many-keys", "distill"])
def test_a_key_added_later_counts_only_once_given(later, given, base):
    """RunConfig as a later release has it (one more field, section key or section): at its default
    the fingerprint is today's, set it is another."""
    assert later(**base).fingerprint() == RunConfig(**base).fingerprint()
    changed = later(**_merged(base, given))
    assert changed.fingerprint() != RunConfig(**base).fingerprint()
    assert _merged(hashed_fields(changed), given) == hashed_fields(changed)  # what was given is hashed


def _merged(base: dict, given: dict) -> dict:
    """`base` with `given`'s keys set; a section's keys set inside the section, the others kept."""
    return base | {k: base.get(k, {}) | v if isinstance(v, dict) else v for k, v in given.items()}


@pytest.mark.parametrize("update", [{"learning_rate": 1e-3}, {"kd_ratio": 0.7}, {"evaluation": {"max_samples": 5}}])
def test_a_frozen_field_counts_at_any_value(update):
    base = RunConfig(**DISTILL)
    assert RunConfig(**_merged(DISTILL, update)).fingerprint() != base.fingerprint()


def test_the_description_and_the_run_store_change_no_fingerprint():
    base = RunConfig()
    assert RunConfig(registry={"description": "notes"}, storage="file:///tmp/store").fingerprint() == base.fingerprint()


def test_the_preference_keys_left_every_fingerprint_as_it_was():
    """stage dpo's keys came after the freeze: at their defaults they are not hashed."""
    assert not {"pref_beta", "pref_loss", "ref_model"} & set(hashed_fields(RunConfig()))
    assert "pref_beta" in hashed_fields(RunConfig(stage="dpo", pref_beta=0.3))
