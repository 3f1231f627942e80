"""peftflow's train stage against the plain peft + HF Trainer recipe, on the same work.

Both sides train LoRA r=8 on every linear layer of SmolLM2-135M-Instruct over the LLaMA-Factory
alpaca demo rows (chat template, prompt masked, cutoff 256), with the same batch size, learning
rate and number of optimizer steps. Each side runs in its own child process so peak memory
(ru_maxrss) is that side's alone. Printed per side: supervised (label) tokens per second over
the training loop and per CPU second (user + system time of the process: steadier than wall time
on a machine shared with other jobs), peak process memory, final training loss, last gradient
norm, and the loss of the trained model on 32 fixed rows scored the same way for both (stock loss, fp32). Then the
ratios peftflow / reference. Usage:
  .venv/bin/python benchmarks/train_throughput.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftflow.training.run import run as train_run
from peftflow.training.trainer import MetricsCallback

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / ".." / "shared" / "fixtures" / "llamafactory"
MODEL = "builtin:smollm2-135m-instruct"
CUTOFF, LR, EVAL_ROWS = 256, 2e-4, 32


def reference_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """The usual recipe: chat-template the prompt, append the answer and end-of-turn, mask the prompt."""
    out = []
    for r in rows:
        user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(r["output"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids = (p_ids + a_ids)[:CUTOFF]
        labels = ([-100] * len(p_ids) + a_ids)[:CUTOFF]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


def eval_loss(model, tokenizer, rows: list[dict]) -> float:
    """Stock loss (mean over label tokens) of `rows`, fp32, batches of 8: the same yardstick for both sides."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            batch = collate(rows[i:i + 8])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / count


def _load_rows():
    return json.loads((FIXTURES / "alpaca_en_demo.json").read_text())


def run_reference(steps: int, batch: int, work: Path) -> dict:
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

    from peftflow.models.resolve import resolve_model

    path = resolve_model(MODEL).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = reference_rows(tokenizer, _load_rows())
    set_seed(42)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    seen = [0]
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def counting_collate(features):
        out = collate(features)
        seen[0] += int((out["labels"][:, 1:] != -100).sum())
        return out

    args = TrainingArguments(output_dir=str(work / "ref"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=LR, lr_scheduler_type="cosine", logging_steps=1, save_strategy="no",
                             report_to=[], seed=42, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), data_collator=counting_collate)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return _summary(seen[0], seconds, cpu, logs, eval_loss(model, tokenizer, rows[-EVAL_ROWS:]))


def run_peftflow(steps: int, batch: int, work: Path, overrides: dict) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftflow.config import RunConfig
    from peftflow.data import prepare_dataset
    from peftflow.models.resolve import resolve_model

    path = resolve_model(MODEL).path
    cfg = RunConfig(model_name_or_path=MODEL, dataset="alpaca_en_demo", dataset_dir=str(FIXTURES), cutoff_len=CUTOFF,
                    val_size=0, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
                    logging_steps=1, save_steps=10_000, **overrides)
    data = prepare_dataset(cfg, path)
    logs = []
    cpu = time.process_time()  # includes train_run's model loading: counts against peftflow
    result = train_run(cfg, path, data.path, work / "peftflow",
                       callbacks=(MetricsCallback(lambda step, m: logs.append(m) if "loss" in m else None),))
    cpu = time.process_time() - cpu
    tokenizer = AutoTokenizer.from_pretrained(path)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), result.adapter_dir)
    rows = reference_rows(tokenizer, _load_rows())[-EVAL_ROWS:]
    return _summary(result.supervised_tokens, result.train_seconds, cpu, logs, eval_loss(tuned, tokenizer, rows))


def _summary(tokens: int, seconds: float, cpu: float, logs: list[dict], held_out: float) -> dict:
    tail = [h["loss"] for h in logs[-3:]]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": sum(tail) / len(tail), "grad_norm": logs[-1].get("grad_norm", 0.0),
            "zero_grad_steps": sum(1 for h in logs if not h.get("grad_norm")), "eval_loss": held_out}


def child(args) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"peftflow-bench-{args.side}-"))
    overrides = json.loads(args.overrides)
    out = (run_reference(args.steps, args.batch, work) if args.side == "reference"
           else run_peftflow(args.steps, args.batch, work, overrides))
    print("RESULT " + json.dumps(out), flush=True)


def measure(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--batch", str(args.batch),
           "--overrides", args.overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--overrides", default="{}", help="JSON RunConfig overrides for the peftflow side, "
                                                       'e.g. \'{"bf16_autocast": false}\'')
    ap.add_argument("--side", choices=["reference", "peftflow"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args)
    results = {side: measure(side, args) for side in ("reference", "peftflow")}
    print(f"steps {args.steps}, batch {args.batch}, cutoff {CUTOFF}, peftflow overrides {args.overrides}, "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':10} {'tokens/s':>9} {'tok/CPU-s':>9} {'peak MB':>8} {'final loss':>10} {'eval loss':>9} {'grad norm':>9} {'tokens':>7} {'train s':>7}")
    for side, r in results.items():
        print(f"{side:10} {r['tokens_per_s']:9.1f} {r['tokens_per_cpu_s']:9.2f} {r['peak_mb']:8.0f} {r['final_loss']:10.4f} {r['eval_loss']:9.4f} "
              f"{r['grad_norm']:9.4f} {r['tokens']:7d} {r['seconds']:7.1f}")
        if r["zero_grad_steps"]:
            print(f"INVALID {side}: {r['zero_grad_steps']} steps logged a zero gradient norm")
    ref, ours = results["reference"], results["peftflow"]
    print(f"ratios peftflow/reference: tokens/s {ours['tokens_per_s'] / ref['tokens_per_s']:.2f}x, "
          f"tokens per CPU second {ours['tokens_per_cpu_s'] / ref['tokens_per_cpu_s']:.2f}x, "
          f"peak memory {ours['peak_mb'] / ref['peak_mb']:.2f}x, final loss {ours['final_loss'] / ref['final_loss']:.3f}x, "
          f"eval loss {ours['eval_loss'] / ref['eval_loss']:.3f}x")


if __name__ == "__main__":
    main()
