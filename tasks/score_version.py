from prefect import task

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.evaluation.scoring import score_model


@task(name="score-version")
def score_version(label: str, model_dir: str, config: RunConfig) -> dict:
    """Scores of one model dir on the held-out split of the config's dataset."""
    data = prepare_dataset(config, model_dir)  # the version's own tokenizer and chat template
    scores = score_model(label, model_dir, data.path, config)
    return {"data_fingerprint": data.fingerprint, "eval_rows": data.eval_rows, **scores.summary()}
