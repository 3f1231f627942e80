"""validate = run: `peftflow validate` and `peftflow run` go through the one preflight, every check
of it, so a config that validate accepts is never refused by run before training."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import flows.finetune
from flows.cli import app
from peftflow import preflight
from peftflow.errors import UserError


@pytest.fixture
def config_file(tmp_path, tiny_model, peftflow_home, monkeypatch):
    monkeypatch.setenv("PEFTFLOW_HOME", str(peftflow_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    path = tmp_path / "run.yaml"
    path.write_text(
        f"model_name_or_path: {tiny_model}\ndataset: demo_orders\nmax_samples: 48\nval_size: 8\n"
        "max_steps: 1\npromotion:\n  guard_dataset: demo_orders\n  guard_max_samples: 8\n"
    )
    return path


def test_validate_and_run_walk_every_preflight_check(config_file, monkeypatch):
    walked = []

    def recorded(check):
        def walk(found):
            walked.append(check.__name__)
            check(found)

        return walk

    every = [c.__name__ for c in preflight.CHECKS]
    monkeypatch.setattr(preflight, "CHECKS", tuple(recorded(c) for c in preflight.CHECKS))
    runner = CliRunner()

    validated = runner.invoke(app, ["validate", str(config_file)])
    assert validated.exit_code == 0, validated.output
    by_validate, walked[:] = list(walked), []

    def flow_not_started(config):  # this test is about what runs before the flow, not the flow
        raise UserError("the flow is not started by this test")

    monkeypatch.setattr(flows.finetune, "finetune", flow_not_started)
    ran = runner.invoke(app, ["run", str(config_file)])
    assert ran.exit_code == 2 and "the flow is not started by this test" in ran.output, ran.output
    assert by_validate == walked == every, (by_validate, walked)
    assert "_run_store" in every and "_stage_inputs" in every and "_guard_data" in every  # what validate skipped


def test_validate_refuses_a_run_store_run_would_refuse(config_file, monkeypatch):
    """PEFTFLOW_STORAGE was read by run's preflight only: validate passed what run then refused."""
    monkeypatch.setenv("PEFTFLOW_STORAGE", "not-a-url")
    result = CliRunner().invoke(app, ["validate", str(config_file)])
    assert result.exit_code == 2
    assert "PEFTFLOW_STORAGE: 'not-a-url' is not a storage URL" in result.output
