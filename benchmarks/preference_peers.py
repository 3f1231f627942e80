"""The peers of preference_benchmark.py's step timing: TRL's DPOTrainer and LLaMA-Factory's `stage: dpo`,
each run from its own side environment as a subprocess on a script written here, timed by the same
callback as peftflow (the wall time between consecutive optimizer steps, the first step left out)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from peftflow.data.prepare import split_rows

# One callback for all three trainers (exec'd here for peftflow, written into each peer's script).
TIMER_SOURCE = '''
import time
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Seconds between consecutive optimizer steps; step 1 (warm-up, lazy init) is left out."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def seconds(self):
        return [b - a for a, b in zip(self.ends, self.ends[1:])]

    def mean(self):
        s = self.seconds()
        return sum(s) / len(s) if s else None
'''
_ns: dict = {}
exec(TIMER_SOURCE, _ns)  # noqa: S102 - the timer must be the same code in every process
StepTimer = _ns["StepTimer"]

TRL_SCRIPT = (
    TIMER_SOURCE
    + """
import json, sys
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

spec = json.load(open(sys.argv[1]))
rows = [
    {"prompt": [{"role": "user", "content": p["instruction"] + "\\n" + p["input"]}],
     "chosen": [{"role": "assistant", "content": p["chosen"]}],
     "rejected": [{"role": "assistant", "content": p["rejected"]}]}
    for p in spec["pairs"]
]
args = DPOConfig(
    output_dir=spec["out"], per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
    max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
    beta=spec["beta"], loss_type=["sigmoid"], max_length=spec["cutoff"], bf16=False, fp16=False,
    gradient_checkpointing=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[],
    precompute_ref_log_probs=spec["precompute"], seed=42,
)
peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
timer = StepTimer()
DPOTrainer(model=spec["model"], args=args, train_dataset=Dataset.from_list(rows), peft_config=peft,
           callbacks=[timer]).train()
print("STEP_SECONDS " + json.dumps(timer.seconds()), flush=True)
"""
)

LF_SCRIPT = (
    TIMER_SOURCE
    + """
import json, sys
from llamafactory.train.tuner import run_exp

timer = StepTimer()
run_exp(json.load(open(sys.argv[1])), callbacks=[timer])  # what `llamafactory-cli train x.yaml` calls
print("STEP_SECONDS " + json.dumps(timer.seconds()), flush=True)
"""
)

PEERS = ("TRL DPOTrainer", "TRL DPOTrainer, precompute_ref_log_probs", "LLaMA-Factory stage: dpo")


def lf_args(spec: dict, data_dir: Path) -> dict:
    """LLaMA-Factory's YAML keys (as a dict) for the same run."""
    return {
        "model_name_or_path": spec["model"],
        "template": "smollm2",
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "pref_beta": spec["beta"],
        "pref_loss": "sigmoid",
        "dataset": "pairs",
        "dataset_dir": str(data_dir),
        "cutoff_len": spec["cutoff"],
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": spec["out"],
        "overwrite_output_dir": True,
        "per_device_train_batch_size": spec["batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": spec["lr"],
        "lr_scheduler_type": "constant",
        "max_steps": spec["steps"],
        "logging_steps": 1,
        "save_strategy": "no",
        "bf16": False,
        "disable_gradient_checkpointing": True,
        "report_to": "none",
        "use_cpu": True,
    }


def for_transformers_4(model_dir: Path, out: Path) -> Path:
    """The model dir as LLaMA-Factory's transformers 4.57 reads it: the same files (linked), the
    tokenizer class transformers 5 writes ("TokenizersBackend", unknown to 4.x) named as SmolLM2's own."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name != "tokenizer_config.json" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "GPT2Tokenizer"}))
    return out


def peer_step_times(name: str, python: str, model_dir: str, pairs: list[dict], cfg, work: Path) -> tuple:
    """(mean seconds per step or None, note) of one peer on the pairs peftflow trained on."""
    if not python or not Path(python).is_file():
        return None, f"no side environment at {python!r}"
    train_idx, _ = split_rows(len(pairs), cfg)  # the rows peftflow's prepared data trains on
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "model": model_dir,
        "pairs": [pairs[i] for i in train_idx],
        "out": str(work / "out"),
        "batch": cfg.per_device_train_batch_size,
        "steps": cfg.max_steps,
        "lr": cfg.learning_rate,
        "beta": cfg.pref_beta,
        "cutoff": cfg.cutoff_len,
        "precompute": "precompute" in name,
    }
    if name.startswith("LLaMA-Factory"):
        spec["model"] = str(for_transformers_4(Path(model_dir), work / "model"))
        (work / "pairs.json").write_text(json.dumps(spec["pairs"]))
        columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
        info = {"pairs": {"file_name": "pairs.json", "ranking": True, "columns": columns}}
        (work / "dataset_info.json").write_text(json.dumps(info))
        (work / "spec.json").write_text(json.dumps(lf_args(spec, work)))
        script = LF_SCRIPT
    else:
        (work / "spec.json").write_text(json.dumps(spec))
        script = TRL_SCRIPT
    (work / "run.py").write_text(script)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    env |= {"DISABLE_VERSION_CHECK": "1", "HF_HOME": str(work / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [python, str(work / "run.py"), str(work / "spec.json")], capture_output=True, text=True, env=env, cwd=work
    )
    (work / "log.txt").write_text(proc.stdout + proc.stderr)
    found = [line for line in proc.stdout.splitlines() if line.startswith("STEP_SECONDS ")]
    if proc.returncode or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"{name} did not run (exit {proc.returncode}): {tail[0][:300]}; log {work / 'log.txt'}", flush=True)
        return None, f"did not run: {tail[0][:120]}"
    seconds = json.loads(found[-1][len("STEP_SECONDS ") :])
    print(f"{name}: {seconds}", flush=True)
    note = "reference forward every step (adapter off)" if "precompute" not in name else "reference log-probs once"
    return (sum(seconds) / len(seconds) if seconds else None), note
