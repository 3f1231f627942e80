"""Every shipped config survives the trip a deployment makes: stored as JSON with every field
filled in (also what the dashboard form submits), then validated again by the worker."""

import json
from pathlib import Path

import pytest

from peftflow.config import RunConfig, parse_config
from tests.conftest import shipped_run_configs

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_the_walk_finds_the_configs():
    assert len(CONFIGS) >= 10 and {"demo.yaml", "distill-smollm2-half.yaml", "vlm-shapes.yaml"} <= {
        p.name for p in CONFIGS
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_survives_the_json_round_trip(path):
    for cfg in shipped_run_configs(path):
        assert RunConfig.model_validate(json.loads(cfg.model_dump_json())) == cfg
        again, unused = parse_config(cfg.model_dump(mode="json"), source=str(path))
        assert again == cfg and unused == []
        assert again.fingerprint() == cfg.fingerprint()  # what retrain compares with the champion's tag
