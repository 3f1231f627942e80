"""The Custom run form of the finetune deployment is drawn from the flow's parameter schema, as
Prefect generates it (what `prefect deploy` stores and the dashboard renders): the basic recipe
first, every other key in a group that the form folds while it is at its defaults, every field
titled once and described, optional fields as plain inputs, nothing the form shows as locked; the
JSON it stores and submits is valid for the server and validates to the same config as the YAML."""

import json
import re
from pathlib import Path

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from flows.finetune import finetune
from peftflow.config import RunConfig, demo_config, parse_config
from peftflow.config.form import FLAT, GROUPS
from peftflow.errors import UserError
from peftflow.lineage import train_key
from tests.conftest import shipped_run_configs

BASICS = [
    "model_name_or_path",
    "dataset",
    "dataset_dir",
    "finetuning_type",
    "stage",
    "template",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "cutoff_len",
    "val_size",
]
CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict:
    return parameter_schema(finetune).model_dump()


def run_config(schema: dict) -> dict:
    return schema["definitions"]["RunConfig"]


def fields(props: dict, path: str = "config"):
    """(dotted path, property) for every field the form can show, the fields in a group's Custom tab included."""
    for name, prop in props.items():
        yield f"{path}.{name}", prop
        for branch in prop.get("anyOf", []):
            if branch.get("title") == "Custom":
                yield from fields(branch["properties"], f"{path}.{name}")


def test_every_field_has_a_description_and_a_title_of_its_own(schema):
    all_fields = list(fields(run_config(schema)["properties"]))
    assert len(all_fields) > 100  # RunConfig's keys, its three sections' keys, the groups
    assert [p for p, prop in all_fields if not prop.get("description")] == []
    titles = [prop.get("title") for _, prop in all_fields]
    assert None not in titles
    assert sorted(t for t in set(titles) if titles.count(t) > 1) == []


def test_nothing_the_form_would_eat_or_lock_or_switch_to_none(schema):
    text = json.dumps(schema)
    # The dashboard renders descriptions as HTML: <NAME> placeholders vanish.
    assert re.findall(r"<[A-Za-z_]", text) == []
    # A `const` branch renders as "is a const and cannot be changed".
    assert '"const"' not in text
    # A null branch renders as an int/None switch with 'Property is type "None"'.
    assert '"null"' not in text
    training = run_config(schema)["properties"]["training"]["anyOf"][1]["properties"]
    for choice in training["gradient_checkpointing"]["enum"]:  # each choice the form offers is a valid value
        assert RunConfig(gradient_checkpointing=choice).gradient_checkpointing == choice
    # bool-or-None is a choice with an empty state (the form draws a typed bool as an on/off switch)
    assert training["bf16_autocast"]["enum"] == [True, False] and "type" not in training["bf16_autocast"]
    assert RunConfig.model_validate({"training": {"save_total_limit": 0}}).save_total_limit is None  # 0: keep all


def test_the_recipe_comes_first_and_every_other_key_is_in_a_folding_group(schema):
    props = run_config(schema)["properties"]
    assert list(props)[: len(BASICS)] == BASICS
    rest = {k: p for k, p in props.items() if k not in BASICS}
    assert set(rest) == set(GROUPS) | {"registry", "evaluation", "promotion"}
    for name, prop in rest.items():
        folded, custom = prop["anyOf"]  # the form's tabs, by title
        assert (folded["title"], folded["properties"], custom["title"]) == ("Defaults", {}, "Custom"), name
        assert custom["properties"] and custom["additionalProperties"] is False
    # a field's title in a group's card does not repeat the group
    assert props["lora"]["anyOf"][1]["properties"]["lora_rank"]["title"] == "Rank"


def test_the_form_default_is_the_demo_with_untouched_groups_folded(schema):
    default = schema["properties"]["config"]["default"]
    assert default == demo_config().model_dump(mode="json")
    assert RunConfig.model_validate(json.loads(json.dumps(default))) == demo_config()
    assert default["lora"] == default["quantization"] == default["promotion"] == {}
    assert default["training"] == {"logging_steps": 5, "save_steps": 20}
    assert validate({"config": default}, schema, ignore_required=True) == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_recipe_is_the_same_run_after_the_forms_round_trip(schema, path):
    for cfg in shipped_run_configs(path):
        grouped = json.loads(json.dumps(cfg.model_dump(mode="json")))
        assert validate({"config": grouped}, schema, ignore_required=True) == []  # what the server checks
        again = RunConfig.model_validate(grouped)
        assert again == cfg and again.model_dump(mode="json") == grouped
        assert train_key(again, "model", "data") == train_key(cfg, "model", "data")
        assert RunConfig.model_validate(cfg.model_dump(mode="json", context=FLAT)) == cfg  # the flat shape too


def test_a_mapping_key_rides_in_its_group_not_as_a_section(schema):
    cfg = demo_config().model_copy(
        update={"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}}
    )
    grouped = json.loads(json.dumps(cfg.model_dump(mode="json")))
    assert grouped["training"]["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1} and "lr_scheduler_kwargs" not in grouped
    assert validate({"config": grouped}, schema, ignore_required=True) == []
    assert RunConfig.model_validate(grouped) == cfg


def test_a_custom_group_as_the_form_submits_it():
    # Custom tab opened: every key of the group filled with its default, one changed
    submitted = {
        **demo_config().model_dump(mode="json"),
        "lora": {"lora_rank": 16, "lora_dropout": 0, "use_dora": False, "lora_target": "all"},
    }
    assert RunConfig.model_validate(submitted) == demo_config().model_copy(update={"lora_rank": 16})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"lora": {"lora_rnk": 16}}, "unknown key 'lora.lora_rnk' (did you mean 'lora.lora_rank'?)"),
        ({"lora": {"seed": 1}}, "unknown key 'lora.seed'"),
        ({"lora_rank": 8, "lora": {"lora_rank": 16}}, "key 'lora_rank' given twice: at the top and in 'lora'"),
    ],
)
def test_a_key_in_the_wrong_group_is_one_line(raw, message):
    with pytest.raises(UserError) as e:
        parse_config(raw, source="form")
    assert str(e.value) == f"form: {message}"
