"""peftflow's train step against the strongest references, side by side, in one invocation.

Every side trains LoRA r8 / alpha 16 on every linear layer of SmolLM2-135M-Instruct over the same
160 rows of LLaMA-Factory's alpaca demo (one epoch: 20 steps of batch 8 unpacked, cutoff 256, lr 2e-4
cosine, no warm-up, seed 42), at each LoRA dropout of --dropout (0 and LLaMA-Factory users' 0.05),
each in its own child process, so that peak RSS is that side's alone:

  peftflow                 the train step, defaults
  peftflow-packed          the same with `neat_packing: true` (rows packed into cutoff-long sequences, each
                           attending only to itself): fewer, fuller batches
  peftflow-checkpointing   the same as peftflow with `gradient_checkpointing: true` (memory for time)
  trainer-bf16             peft + HF Trainer with the two flags a competent user adds: bf16=True, length grouping
                           (bf16 only where the machine runs bf16 matmuls fast, as peftflow decides; else fp32)
  trainer-fp32             the same recipe as peft's docs write it (fp32)
  llamafactory             `llamafactory-cli train` with `bf16: true` (weights in bf16; fp32 where bf16 is slow),
                           when --llamafactory names the python of its own virtual environment (docs/performance.md)
  llamafactory-neat        the same with `neat_packing: true`

Sides run in rounds (A B C D, A B C D, ...) so that noise shows; medians are quoted. Each side's
adapter is then scored by one function (`held_out_loss`: stock loss, fp32 base) on the same 32
held-out rows. Printed: train seconds (the training loop), supervised tokens/s (the 160 rows'
label tokens, one count for every side), peak RSS of the side's process, held-out loss; then
peftflow's ratios against the fastest and the leanest peer. Usage:
  .venv/bin/python benchmarks/train_throughput.py --rounds 1 --llamafactory /work/lf-venv/bin/python
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
PEERS = ("trainer-bf16", "trainer-fp32", "llamafactory", "llamafactory-neat")


def fast_bf16() -> bool:
    """Whether this machine runs bf16 matmuls fast (peftflow's own rule): without, a bf16 side would
    measure an emulated dtype no one trains in."""
    import torch

    from peftflow.training.arguments import _cpu_has_fast_bf16

    return torch.cuda.is_available() or _cpu_has_fast_bf16()


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


def train_trainer(work: Path, data: Path, bf16: bool, dropout: float) -> float:
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
        LoraConfig(task_type="CAUSAL_LM", r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, target_modules="all-linear"),
    )
    fast = dict(bf16=fast_bf16(), use_cpu=True, train_sampling_strategy="group_by_length") if bf16 else {}
    args = TrainingArguments(
        output_dir=str(work / "out"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
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


def train_peftflow(work: Path, data: Path, variant: str, dropout: float) -> float:
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
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        lora_rank=RANK,
        lora_alpha=ALPHA,
        lora_dropout=dropout,
        lora_target="all",
        seed=SEED,
        logging_steps=5,
        save_steps=10_000,
        **({"gradient_checkpointing": True} if variant == "checkpointing" else {}),
        **({"neat_packing": True} if variant == "packed" else {}),
    )
    prepared = prepare_dataset(cfg, model_path())
    result = train_run(cfg, model_path(), prepared.path, work / "run")
    Path(result.adapter_dir).rename(work / "adapter")
    return result.train_seconds


def train_llamafactory(work: Path, data: Path, python: str, neat: bool, dropout: float) -> float:
    """LLaMA-Factory's own CLI in its own environment; its Trainer reports the loop's seconds."""
    config = {
        "model_name_or_path": model_path(),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": dropout,
        "lora_target": "all",
        "neat_packing": neat,
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
        "num_train_epochs": 1,
        "learning_rate": LR,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "bf16": fast_bf16(),
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


def child(side: str, work: Path, data: Path, llamafactory: str | None, dropout: float) -> None:
    """One side in this process; prints its train seconds and peak RSS (the LLaMA-Factory
    side's peak is its CLI process's, the only child this process waits for)."""
    work.mkdir(parents=True)
    if side.startswith("llamafactory"):
        seconds = train_llamafactory(work, data, llamafactory, side == "llamafactory-neat", dropout)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    else:
        seconds = (
            train_peftflow(work, data, side.removeprefix("peftflow").removeprefix("-"), dropout)
            if side.startswith("peftflow")
            else train_trainer(work, data, side == "trainer-bf16", dropout)
        )
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}), flush=True)


def measure(side: str, dropout: float, work: Path, data: Path, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--work",
        str(work),
        "--data",
        str(data),
        "--dropout",
        str(dropout),
    ]
    if args.llamafactory:
        cmd += ["--llamafactory", args.llamafactory]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "adapter": str(work / "adapter")}


def token_counts(data: Path) -> dict:
    """The 160 rows as every side encodes them (the tokenizer's chat template; LLaMA-Factory's
    `smollm2` template gives the same tokens to within 0.3% of supervised tokens)."""
    from transformers import AutoTokenizer

    rows = chat_rows(AutoTokenizer.from_pretrained(model_path()), json.loads((data / "bench_train.json").read_text()))
    lengths = sorted(len(r["input_ids"]) for r in rows)
    return {
        "tokens": sum(lengths),
        "supervised": sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows),
        "median": lengths[len(lengths) // 2],
        "longest": lengths[-1],
        "cut": sum(1 for n in lengths if n == CUTOFF),
    }


def machine(llamafactory: str | None) -> str:
    """What decides a figure besides the recipe: threads, the CPU's bf16 support, versions."""
    import peft
    import torch
    import transformers

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16", "avx512f") if f in flags] or ["no avx512/amx"]
    line = (
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, CPU flags {' '.join(bf16)} "
        f"(peers in {'bf16' if fast_bf16() else 'fp32: no fast bf16 here'}); "
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    )
    if llamafactory:
        code = (
            "import llamafactory, torch, transformers, peft; "
            "print(llamafactory.__version__, torch.__version__, transformers.__version__, peft.__version__)"
        )
        out = subprocess.run(
            [llamafactory, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}
        )
        line += "; LLaMA-Factory side: llamafactory {} torch {} transformers {} peft {}".format(
            *(out.stdout.split() or ["?"] * 4)
        )
    return line


def report(runs: dict[tuple[str, float], list[dict]], tokens: int) -> None:
    med = {
        key: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mb", "held_out")}
        for key, rs in runs.items()
    }
    print(
        f"{'side':22} {'dropout':>7} {'train s':>8} {'tokens/s':>9} {'peak MB':>8} {'held-out':>9}   per round (s / MB)"
    )
    for (side, dropout), m in med.items():
        rounds = ", ".join(f"{r['seconds']:.1f} / {r['peak_mb']:.0f}" for r in runs[side, dropout])
        print(
            f"{side:22} {dropout:7.2f} {m['seconds']:8.1f} {tokens / m['seconds']:9.1f} {m['peak_mb']:8.0f} "
            f"{m['held_out']:9.4f}   {rounds}"
        )
    for dropout in sorted({d for _, d in med}):
        peers = [key for key in med if key[1] == dropout and key[0] in PEERS]
        if not peers:
            continue
        fastest = min(peers, key=lambda k: med[k]["seconds"])
        leanest = min(peers, key=lambda k: med[k]["peak_mb"])
        best_loss = min(med[k]["held_out"] for k in peers)
        for key in (k for k in med if k[1] == dropout and k[0].startswith("peftflow")):
            ours = med[key]
            print(
                f"dropout {dropout:g}: {key[0]} vs the fastest peer ({fastest[0]}): "
                f"{med[fastest]['seconds'] / ours['seconds']:.2f}x the train speed; vs the leanest peer "
                f"({leanest[0]}): {ours['peak_mb'] / med[leanest]['peak_mb']:.2f}x the peak memory; "
                f"held-out loss {ours['held_out'] / best_loss:.4f}x the best peer's"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--sides", default="peftflow,peftflow-packed,peftflow-checkpointing,trainer-bf16,llamafactory,llamafactory-neat"
    )
    ap.add_argument("--dropout", default="0,0.05", help="LoRA dropouts, each run by every side")
    ap.add_argument("--llamafactory", help="python of a virtual environment with llamafactory installed")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args.side, args.work, args.data, args.llamafactory, float(args.dropout))
    sides = [s for s in args.sides.split(",") if not s.startswith("llamafactory") or args.llamafactory]
    dropouts = [float(d) for d in args.dropout.split(",")]
    work = Path(tempfile.mkdtemp(prefix="peftflow-throughput-"))
    os.environ.setdefault("PEFTFLOW_HOME", str(work / "home"))  # the prepared-data cache, for the children too
    data, held_out = write_dataset(work)
    counts = token_counts(data)
    print(machine(args.llamafactory), flush=True)
    runs: dict[tuple[str, float], list[dict]] = {(side, d): [] for d in dropouts for side in sides}
    for n in range(args.rounds):
        for side, dropout in runs:
            runs[side, dropout].append(measure(side, dropout, work / f"{side}-{dropout}-{n}", data, args))
            print(
                f"round {n + 1} {side} dropout {dropout}: {runs[side, dropout][-1]['seconds']:.1f} s, "
                f"{runs[side, dropout][-1]['peak_mb']:.0f} MB",
                flush=True,
            )
    for rs in runs.values():
        for r in rs:
            r["held_out"] = held_out_loss(r["adapter"], held_out)
    print(
        f"{TRAIN_ROWS} rows ({counts['tokens']} tokens, {counts['supervised']} supervised; median {counts['median']}, "
        f"longest {counts['longest']}, {counts['cut']} cut at {CUTOFF}), one epoch of batch {BATCH} ({STEPS} steps "
        f"unpacked), LoRA r{RANK} all-linear; peftflow: the tokenizer's template, LLaMA-Factory: smollm2; "
        f"{args.rounds} rounds, medians; load average at the end {os.getloadavg()[0]:.1f}"
    )
    report(runs, counts["supervised"])


if __name__ == "__main__":
    main()
