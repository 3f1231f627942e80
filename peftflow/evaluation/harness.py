"""lm-evaluation-harness (`lm-eval`, its Hugging Face backend) on base, fine-tune and champion,
with local task YAMLs: offline, its built-in tasks cannot download their data, local ones run.

The task `peftflow_heldout` is written by peftflow from the prepared held-out split: the same
rows peftflow's own evaluation generates on (the first `evaluation.max_samples`), the same
prompts (the chat-templated prompt tokens decoded back to text, so lm-eval applies no template
of its own), the same stop (the template's end-of-turn token), budget and greedy decoding, and
the same per-example metric (`evaluation.metric`, through the task's `process_results`). Its
score is the harness's view of what peftflow scores; other local tasks measure what it does not.

lm-eval is the optional extra `peftflow[harness]`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

HELDOUT_TASK = "peftflow_heldout"
HELDOUT_METRIC = "peftflow_score"
_METRIC_MODULE = '''"""Written by peftflow: the per-example metric of peftflow's own evaluation."""
from peftflow.evaluation.metrics import METRICS


def process_results(doc, results):
    return {{"{metric_key}": METRICS["{metric}"](results[0], doc["reference"])}}
'''


def check_available(cfg) -> None:
    """Before training: lm-eval is installed and the include dir exists when harness tasks are set."""
    from peftflow.errors import UserError

    tasks, include = cfg.evaluation.harness_tasks, cfg.evaluation.harness_include
    if tasks and importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"evaluation.harness_tasks {', '.join(tasks)}: needs lm-eval: pip install 'peftflow[harness]'")
    if include and not Path(include).is_dir():
        raise UserError(f"evaluation.harness_include {include}: directory not found")
    if [t for t in tasks if t != HELDOUT_TASK] and not include:
        raise UserError(
            f"evaluation.harness_tasks {', '.join(tasks)}: local tasks need evaluation.harness_include "
            f"(offline, lm-eval's built-in tasks cannot download their data)"
        )


def write_heldout_task(data_path: str, tokenizer_dir: str, cfg, out_dir: str | Path) -> Path:
    """Write the held-out split as the lm-eval task `peftflow_heldout` (YAML, JSONL rows, metric)
    into `out_dir`; returns the dir, to be given as an include path."""
    import yaml
    from transformers import AutoTokenizer

    from peftflow.data.templates import generation_stop_ids
    from peftflow.evaluation.scoring import heldout_rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=cfg.trust_remote_code)
    eval_set = heldout_rows(data_path)  # of KTO feedback, the desirable rows
    rows = eval_set.select(range(min(cfg.evaluation.max_samples, len(eval_set))))
    with (out / "heldout.jsonl").open("w") as f:
        for i, (ids, ref) in enumerate(zip(rows["prompt_ids"], rows["reference"])):
            f.write(json.dumps({"index": i, "prompt": tokenizer.decode(ids), "reference": ref}) + "\n")
    (out / "peftflow_metric.py").write_text(
        _METRIC_MODULE.format(metric_key=HELDOUT_METRIC, metric=cfg.evaluation.metric)
    )
    stop = tokenizer.convert_ids_to_tokens(generation_stop_ids(tokenizer, cfg)[0])
    task = {
        "task": HELDOUT_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((out / "heldout.jsonl").resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{reference}}",
        "target_delimiter": "",
        "generation_kwargs": {"until": [stop], "max_gen_toks": cfg.evaluation.max_new_tokens, "do_sample": False},
        "process_results": "!function peftflow_metric.process_results",
        "metric_list": [{"metric": HELDOUT_METRIC, "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "peftflow_metric": cfg.evaluation.metric, "rows": len(rows)},
    }
    text = yaml.safe_dump(task, sort_keys=False)
    # lm-eval resolves `!function module.attr` as a YAML tag; safe_dump would quote it as a string.
    (out / f"{HELDOUT_TASK}.yaml").write_text(
        text.replace("'!function peftflow_metric.process_results'", "!function peftflow_metric.process_results")
    )
    return out


@dataclass(frozen=True)
class HarnessResult:
    scores: dict[str, float]  # "TASK/METRIC" -> value
    predictions: dict[str, list[str]]  # TASK -> generated text per row, in row order (generation tasks)


def run(
    model_dir: str, tasks: list[str], include_paths: list[str], batch_size: int, base_model_dir: str | None = None
) -> HarnessResult:
    """lm-eval's HF backend on one model. An adapter dir runs on its base (lm-eval's `peft=`)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from peftflow.evaluation.scoring import is_adapter_dir

    if is_adapter_dir(model_dir):
        base = (
            base_model_dir
            or json.loads((Path(model_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]
        )
        model_args = {"pretrained": base, "peft": model_dir, "dtype": "float32"}
    else:
        model_args = {"pretrained": model_dir, "dtype": "float32"}
    out = lm_eval.simple_evaluate(
        model=_hf_model(model_args, batch_size),
        tasks=list(tasks),
        batch_size=batch_size,
        task_manager=TaskManager(include_path=list(include_paths), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
        device="cpu",
    )
    scores = {}
    for task, metrics in out["results"].items():
        for key, value in metrics.items():
            name = key.partition(",")[0]
            if name.endswith("_stderr") or name in ("alias", "sample_len") or not isinstance(value, (int, float)):
                continue
            scores[f"{task}/{name}"] = round(float(value), 4) if not math.isnan(value) else math.nan
    predictions = {
        task: [s["filtered_resps"][0] for s in sorted(samples, key=lambda s: s["doc_id"])]
        for task, samples in out.get("samples", {}).items()
        if samples and isinstance(samples[0]["filtered_resps"][0], str)
    }
    return HarnessResult(scores, predictions)


def _hf_model(model_args: dict, batch_size: int):
    """lm-eval's HF backend, as simple_evaluate builds it for `model="hf"`, with its request bars
    off under tqdm's own switch `TQDM_DISABLE` (which `peftflow` sets unless --verbose): lm-eval
    passes `disable=` to those bars itself, and an explicit argument wins over tqdm's switch."""
    import os

    from lm_eval.models.huggingface import HFLM

    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or quiet)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or quiet)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or quiet)

    return QuietHFLM.create_from_arg_obj(model_args, {"batch_size": batch_size, "device": "cpu"})


def score_models(
    report,
    models: dict[str, str],
    data_path: str,
    cfg,
    work_dir: str | Path,
    base_model_dir: str | None = None,
    bases: dict[str, str] | None = None,
):
    """Run `evaluation.harness_tasks` on each labelled model of `report` (an EvalReport) and put
    the scores into it (`ModelScores.harness`). `peftflow_heldout` is written from `data_path`.
    An adapter runs on its own base from `bases` (as in scoring.compare), else `base_model_dir`."""
    check_available(cfg)  # a deployment's worker skips the CLI's pre-check
    tasks = list(cfg.evaluation.harness_tasks)
    include = [cfg.evaluation.harness_include] if cfg.evaluation.harness_include else []
    if HELDOUT_TASK in tasks:
        tokenizer_dir = base_model_dir or next(iter(models.values()))
        include.append(str(write_heldout_task(data_path, tokenizer_dir, cfg, Path(work_dir) / "harness-tasks")))
    for label, model_dir in models.items():
        base = (bases or {}).get(label, base_model_dir)
        report.models[label].harness = run(model_dir, tasks, include, cfg.evaluation.batch_size, base).scores
    return report
