from prefect import task

from peftflow.models.resolve import ResolvedModel
from peftflow.models.resolve import resolve_model as _resolve


@task(name="resolve-model")
def resolve_model(ref: str, allow_pickle_weights: bool = False, storage: str | None = None) -> ResolvedModel:
    """A local safetensors dir and its fingerprint (the built-in model is converted once, then
    cached; with a run store, fetched from it when another machine converted it)."""
    return _resolve(ref, allow_pickle_weights, storage)
