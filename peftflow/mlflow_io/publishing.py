"""Publish a fine-tune as a registered model version: log it to the run (transformers flavour), then
register it with its lineage and scores as tags, and point `challenger` at it.

MLflow 3.17.2 + transformers 5 behaviour this module works around (see tests/unit/test_registry.py):
- `transformers.log_model(<directory path>)` fails (`'str' object has no attribute '__name__'`:
  transformers 5 registers pipeline classes lazily as strings), so the model is loaded and logged
  as a pipeline (chat models, task `llm/v1/chat`: see peftflow/serving/chat.py) or a
  {"model", "tokenizer"} dict.
- Without `pip_requirements`, `log_model` pins `torchvision`, which is not installed: it fails.
- `log_model(run_id=...)` with no active run puts the model in the *default* experiment, whose
  artifacts land in `./mlruns` of the current directory: the LoggedModel is created first in the
  run's experiment and passed as `model_id`.
- `search_model_versions` returns empty aliases; versions are read back one by one.
- `mlflow.register_model` (not `MlflowClient.create_model_version`) makes the version: it also
  writes the logged model's `mlflow.modelVersions` tag, which its page reads to list the version.
- `transformers.log_model` of a local dir writes a LICENSE.txt pointing at
  `https://huggingface.co/<that local path>`: it is replaced by one naming the base model.
"""

from __future__ import annotations

import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from peftflow.mlflow_io.aliases import CHALLENGER, set_alias
from peftflow.mlflow_io.tracking import NOTE_TAG, mlflow_client
from peftflow.mlflow_io.versions import ModelVersionRef, version_of_run, version_ref
from peftflow.models import heads, vision
from peftflow.serving import chat, vision_chat_model
from peftflow.summary import CARD_HEADING, model_card, version_description

MODEL_ARTIFACT = "model"
KIND_TAG = "peftflow.kind"  # merged | adapter
VLLM_TAG = "peftflow.vllm_ready"  # set on adapter versions checked for vLLM (registry.vllm_ready)
VISION_CHAT_TASK = "image-text-to-text"


def publish_model(
    run_id: str,
    name: str,
    merged_dir: str,
    lineage: dict[str, str],
    metrics: dict[str, float],
    trust_remote_code: bool = False,
    recipe: dict[str, str] | None = None,
    description: str | None = None,
) -> ModelVersionRef:
    """Log a merged, plain transformers model dir to the run and register it as `challenger`.

    Idempotent: a version of `name` already made from `run_id` is returned, not made again.
    `recipe`: the config as flat params (the logged model's params, the card's recipe);
    `description`: the registered model's (registry.description), set when given.
    """

    def components() -> dict[str, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if vision.is_vision_language(merged_dir):
            return _vision_language_components(merged_dir)
        if heads.is_reward_model(merged_dir):
            return _reward_model_components(merged_dir, trust_remote_code)
        return chat.log_options(
            AutoModelForCausalLM.from_pretrained(merged_dir, dtype="auto", trust_remote_code=trust_remote_code),
            AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=trust_remote_code),
        )

    return _publish(
        run_id,
        name,
        lineage,
        metrics,
        components,
        kind="merged",
        about=(recipe or {}, description),
        images=vision.is_vision_language(merged_dir),
    )


def publish_adapter(
    run_id: str,
    name: str,
    adapter_dir: str,
    base_model_dir: str,
    lineage: dict[str, str],
    metrics: dict[str, float],
    trust_remote_code: bool = False,
    for_vllm: bool = False,
    recipe: dict[str, str] | None = None,
    description: str | None = None,
) -> ModelVersionRef:
    """Log a PEFT adapter that cannot be merged; the artifact refers to `base_model_dir`.

    Only the adapter and tokenizer are stored: the version loads where `base_model_dir` exists
    (same path), which the tag `base_model_path` records. Without `base_model_path`, MLflow would
    reload the adapter onto randomly initialised weights without a word.

    `for_vllm`: refused (UserError, nothing logged) unless vLLM would serve the adapter
    (peftflow/serving/checks.py); the version is tagged `peftflow.vllm_ready`.
    `recipe`, `description`: as for `publish_model`.
    """
    from peftflow.errors import UserError
    from peftflow.serving.checks import adapter_problems

    base_model_dir = str(Path(base_model_dir).resolve())
    tok_dir = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file() else base_model_dir
    if for_vllm and (problems := adapter_problems(adapter_dir, tok_dir)):
        raise UserError(f"registry.vllm_ready: adapter {adapter_dir} is not servable by vLLM: {'; '.join(problems)}")

    def components() -> dict[str, Any]:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype="auto", trust_remote_code=trust_remote_code)
        return chat.log_options(
            PeftModel.from_pretrained(base, adapter_dir),
            AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code),
        )

    lineage = {**lineage, "base_model_path": base_model_dir, **({VLLM_TAG: "true"} if for_vllm else {})}
    return _publish(
        run_id,
        name,
        lineage,
        metrics,
        components,
        kind="adapter",
        about=(recipe or {}, description),
        base_model_path=base_model_dir,
    )


def _reward_model_components(model_dir: str, trust_remote_code: bool) -> dict[str, Any]:
    """A reward model (stage rm) as transformers' text-classification: text in, its raw score out
    (the checkpoint's `problem_type: regression` keeps the pipeline from squashing it)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return {
        "transformers_model": {
            "model": AutoModelForSequenceClassification.from_pretrained(
                model_dir, dtype="auto", trust_remote_code=trust_remote_code
            ),
            "tokenizer": AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code),
        },
        "task": heads.REWARD_TASK,
    }


def _vision_language_components(model_dir: str) -> dict[str, Any]:
    """A vision-language version is a pyfunc (models from code, peftflow/serving/vision_chat_model.py)
    holding the merged dir: MLflow's transformers flavor cannot serve image-text-to-text as chat."""
    return {
        "python_model": vision_chat_model.__file__,
        "artifacts": {vision_chat_model.MODEL_ARTIFACT: model_dir},
        "signature": vision_chat_model.SIGNATURE,
        "task": VISION_CHAT_TASK,
    }


def _publish(run_id, name, lineage, metrics, components, kind, about, base_model_path=None, images=False):
    """One version per run and kind of what ships (`merged` or `adapter`): a retry or a rerun with
    the same training returns it, a rerun that ships the other kind registers that one. The
    lineage and `metric.*` tags are those of this publish either way (a rerun may have re-evaluated),
    and so is the version's description (its model card, until the flow adds its summary)."""
    import mlflow

    recipe, description = about
    client = mlflow_client()
    tags = {
        **{k: str(v) for k, v in lineage.items()},
        **{f"metric.{k}": f"{float(v):.6g}" for k, v in metrics.items()},
        KIND_TAG: kind,
    }
    existing = version_of_run(name, run_id, kind)
    if existing is None:
        model_id = _logged_model_of_run(client, run_id, kind) or _log_model(
            client, run_id, name, lineage, metrics, recipe, components, base_model_path, kind
        )
        _log_model_scores(client, run_id, model_id, metrics, recipe.get("dataset"), lineage.get("data_fingerprint"))
        # The link MLflow's own registration writes (see the module docstring); it also creates the
        # registered model when there is none. mlflow_client() above pointed MLflow's globals here.
        existing = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
    else:
        _retag(client, name, str(existing.version), dict(existing.tags or {}), tags)
    version = str(existing.version)
    if description is not None:
        client.update_registered_model(name, description=description)
    card = model_card(name, f"models:/{name}/{version}", lineage, metrics, recipe, kind, images)
    client.update_model_version(name, version, description=card)
    # Re-applied on a retry too, so a publish that stopped after registering still completes.
    set_alias(name, CHALLENGER, version, reason=f"published from run {run_id}", actor="publish")
    return version_ref(client.get_model_version(name, version))


def describe(ref: ModelVersionRef, summary: str) -> None:
    """The finetune summary as the description of the run (`mlflow.note.content`) and of the
    version, above the version's model card (replacing the summary of an earlier describe)."""
    client = mlflow_client()
    if ref.run_id:
        client.set_tag(ref.run_id, NOTE_TAG, summary)
    current = client.get_model_version(ref.name, ref.version).description or ""
    card = current[current.find(CARD_HEADING) :] if CARD_HEADING in current else current
    client.update_model_version(ref.name, ref.version, description=version_description(summary, card))


def attach_file(ref: ModelVersionRef, local_file: str, tag: str, note: str) -> ModelVersionRef:
    """Add a file (a GGUF export) to the version's model artifacts, beside MLmodel (a file of the
    same name is replaced), and record `note` in the version tag `tag`."""
    client = mlflow_client()
    mv = client.get_model_version(ref.name, ref.version)
    # The version's source is models:/<logged model id> (see _publish); the sqlite store does not
    # fill ModelVersion.model_id.
    client.log_model_artifact(mv.model_id or mv.source.removeprefix("models:/"), local_file)
    client.set_model_version_tag(ref.name, ref.version, tag, note)
    return version_ref(client.get_model_version(ref.name, ref.version))


def _retag(client, name: str, version: str, old: dict[str, str], new: dict[str, str]) -> None:
    """Bring a version's lineage and metric tags up to date; metric tags no longer measured go."""
    for key in [k for k in old if k.startswith("metric.") and k not in new]:
        client.delete_model_version_tag(name, version, key)
    for key, value in new.items():
        if old.get(key) != value:
            client.set_model_version_tag(name, version, key, value)


def _logged_model_of_run(client, run_id: str, kind: str) -> str | None:
    """A model of this kind the run already logged completely (a retry after log_model, before register)."""
    outputs = client.get_run(run_id).outputs
    for out in outputs.model_outputs if outputs else []:
        lm = client.get_logged_model(out.model_id)
        if lm.name == MODEL_ARTIFACT and lm.status == "READY" and (lm.tags or {}).get(KIND_TAG) == kind:
            return lm.model_id
    return None


def _log_model(client, run_id, name, lineage, metrics, recipe, components, base_model_path, kind) -> str:
    import mlflow

    run = client.get_run(run_id)
    # Created here, in the run's experiment: log_model(run_id=...) alone would use the default one.
    lm = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=MODEL_ARTIFACT,
        source_run_id=run_id,
        tags={KIND_TAG: kind},
        params=recipe or None,
    )
    card = model_card(name, f"models:/{lm.model_id}", lineage, metrics, recipe, kind)
    try:
        model = components()  # transformers_model, task (llm/v1/chat for chat models), model_config
        if model["task"] == VISION_CHAT_TASK:
            del model["task"]
            # pyfunc.log_model logs to the active run only; the run keeps the status it had.
            with warnings.catch_warnings(), mlflow.start_run(run_id=run_id):
                warnings.simplefilter("ignore", UserWarning)  # "add type hints to predict": the signature is given
                mlflow.pyfunc.log_model(
                    **model,
                    name=MODEL_ARTIFACT,
                    model_id=lm.model_id,
                    pip_requirements=_pip_requirements(peft=False, images=True),
                )
            client.update_run(run_id, status=run.info.status)
        else:
            mlflow.transformers.log_model(
                **model,
                name=MODEL_ARTIFACT,
                run_id=run_id,
                model_id=lm.model_id,
                model_card=_hf_card(card),
                base_model_path=base_model_path,
                pip_requirements=_pip_requirements(peft=base_model_path is not None),
            )
        _replace_licence(client, lm.model_id, lineage.get("base_model", "the base model"))
    except BaseException:
        client.finalize_logged_model(lm.model_id, "FAILED")
        raise
    return lm.model_id


def _log_model_scores(client, run_id, model_id, metrics, dataset, digest) -> None:
    """The held-out scores as the logged model's metrics, on the dataset they were measured on:
    its page lists that dataset under "Datasets used" (MLflow reads it from the metrics)."""
    from mlflow.entities import Metric

    named = {"dataset_name": dataset, "dataset_digest": digest} if dataset and digest else {}
    now = int(time.time() * 1000)
    batch = [Metric(f"eval.{k}", float(v), now, 0, model_id=model_id, **named) for k, v in metrics.items()]
    if batch:
        client.log_batch(run_id, metrics=batch)


def _hf_card(markdown: str):
    """peftflow's card as the artifact's README.md (and no look-up on the Hugging Face Hub, which
    MLflow would otherwise try for a card)."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\nlibrary_name: transformers\n---\n{markdown}\n")


def _replace_licence(client, model_id: str, base_model: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        licence = Path(tmp) / "LICENSE.txt"
        licence.write_text(
            f"This model is a fine-tune of {base_model} and is under that model's licence; "
            "peftflow adds no terms of its own.\n"
        )
        client.log_model_artifact(model_id, str(licence))


def _pip_requirements(peft: bool, images: bool = False) -> list[str]:
    pkgs = (
        ["torch", "transformers", "accelerate", "safetensors"]
        + (["peft"] if peft else [])
        + (["pillow", "mlflow"] if images else [])
    )
    reqs = []
    for p in pkgs:
        try:
            reqs.append(f"{p}=={metadata.version(p).split('+')[0]}")  # torch 2.13.0+cpu -> 2.13.0
        except metadata.PackageNotFoundError:
            reqs.append(p)
    return reqs
