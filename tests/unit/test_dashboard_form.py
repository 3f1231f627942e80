"""The Custom run form of the finetune deployment is drawn from the flow's parameter schema, as
Prefect generates it (what `prefect deploy` stores and the dashboard renders): every field titled
once and described, the basic recipe first, each group together, nothing the form shows as locked."""

import json
import re

import pytest
from prefect.utilities.callables import parameter_schema

from flows.finetune import finetune
from peftflow.config import RunConfig, demo_config

BASICS = ["model_name_or_path", "dataset", "dataset_dir", "finetuning_type", "stage", "template", "learning_rate",
          "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
          "cutoff_len", "val_size"]


@pytest.fixture(scope="module")
def schema() -> dict:
    return parameter_schema(finetune).model_dump()


def fields(schema: dict, ref: str = "#/definitions/RunConfig", path: str = "config"):
    """(dotted path, property, its section's definition or None) for every field, sections included."""
    definition = schema["definitions"][ref.rsplit("/", 1)[-1]]
    for name, prop in definition["properties"].items():
        section = schema["definitions"][prop["$ref"].rsplit("/", 1)[-1]] if "$ref" in prop else None
        yield f"{path}.{name}", prop, section
        if section:
            yield from fields(schema, prop["$ref"], f"{path}.{name}")


def test_every_field_has_a_description_and_a_title_of_its_own(schema):
    all_fields = list(fields(schema))
    assert len(all_fields) > 90  # RunConfig's keys and its three sections' keys
    undescribed = [p for p, prop, section in all_fields if not (prop.get("description") or (section or {}).get("description"))]
    assert undescribed == []
    titles = [prop.get("title") for _, prop, _ in all_fields]
    assert None not in titles
    assert sorted(t for t in set(titles) if titles.count(t) > 1) == []


def test_nothing_the_form_would_eat_or_lock(schema):
    text = json.dumps(schema)
    # The dashboard renders descriptions as HTML: <NAME> placeholders vanish.
    assert re.findall(r"<[A-Za-z_]", text) == []
    # A `const` branch renders as "is a const and cannot be changed".
    assert '"const"' not in text
    gc = schema["definitions"]["RunConfig"]["properties"]["gradient_checkpointing"]
    for choice in gc["enum"]:  # each choice the form offers is a valid value
        assert RunConfig(gradient_checkpointing=choice).gradient_checkpointing == choice


def test_the_recipe_comes_first_and_each_group_stays_together(schema):
    names = list(schema["definitions"]["RunConfig"]["properties"])
    assert names[:len(BASICS)] == BASICS
    groups = [prop["title"].split(":")[0] for _, prop, _ in fields(schema) if ":" in prop["title"]]
    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]
    assert len(runs) == len(set(runs)), runs  # a group that appears twice is split up in the form


def test_the_form_default_is_the_demo_and_survives_the_trip(schema):
    default = schema["properties"]["config"]["default"]
    assert default == demo_config().model_dump(mode="json")
    assert RunConfig.model_validate(json.loads(json.dumps(default))) == demo_config()
