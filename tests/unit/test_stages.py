"""The stage table: every stage declares what the config and the flows need in its own package,
and the rest of the code reaches a stage only through it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from peftflow.config import RunConfig
from peftflow.config.form import GROUP_OF, GROUPS, SECTIONS_AFTER
from peftflow.data.row_kinds import ROW_KINDS
from peftflow.lineage import train_key
from peftflow.stages import STAGES, get_workflow
from peftflow.stages.workflow import Workflow

SECTIONS = ("registry", "evaluation", "promotion")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_declares_what_the_config_and_the_flows_need(name):
    stage = STAGES[name]
    assert set(stage.options) <= set(RunConfig.model_fields), "a stage's options are RunConfig keys"
    if stage.keys:  # declared once, in the stage's package: RunConfig inherits them, options names them
        assert issubclass(RunConfig, stage.keys) and stage.options == tuple(stage.keys.model_fields)
    assert stage.row_kind in ROW_KINDS
    if stage.form_group:  # the form shows the stage's keys in its group (shared by dpo and kto: each key once)
        shown = GROUPS[stage.form_group.key][2]
        assert set(stage.options) <= set(shown) and len(shown) == len(set(shown))
        sharing = [s for s in STAGES.values() if s.form_group and s.form_group.key == stage.form_group.key]
        assert set(shown) == {k for s in sharing for k in s.options}
    assert isinstance(get_workflow(RunConfig.model_construct(stage=name)), Workflow)
    assert f"`{name}`" in RunConfig.model_fields["stage"].description


def test_the_fields_come_in_the_forms_order():
    """Pydantic puts inherited fields first; RunConfig's bases keep the form's order (the recipe, then
    one group after another as GROUPS lists them, the stages' groups among them), which is also the
    order of a flat dump and of the errors a config with several gets (the first is the one reported)."""
    fields = list(RunConfig.model_fields)
    groups = [GROUP_OF.get(k, "recipe" if k not in SECTIONS else k) for k in fields]
    runs = [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]  # each group's fields adjacent
    form = ["recipe"] + [s for g in GROUPS for s in (g, *(SECTIONS if g == SECTIONS_AFTER else ()))]
    assert runs == form


def test_another_stages_option_is_refused_naming_the_stage():
    """Set for sft, a distillation key (not only the four the old check knew) is refused, not ignored."""
    with pytest.raises(ValidationError, match="kd_temperature only apply to stage: distill"):
        RunConfig(kd_temperature=4.0)
    assert RunConfig(stage="distill", teacher="builtin:tiny-random", kd_temperature=4.0).kd_temperature == 4.0


def test_a_teachers_name_stays_out_of_the_train_key_its_content_is_in():
    """The stage's extra models are keyed by fingerprint: the same teacher named another way trains
    the same weights (the key of runs made before stages were modules)."""
    a = RunConfig(stage="distill", teacher="models:/t@champion")
    b = RunConfig(stage="distill", teacher="models:/t/3")
    assert train_key(a, "m", "d", "teacher-fp") == train_key(b, "m", "d", "teacher-fp")
    assert train_key(a, "m", "d", "teacher-fp") != train_key(a, "m", "d", "another-teacher")


def test_the_default_registered_name_follows_the_stage():
    assert (
        RunConfig(stage="distill", teacher="builtin:tiny-random").registry.name
        == "tiny-random-student-demo_orders-lora"
    )
    assert RunConfig(model_name_or_path="org/base-7b").registry.name == "base-7b-demo_orders-lora"
