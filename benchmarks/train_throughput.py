"""peftflow's train step against the strongest references, side by side, in one invocation.

Every side trains LoRA r8 / alpha 16 on every linear layer of SmolLM2-135M-Instruct over the same
160 rows of LLaMA-Factory's alpaca demo (one epoch = 20 steps of batch 8, cutoff 256, lr 2e-4
cosine, no warm-up, seed 42), each in its own child process, so that peak RSS is that side's alone:

  peftflow                 the train step, defaults
  peftflow-checkpointing   the same with `gradient_checkpointing: true` (memory for time)
  trainer-bf16             peft + HF Trainer with the two flags a competent user adds: bf16=True, length grouping
  trainer-fp32             the same recipe as peft's docs write it (fp32)
  llamafactory             `llamafactory-cli train` with `bf16: true` (weights in bf16), when --llamafactory
                           names the python of its own virtual environment (docs/performance.md says how)

Sides run in rounds (A B C D, A B C D, ...) so that noise shows; medians are quoted. Each side's
adapter is then scored by one function (`held_out_loss`: stock loss, fp32 base) on the same 32
held-out rows. Printed: train seconds (the training loop), supervised tokens/s (the 160 rows'
label tokens, one count for every side), peak RSS of the side's process, held-out loss; then
peftflow's ratios against the fastest and the leanest peer. Usage:
  .venv/bin/python benchmarks/train_throughput.py --rounds 2 --llamafactory /work/lf-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / ".." / "shared" / "fixtures" / "llamafactory"
MODEL = "builtin:smollm2-135m-instruct"
TRAIN_ROWS, HELD_OUT, BATCH, CUTOFF, LR, RANK, ALPHA, SEED = 160, 32, 8, 256, 2e-4, 8, 16, 42
STEPS = TRAIN_ROWS // BATCH
PEERS = ("trainer-bf16", "trainer-fp32", "llamafactory")


def model_path() -> str:
    from peftflow.models.resolve import resolve_model

    return resolve_model(MODEL).path


def write_dataset(work: Path) -> tuple[Path, list[dict]]:
    """The first 160 demo rows as a LLaMA-Factory dataset dir (both peftflow and LLaMA-Factory read
    it), and the next 32 rows: the held-out set."""
    rows = json.loads((FIXTURES / "alpaca_en_demo.json").read_text())
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "bench_train.json").write_text(json.dumps(rows[:TRAIN_ROWS]))
    (data / "dataset_info.json").write_text(json.dumps({"bench_train": {"file_name": "bench_train.json"}}))
    return data, rows[TRAIN_ROWS : TRAIN_ROWS + HELD_OUT]


def chat_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """The usual recipe: chat-template the prompt, append the answer and end-of-turn, mask the prompt."""
    out = []
    for r in rows:
        user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(r["output"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids = (p_ids + a_ids)[:CUTOFF]
        labels = ([-100] * len(p_ids) + a_ids)[:CUTOFF]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


def held_out_loss(adapter_dir: str, rows: list[dict]) -> float:
    """Stock loss (mean over label tokens) of the fp32 base + adapter on `rows`: one yardstick for every side."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path()), adapter_dir).eval()
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    encoded, total, count = chat_rows(tokenizer, rows), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), 8):
            batch = collate(encoded[i : i + 8])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / count


def train_trainer(work: Path, data: Path, bf16: bool) -> float:
    """peft + Trainer: fp32 as peft's docs write it, or with bf16 autocast and length grouping."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    rows = chat_rows(tokenizer, json.loads((data / "bench_train.json").read_text()))
    set_seed(SEED)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_path()),
        LoraConfig(task_type="CAUSAL_LM", r=RANK, lora_alpha=ALPHA, target_modules="all-linear"),
    )
    fast = dict(bf16=True, use_cpu=True, train_sampling_strategy="group_by_length") if bf16 else {}
    args = TrainingArguments(
        output_dir=str(work / "out"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        disable_tqdm=True,
        **fast,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
    )
    seconds = trainer.train().metrics["train_runtime"]
    model.save_pretrained(work / "adapter")
    return seconds


def train_peftflow(work: Path, data: Path, checkpointing: bool) -> float:
    from peftflow.config import RunConfig
    from peftflow.data import prepare_dataset
    from peftflow.training.run import run as train_run

    cfg = RunConfig(
        model_name_or_path=MODEL,
        dataset="bench_train",
        dataset_dir=str(data),
        cutoff_len=CUTOFF,
        val_size=0,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        lora_rank=RANK,
        lora_alpha=ALPHA,
        lora_target="all",
        seed=SEED,
        logging_steps=5,
        save_steps=10_000,
        **({"gradient_checkpointing": True} if checkpointing else {}),
    )
    prepared = prepare_dataset(cfg, model_path())
    result = train_run(cfg, model_path(), prepared.path, work / "run")
    Path(result.adapter_dir).rename(work / "adapter")
    return result.train_seconds


def train_llamafactory(work: Path, data: Path, python: str) -> float:
    """LLaMA-Factory's own CLI in its own environment; its Trainer reports the loop's seconds."""
    config = {
        "model_name_or_path": model_path(),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "lora_target": "all",
        "dataset": "bench_train",
        "dataset_dir": str(data),
        "template": "smollm2",
        "cutoff_len": CUTOFF,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(work / "adapter"),
        "logging_steps": 5,
        "save_strategy": "no",
        "per_device_train_batch_size": BATCH,
        "max_steps": STEPS,
        "learning_rate": LR,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "bf16": True,
        "use_cpu": True,
        "report_to": "none",
        "seed": SEED,
    }
    (work / "lf.yaml").write_text(json.dumps(config))  # JSON is YAML; its .json reader is broken
    cli = Path(python).parent / "llamafactory-cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(cli), "train", str(work / "lf.yaml")], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"llamafactory failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((work / "adapter" / "train_results.json").read_text())["train_runtime"]


def child(side: str, work: Path, data: Path, llamafactory: str | None) -> None:
    """One side in this process; prints its train seconds and peak RSS (the LLaMA-Factory
    side's peak is its CLI process's, the only child this process waits for)."""
    work.mkdir(parents=True)
    if side == "llamafactory":
        seconds = train_llamafactory(work, data, llamafactory)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    else:
        seconds = (
            train_peftflow(work, data, side == "peftflow-checkpointing")
            if side.startswith("peftflow")
            else train_trainer(work, data, side == "trainer-bf16")
        )
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}), flush=True)


def measure(side: str, work: Path, data: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--data", str(data)]
    if args.llamafactory:
        cmd += ["--llamafactory", args.llamafactory]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "adapter": str(work / "adapter")}


def supervised_tokens(data: Path) -> int:
    from transformers import AutoTokenizer

    rows = chat_rows(AutoTokenizer.from_pretrained(model_path()), json.loads((data / "bench_train.json").read_text()))
    return sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows)


def report(runs: dict[str, list[dict]], tokens: int) -> None:
    med = {
        side: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mb", "held_out")}
        for side, rs in runs.items()
    }
    print(f"{'side':22} {'train s':>8} {'tokens/s':>9} {'peak MB':>8} {'held-out':>9}   per round (train s / peak MB)")
    for side, m in med.items():
        rounds = ", ".join(f"{r['seconds']:.1f} / {r['peak_mb']:.0f}" for r in runs[side])
        print(
            f"{side:22} {m['seconds']:8.1f} {tokens / m['seconds']:9.1f} {m['peak_mb']:8.0f} {m['held_out']:9.4f}   "
            f"{rounds}"
        )
    peers = [side for side in med if side in PEERS]
    fastest = min(peers, key=lambda s: med[s]["seconds"])
    leanest = min(peers, key=lambda s: med[s]["peak_mb"])
    best_loss = min(med[s]["held_out"] for s in peers)
    for side in (s for s in med if s.startswith("peftflow")):
        ours = med[side]
        print(
            f"{side} vs the fastest peer ({fastest}): {med[fastest]['seconds'] / ours['seconds']:.2f}x the train "
            "speed; "
            f"vs the leanest peer ({leanest}): {ours['peak_mb'] / med[leanest]['peak_mb']:.2f}x the peak memory; "
            f"held-out loss {ours['held_out'] / best_loss:.4f}x the best peer's"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sides", default="peftflow,trainer-bf16,trainer-fp32,llamafactory,peftflow-checkpointing")
    ap.add_argument("--llamafactory", help="python of a virtual environment with llamafactory installed")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args.side, args.work, args.data, args.llamafactory)
    sides = [s for s in args.sides.split(",") if s != "llamafactory" or args.llamafactory]
    work = Path(tempfile.mkdtemp(prefix="peftflow-throughput-"))
    os.environ.setdefault("PEFTFLOW_HOME", str(work / "home"))  # the prepared-data cache, for the children too
    data, held_out = write_dataset(work)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for n in range(args.rounds):
        for side in sides:
            runs[side].append(measure(side, work / f"{side}-{n}", data, args))
            print(
                f"round {n + 1} {side}: {runs[side][-1]['seconds']:.1f} s, {runs[side][-1]['peak_mb']:.0f} MB",
                flush=True,
            )
    for rs in runs.values():
        for r in rs:
            r["held_out"] = held_out_loss(r["adapter"], held_out)
    print(
        f"{TRAIN_ROWS} rows, {STEPS} steps of batch {BATCH}, cutoff {CUTOFF}, LoRA r{RANK} all-linear, "
        f"{args.rounds} rounds, medians; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    report(runs, supervised_tokens(data))


if __name__ == "__main__":
    main()
