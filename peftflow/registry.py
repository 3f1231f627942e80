"""MLflow tracking and model registry: runs, published versions, aliases, the promotion gate.

Every call names its run by `run_id` and goes through `MlflowClient`: MLflow's fluent "active
run" is per thread, and Prefect runs tasks in other threads.

Aliases on a registered model:
  challenger  the version published last
  champion    the version that serves; moved only by `promote` (or by hand with `set_alias`)
  previous    the champion before the last promotion, for a one-step rollback
Each alias move is recorded on the version it lands on, in the tag `alias.<alias>.history`.

MLflow 3.17.2 + transformers 5 behaviour this module works around (see tests/unit/test_registry.py):
- `transformers.log_model(<directory path>)` fails (`'str' object has no attribute '__name__'`:
  transformers 5 registers pipeline classes lazily as strings), so the model is loaded and logged
  as a pipeline (chat models, task `llm/v1/chat`: see peftflow/chat_serving.py) or a
  {"model", "tokenizer"} dict.
- Without `pip_requirements`, `log_model` pins `torchvision`, which is not installed: it fails.
- `log_model(run_id=...)` with no active run puts the model in the *default* experiment, whose
  artifacts land in `./mlruns` of the current directory: the LoggedModel is created first in the
  run's experiment and passed as `model_id`.
- `get_model_version_by_alias` raises RESOURCE_DOES_NOT_EXIST for a missing model but
  INVALID_PARAMETER_VALUE for a missing alias; `search_model_versions` returns empty aliases.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from peftflow.config import RunConfig

from peftflow import chat_serving
from peftflow.redact import MASK, SECRET_KEY

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
MODEL_ARTIFACT = "model"
HISTORY_KEEP = 20        # alias moves kept per version and alias (tag values are size-limited)
REASON_MAX = 300
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_CONFIGURE_LOCK = threading.Lock()  # tasks in threads configure at once; os.environ is shared


# --- tracking -------------------------------------------------------------------------------

def configure_mlflow() -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI` (and `MLFLOW_REGISTRY_URI`), else at
    `sqlite:///<home>/mlflow.db`. Idempotent.

    MLflow's setters also copy the URIs into `os.environ`; they are put back as the user left them,
    or the next call (a worker serving several flows, another PEFTFLOW_HOME) would read this call's
    choice as if the user had made it."""
    import mlflow

    from peftflow.paths import peftflow_home

    with _CONFIGURE_LOCK:
        user = {key: os.environ.get(key) for key in _URI_VARIABLES}
        uri = user["MLFLOW_TRACKING_URI"] or f"sqlite:///{peftflow_home().resolve()}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(user["MLFLOW_REGISTRY_URI"] or uri)
        for key, value in user.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return uri


def _client() -> MlflowClient:
    from mlflow import MlflowClient

    uri = configure_mlflow()
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def ensure_experiment(name: str) -> str:
    """Get or create the experiment; returns its id.

    With a local sqlite store there is no server to hold artifacts, and MLflow's default would be
    `./mlruns` in whatever directory the process started in: the artifacts go to
    `<home>/mlartifacts` instead. A tracking server decides for itself.
    """
    from peftflow.paths import peftflow_home

    client = _client()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if urlparse(configure_mlflow()).scheme == "sqlite":
        location = (peftflow_home().resolve() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent run
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def config_params(cfg: RunConfig | dict[str, Any]) -> dict[str, str]:
    """The config as flat MLflow params: dotted keys, lists joined by ',', secrets masked."""
    raw = cfg if isinstance(cfg, dict) else cfg.model_dump(mode="json")
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif SECRET_KEY.search(prefix) and value not in (None, ""):
            out[prefix] = MASK
        elif isinstance(value, (list, tuple)):
            out[prefix] = ",".join(str(v) for v in value)
        else:
            out[prefix] = str(value)

    walk("", raw)
    return out


TRAIN_KEY_TAG = "peftflow.train_key"


def start_run(cfg: RunConfig, tags: dict[str, str], train_key: str | None = None) -> str:
    """Create a run in `cfg.registry.experiment`, log the whole config as params; returns run_id.

    With `train_key`, an existing run of the same training key and registered model is reused, so
    a rerun or retry logs into the run that already holds the training's metrics and model."""
    from mlflow.entities import Param

    client = _client()
    experiment_id = ensure_experiment(cfg.registry.experiment)
    if train_key:
        found = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                                   filter_string=f"tags.`{TRAIN_KEY_TAG}` = '{train_key}' and "
                                                 f"tags.`peftflow.registered_model` = '{cfg.registry.name}'")
        if found:
            return found[0].info.run_id
        tags = {**tags, TRAIN_KEY_TAG: train_key, "peftflow.registered_model": cfg.registry.name}
    run = client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items()})
    params = [Param(k, v) for k, v in config_params(cfg).items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    if batch:
        _client().log_batch(run_id, metrics=batch)


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


def log_artifact(run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    """Upload a file, or a directory (it keeps its name), under `artifact_path`."""
    _client().log_artifact(run_id, str(local_path), artifact_path)


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    """status: FINISHED, FAILED or KILLED."""
    _client().set_terminated(run_id, status)


# --- registry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str | None
    uri: str               # models:/NAME/VERSION
    tags: dict[str, str]


def _ref(mv: Any) -> ModelVersionRef:
    return ModelVersionRef(name=mv.name, version=str(mv.version), run_id=mv.run_id,
                           uri=f"models:/{mv.name}/{mv.version}", tags=dict(mv.tags or {}))


def publish_model(run_id: str, name: str, merged_dir: str, lineage: dict[str, str],
                  metrics: dict[str, float], trust_remote_code: bool = False) -> ModelVersionRef:
    """Log a merged, plain transformers model dir to the run and register it as `challenger`.

    Idempotent: a version of `name` already made from `run_id` is returned, not made again.
    """
    def components() -> dict[str, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from peftflow import vision

        if vision.is_vision_language(merged_dir):
            return _vision_language_components(merged_dir, trust_remote_code)
        return chat_serving.log_options(
            AutoModelForCausalLM.from_pretrained(merged_dir, dtype="auto", trust_remote_code=trust_remote_code),
            AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=trust_remote_code))

    return _publish(run_id, name, lineage, metrics, components, kind="merged", card_dir=merged_dir)


def publish_adapter(run_id: str, name: str, adapter_dir: str, base_model_dir: str,
                    lineage: dict[str, str], metrics: dict[str, float],
                    trust_remote_code: bool = False, for_vllm: bool = False) -> ModelVersionRef:
    """Log a PEFT adapter that cannot be merged; the artifact refers to `base_model_dir`.

    Only the adapter and tokenizer are stored: the version loads where `base_model_dir` exists
    (same path), which the tag `base_model_path` records. Without `base_model_path`, MLflow would
    reload the adapter onto randomly initialised weights without a word.

    `for_vllm`: refused (UserError, nothing logged) unless vLLM would serve the adapter
    (peftflow/serving_checks.py); the version is tagged `peftflow.vllm_ready`.
    """
    from peftflow import serving_checks
    from peftflow.errors import UserError

    base_model_dir = str(Path(base_model_dir).resolve())
    tok_dir = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file() else base_model_dir
    if for_vllm and (problems := serving_checks.adapter_problems(adapter_dir, tok_dir)):
        raise UserError(f"registry.vllm_ready: adapter {adapter_dir} is not servable by vLLM: {'; '.join(problems)}")

    def components() -> dict[str, Any]:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype="auto", trust_remote_code=trust_remote_code)
        return chat_serving.log_options(PeftModel.from_pretrained(base, adapter_dir),
                                        AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code))

    lineage = {**lineage, "base_model_path": base_model_dir, **({"peftflow.vllm_ready": "true"} if for_vllm else {})}
    return _publish(run_id, name, lineage, metrics, components, kind="adapter",
                    card_dir=adapter_dir, base_model_path=base_model_dir)


def _vision_language_components(model_dir: str, trust_remote_code: bool) -> dict[str, Any]:
    """MLflow builds no image-text-to-text pipeline from a components dict (it cannot find the
    processor): it is given the pipeline, and the processor to store with it."""
    from transformers import AutoProcessor, pipeline

    from peftflow import vision

    model = vision.model_class(model_dir).from_pretrained(model_dir, dtype="auto", trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    return {"transformers_model": pipeline("image-text-to-text", model=model, processor=processor),
            "task": "image-text-to-text", "processor": processor}


def _publish(run_id, name, lineage, metrics, components, kind, card_dir, base_model_path=None):
    from mlflow.exceptions import MlflowException

    client = _client()
    existing = _version_of_run(client, name, run_id)
    if existing is None:
        model_id = _logged_model_of_run(client, run_id) or _log_model(
            client, run_id, name, lineage, components, card_dir, base_model_path)
        tags = {**{k: str(v) for k, v in lineage.items()},
                **{f"metric.{k}": f"{float(v):.6g}" for k, v in metrics.items()},
                "peftflow.kind": kind}
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        existing = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id,
                                               tags=tags, model_id=model_id)
    # Re-applied on a retry too, so a publish that stopped after registering still completes.
    set_alias(name, CHALLENGER, str(existing.version), reason=f"published from run {run_id}", actor="publish")
    return _ref(client.get_model_version(name, str(existing.version)))


def attach_file(ref: ModelVersionRef, local_file: str, tag: str, note: str) -> ModelVersionRef:
    """Add a file (a GGUF export) to the version's model artifacts, beside MLmodel, and record
    `note` in the version tag `tag`. Idempotent: a version that has the tag is left as it is."""
    client = _client()
    mv = client.get_model_version(ref.name, ref.version)
    if tag not in (mv.tags or {}):
        # The version's source is models:/<logged model id> (see _publish); the sqlite store
        # does not fill ModelVersion.model_id.
        client.log_model_artifact(mv.model_id or mv.source.removeprefix("models:/"), local_file)
        client.set_model_version_tag(ref.name, ref.version, tag, note)
    return _ref(client.get_model_version(ref.name, ref.version))


def _version_of_run(client, name: str, run_id: str):
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _logged_model_of_run(client, run_id: str) -> str | None:
    """A model this run already logged completely (a retry after log_model, before register)."""
    outputs = client.get_run(run_id).outputs
    for out in (outputs.model_outputs if outputs else []):
        lm = client.get_logged_model(out.model_id)
        if lm.name == MODEL_ARTIFACT and lm.status == "READY":
            return lm.model_id
    return None


def _log_model(client, run_id, name, lineage, components, card_dir, base_model_path) -> str:
    import mlflow

    run = client.get_run(run_id)
    # Created here, in the run's experiment: log_model(run_id=...) alone would use the default one.
    lm = client.create_logged_model(experiment_id=run.info.experiment_id, name=MODEL_ARTIFACT,
                                    source_run_id=run_id)
    try:
        model = components()  # transformers_model, task (llm/v1/chat for chat models), model_config
        mlflow.transformers.log_model(
            **model, name=MODEL_ARTIFACT, run_id=run_id,
            model_id=lm.model_id, model_card=_model_card(name, card_dir, lineage),
            pip_requirements=_pip_requirements(peft=base_model_path is not None,
                                               images=model["task"] == "image-text-to-text"),
            base_model_path=base_model_path)
    except BaseException:
        client.finalize_logged_model(lm.model_id, "FAILED")
        raise
    return lm.model_id


def _model_card(name: str, src_dir: str, lineage: dict[str, str]):
    """The source dir's README if it has one; else a short card with the lineage (and no
    look-up on the Hugging Face Hub, which MLflow would otherwise try for the card)."""
    from huggingface_hub import ModelCard

    readme = Path(src_dir) / "README.md"
    if readme.is_file():
        return ModelCard.load(readme)
    lines = "\n".join(f"- {k}: {v}" for k, v in sorted(lineage.items()))
    return ModelCard(f"---\nlibrary_name: transformers\n---\n# {name}\n\nPublished by peftflow.\n\n{lines}\n")


def _pip_requirements(peft: bool, images: bool = False) -> list[str]:
    pkgs = ["torch", "transformers", "accelerate", "safetensors"] + (["peft"] if peft else []) + (["pillow"] if images else [])
    reqs = []
    for p in pkgs:
        try:
            reqs.append(f"{p}=={metadata.version(p).split('+')[0]}")  # torch 2.13.0+cpu -> 2.13.0
        except metadata.PackageNotFoundError:
            reqs.append(p)
    return reqs


def load_pipeline(model_uri: str):
    """`models:/NAME@champion`, `models:/NAME/3`, ... -> a transformers text-generation pipeline."""
    import mlflow

    configure_mlflow()
    return mlflow.transformers.load_model(model_uri)


def generate_reply(model: str, prompt: str, max_new_tokens: int = 128, image: str | None = None) -> str:
    """One greedy chat reply from a model URI (`models:/NAME@champion`) or a local model dir;
    with `image` (a file path), a vision-language model answers about that image."""
    if image is not None:
        local = Path(model).expanduser()
        return generate_image_reply(str(local) if local.is_dir() else download_model_dir(model), prompt, image,
                                    max_new_tokens)
    if Path(model).expanduser().is_dir():
        from transformers import pipeline

        pipe = pipeline("text-generation", model=str(Path(model).expanduser()))
    else:
        pipe = load_pipeline(model)
    from peftflow.evaluate import uncached_generation

    options = dict(max_new_tokens=max_new_tokens, do_sample=False, use_cache=not uncached_generation(pipe.model))
    if pipe.tokenizer.chat_template:
        out = pipe([{"role": "user", "content": prompt}], **options)
        return out[0]["generated_text"][-1]["content"]
    out = pipe(prompt, return_full_text=False, **options)
    return out[0]["generated_text"]


def generate_image_reply(model_dir: str, prompt: str, image: str, max_new_tokens: int = 128) -> str:
    """One greedy reply of the vision-language model in `model_dir` to `prompt` about the image file."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from peftflow import vision
    from peftflow.errors import UserError

    if not vision.is_vision_language(model_dir):
        raise UserError(f"--image given, but the model at {model_dir} is not a vision-language model")
    if not Path(image).is_file():
        raise UserError(f"--image {image}: file not found")
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)  # peftflow's own published models
    model = vision.model_class(model_dir).from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).eval()
    token = vision.image_token(processor.tokenizer)[0]
    text = processor.tokenizer.apply_chat_template([{"role": "user", "content": f"{token}{prompt}"}], tokenize=False,
                                                   add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def download_model_dir(model_uri: str) -> str:
    """A registered model as a plain local transformers dir (config, weights or adapter, tokenizer)
    that `from_pretrained` reads. An alias is pinned to its version first; versions are cached."""
    import mlflow
    from filelock import FileLock

    from peftflow.paths import cache_dir

    configure_mlflow()
    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)", model_uri)
    if m:
        ref = get_version_by_alias(m[1], m[2])
        if ref is None:
            raise LookupError(f"{model_uri}: no such registered model or alias")
        model_uri = ref.uri
    immutable = re.fullmatch(r"models:/([^/@]+/\d+|m-[0-9a-f]+)", model_uri)
    root = cache_dir("registry")
    name = hashlib.sha256(model_uri.encode()).hexdigest()[:16] if immutable else None
    target = root / name if name else Path(tempfile.mkdtemp(dir=root, prefix="unpinned-")) / "model"
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
            try:
                raw = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp / "raw")))
                flat = tmp / "flat"
                flat.mkdir()
                # MLflow's transformers layout: model/ (or peft/ for an adapter) + components/tokenizer/,
                # and for a vision-language model components/image_processor/ + components/processor/
                for sub in ("model", "peft", "components/tokenizer", "components/image_processor", "components/processor"):
                    if (raw / sub).is_dir():
                        for f in (raw / sub).iterdir():
                            os.replace(f, flat / f.name)
                os.replace(flat, target)  # atomic: never a half-downloaded model in the cache
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# --- aliases and promotion ------------------------------------------------------------------

def get_version_by_alias(name: str, alias: str) -> ModelVersionRef | None:
    from mlflow.exceptions import MlflowException

    try:
        return _ref(_client().get_model_version_by_alias(name, alias))
    except MlflowException as e:
        # no such model: RESOURCE_DOES_NOT_EXIST; no such alias: INVALID_PARAMETER_VALUE
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def set_alias(name: str, alias: str, version: str, reason: str, actor: str) -> None:
    """Point `alias` at `version` and append the move to the version's `alias.<alias>.history`."""
    client = _client()
    client.set_registered_model_alias(name, alias, str(version))
    key = f"alias.{alias}.history"
    mv = client.get_model_version(name, str(version))
    try:
        history = json.loads((mv.tags or {}).get(key, "[]"))
    except json.JSONDecodeError:
        history = []
    history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": actor,
                    "reason": reason[:REASON_MAX]})
    client.set_model_version_tag(name, str(version), key, json.dumps(history[-HISTORY_KEEP:]))


def alias_history(name: str, version: str, alias: str) -> list[dict[str, str]]:
    mv = _client().get_model_version(name, str(version))
    return json.loads((mv.tags or {}).get(f"alias.{alias}.history", "[]"))


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str            # one human line
    candidate: float
    incumbent: float | None
    incumbent_label: str   # "champion v3" or "base model"


def paired_bootstrap(candidate: list[float], incumbent: list[float], samples: int, confidence: float,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean paired difference (candidate - incumbent) and its bootstrap confidence interval.

    `candidate[i]` and `incumbent[i]` score the same example. Resamples examples with replacement
    `samples` times; returns (mean, lower, upper) of the percentile interval at `confidence`.
    """
    import numpy as np

    if len(candidate) != len(incumbent) or not candidate:
        raise ValueError(f"paired bootstrap needs two equal, non-empty score lists (got {len(candidate)} and {len(incumbent)})")
    diffs = np.asarray(candidate, dtype=float) - np.asarray(incumbent, dtype=float)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(samples, len(diffs)))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return float(diffs.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def decide_promotion(metric: str, candidate: float, incumbent: float | None, incumbent_label: str,
                     min_improvement: float, higher_is_better: bool = True, *,
                     paired: tuple[list[float], list[float]] | None = None, bootstrap_samples: int = 0,
                     confidence: float = 0.95, merge_passed: bool = True,
                     guard: tuple[float, float] | None = None, guard_tolerance: float = 0.0) -> GateDecision:
    """Promote when the candidate beats the incumbent by at least `min_improvement`.

    With a margin >= 0 a tie never promotes (the champion stays put). A NaN candidate never promotes; a missing or
    NaN incumbent always loses to a finite candidate.

    Further checks, each of which can only refuse:
    - `merge_passed=False` (the merge fidelity check failed) refuses.
    - `paired` = (candidate, incumbent) per-example scores of the same examples, with
      `bootstrap_samples > 0`: the lower bound of the paired bootstrap interval of the mean
      improvement (at `confidence`) must clear `min_improvement`, not only the point estimate.
    - `guard` = (candidate, incumbent) loss on a guard set of general-ability rows (lower is
      better): a rise of more than `guard_tolerance` refuses.
    """
    def decision(ok: bool, why: str) -> GateDecision:
        return GateDecision(ok, why, candidate, incumbent, incumbent_label)

    if not merge_passed:
        return decision(False, "merge fidelity check failed; not promoted")
    point = _point_decision(metric, candidate, incumbent, incumbent_label, min_improvement, higher_is_better)
    if not point.promote:
        return point
    reason = point.reason
    if paired is not None and bootstrap_samples > 0 and paired[0]:
        cand, inc = paired
        if not higher_is_better:
            cand, inc = [-x for x in cand], [-x for x in inc]
        mean, lower, upper = paired_bootstrap(cand, inc, bootstrap_samples, confidence)
        ci = f"{confidence:.0%} paired bootstrap CI of the gain [{lower:.4f}, {upper:.4f}] over {len(cand)} examples"
        clears = lower > min_improvement or (min_improvement < 0 and lower >= min_improvement)
        if not clears:
            return decision(False, f"{reason}, but the {ci} does not clear {min_improvement:.4f}; not promoted")
        reason = f"{reason}; {ci}"
    if guard is not None:
        rise = guard[0] - guard[1]
        if math.isnan(guard[0]) or rise > guard_tolerance + 1e-12:
            return decision(False, f"{reason}, but the guard-set loss regressed from {guard[1]:.4f} to {guard[0]:.4f} "
                                   f"(tolerance {guard_tolerance:.4f}); not promoted")
        reason = f"{reason}; guard-set loss {guard[0]:.4f} vs {guard[1]:.4f}"
    return decision(True, reason)


def _point_decision(metric: str, candidate: float, incumbent: float | None, incumbent_label: str,
                    min_improvement: float, higher_is_better: bool) -> GateDecision:
    def decision(ok: bool, why: str) -> GateDecision:
        return GateDecision(ok, why, candidate, incumbent, incumbent_label)

    if candidate is None or math.isnan(candidate):
        return decision(False, f"{metric} of the candidate is not a number; not promoted")
    if incumbent is None or math.isnan(incumbent):
        return decision(True, f"{metric} {candidate:.4f}; {incumbent_label} has no {metric} to beat")
    gain = candidate - incumbent if higher_is_better else incumbent - candidate
    lower = "" if higher_is_better else " (lower is better)"
    vs = f"{incumbent_label} ({incumbent:.4f})"
    # A margin >= 0 means "must beat": a tie keeps the incumbent. A negative margin accepts a
    # candidate up to that much worse. The epsilon forgives float noise (0.71 - 0.5 < 0.21).
    passed = gain >= min_improvement - 1e-12 and (gain > 0 or min_improvement < 0)
    if passed and gain > 0:
        return decision(True, f"{metric} {candidate:.4f} beats {vs} by {gain:.4f} >= {min_improvement:.4f}{lower}")
    if passed:
        return decision(True, f"{metric} {candidate:.4f} is within the allowed {-min_improvement:.4f} of {vs}{lower}")
    if gain == 0:
        return decision(False, f"{metric} {candidate:.4f} ties {vs}; not promoted{lower}")
    if gain < 0:
        return decision(False, f"{metric} {candidate:.4f} is worse than {vs} by {-gain:.4f}; not promoted{lower}")
    return decision(False, f"{metric} {candidate:.4f} beats {vs} by only {gain:.4f} < {min_improvement:.4f}; not promoted{lower}")


def _alias_lock(name: str):
    """Serialises alias moves on one registered model among the processes of this machine (flows
    publishing to the same model at once): read champion, move previous, move champion is then one
    step. MLflow has no compare-and-set for aliases, so processes on other machines are not covered."""
    from filelock import FileLock

    from peftflow.paths import cache_dir

    store = hashlib.sha256(f"{configure_mlflow()}\0{name}".encode()).hexdigest()[:16]
    return FileLock(str(cache_dir("locks") / f"aliases-{store}.lock"), timeout=300)


def promote(name: str, version: str, decision: GateDecision, actor: str) -> str | None:
    """Move `champion` to `version` when the gate passed; the old champion becomes `previous`.

    Returns the new champion version, or None when the gate refused.
    """
    if not decision.promote:
        return None
    return move_champion(name, version, decision.reason, actor)


def move_champion(name: str, version: str, reason: str, actor: str) -> str:
    """Point `champion` at `version` (no gate: a decision already made, or a person's call).
    The champion it replaces becomes `previous`. Nothing moves when it already is champion."""
    version = str(version)
    _client().get_model_version(name, version)  # raises RESOURCE_DOES_NOT_EXIST for a wrong version
    with _alias_lock(name):
        current = get_version_by_alias(name, CHAMPION)
        if current is not None and current.version == version:
            return version
        # `previous` first: a retry after a crash between the two moves still ends right.
        if current is not None:
            set_alias(name, PREVIOUS, current.version, reason=f"replaced as champion by v{version}", actor=actor)
        set_alias(name, CHAMPION, version, reason=reason, actor=actor)
    return version


def rollback(name: str, reason: str, actor: str) -> tuple[str, str]:
    """Swap `champion` and `previous`: the previous champion serves again, and the version rolled
    back from becomes `previous` (so a second rollback undoes the first). Returns (new champion,
    rolled-back version). The rolled-back version also gets the tag `rolled_back` with the reason."""
    from peftflow.errors import UserError

    champion, previous = get_version_by_alias(name, CHAMPION), get_version_by_alias(name, PREVIOUS)
    if champion is None:
        raise UserError(f"{name}: has no champion to roll back")
    if previous is None:
        raise UserError(f"{name}: champion v{champion.version} has no `previous` version to roll back to")
    if previous.version == champion.version:
        raise UserError(f"{name}: `previous` and `champion` both point at v{champion.version}; nothing to roll back")
    set_alias(name, CHAMPION, previous.version, reason=f"rollback from v{champion.version}: {reason}", actor=actor)
    set_alias(name, PREVIOUS, champion.version, reason=f"rolled back to v{previous.version}: {reason}", actor=actor)
    _client().set_model_version_tag(name, champion.version, "rolled_back",
                                    json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                "by": actor, "reason": reason[:REASON_MAX]}))
    return previous.version, champion.version
