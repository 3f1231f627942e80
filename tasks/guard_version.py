import json

from prefect import task

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.evaluation.scoring import guard_losses
from peftflow.mlflow_io.downloads import local_versions
from peftflow.mlflow_io.versions import get_version, set_version_tag
from peftflow.promotion import guard_verdict


@task(name="evaluate-guard-set-of-version")
def guard_version(config: RunConfig, name: str, version: str, previous: str | None) -> dict:
    """Guard-set loss of `version` and of the previous champion (the gate's check, for a move
    made by hand); recorded on `version` as the tag `guard.<guard_dataset>`. An adapter version
    is scored on the base it was published with."""
    models, bases = local_versions(
        {
            label: get_version(name, number)
            for label, number in (("champion", version), ("previous", previous))
            if number
        }
    )
    # the version's own tokenizer (an adapter's: its base's)
    data = prepare_dataset(config.guard_config(), bases.get("champion", models["champion"]))
    losses = guard_losses(models, data.path, config, bases=bases)
    tolerance = config.promotion.guard_tolerance
    passed, verdict = guard_verdict(losses["champion"], losses.get("previous"), tolerance)
    result = {
        "guard_dataset": config.promotion.guard_dataset,
        "loss": losses["champion"],
        "previous_version": previous,
        "previous_loss": losses.get("previous"),
        "tolerance": tolerance,
        "passed": passed,
        "verdict": verdict,
    }
    set_version_tag(name, version, f"guard.{config.promotion.guard_dataset}"[:250], json.dumps(result))
    return result
