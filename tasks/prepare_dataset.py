from prefect import task
from prefect.artifacts import create_markdown_artifact

from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.data import prepare_dataset as _prepare
from peftflow.models.resolve import ResolvedModel


# log_prints off even under a flow with it on (retrain): datasets' fingerprinting runs dill, which reads
# globals from dis.dis printed into a captured stdout; a patched print sends that bytecode to the run's logs.
@task(name="prepare-dataset", log_prints=False)
def prepare_dataset(config: RunConfig, model: ResolvedModel) -> PreparedData:
    """Tokenised, masked train/eval splits; the core caches them by content fingerprint."""
    data = _prepare(config, model.path)
    create_markdown_artifact(
        key="prepared-dataset",
        markdown=(
            f"**Dataset** `{config.dataset}` fingerprint `{data.fingerprint}`: {data.train_rows} train rows, "
            f"{data.eval_rows} held out, {data.dropped} dropped, {data.truncated} truncated."
        ),
    )
    return data
