"""Does DPO fix what the SFT model learnt wrong, and what does a DPO step cost beside TRL and LLaMA-Factory?

One invocation, on the built-in preference task (peftflow/builtin/preferences.py):

1. SFT: SmolLM2-135M-Instruct + LoRA on `demo_orders_mixed` (the customer written "Last, First" in
   half the answers), merged.
2. DPO (`stage: dpo`, configs/dpo.yaml's recipe) on `demo_order_pairs` starting from the merged SFT
   model (chosen: the house style "First Last"; rejected: the name reversed).
3. Both generate on `--held-out` new order messages (make_rows with their own seed, none in either
   training set). Per row: the house-style hit (the JSON's customer is "First Last" exactly as in the
   message; the targeted property) and the other fields' score (item, quantity, city right; 0 when the
   answer is not JSON). DPO minus SFT with 95% paired bootstrap intervals (peftflow.promotion).
4. Step time of one DPO step on the same pairs, model (the merged SFT dir), LoRA (rank 8, alpha 16,
   all linear layers), batch and cutoff, fp32: peftflow against TRL's DPOTrainer and LLaMA-Factory's
   `stage: dpo` (its `llamafactory-cli train` entry, `run_exp`), each run as a subprocess of its own
   side environment (never a peftflow dependency). A peer that cannot run is reported and skipped.

Side environments (setup, once, with network; the benchmark itself runs offline):
  python3 -m venv /work/side-envs/trl && /work/side-envs/trl/bin/pip install torch==2.13.0 'trl==1.16.*' peft
  python3 -m venv /work/side-envs/lf && /work/side-envs/lf/bin/pip install torch==2.13.0 transformers==4.57.1 \
      peft==0.18.1 accelerate==1.11.0 datasets==4.0.0 trl==0.24.0 einops fire omegaconf pandas protobuf \
      pydantic pyyaml scipy sentencepiece tiktoken 'tyro<0.9.0' packaging matplotlib \
    && /work/side-envs/lf/bin/pip install --no-deps llamafactory==0.9.5
  LLaMA-Factory 0.9.5 pins transformers<=5.6, trl<=0.24 and peft<=0.18.1 and asks for torchvision and
  torchaudio; --no-deps keeps the machine's CPU torch 2.13.0. Its data/mm_plugin.py imports torchaudio at
  module level and no torchaudio release loads beside torch 2.13, so the side environment gets a stub
  package `torchaudio/__init__.py` (the text-only DPO path never calls it):
    echo 'def __getattr__(name): raise ImportError(name)' > \
      /work/side-envs/lf/lib/python3.11/site-packages/torchaudio/__init__.py   (after mkdir -p of that dir)

Usage (writes the tables into docs/preference.md with --write):
  PYTHONPATH=. .venv/bin/python benchmarks/preference_benchmark.py \
      --trl-python /work/side-envs/trl/bin/python --lf-python /work/side-envs/lf/bin/python --write
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from preference_peers import PEERS, StepTimer, peer_step_times

from peftflow import merge
from peftflow.builtin.datasets import FIELDS, make_rows
from peftflow.builtin.preferences import make_mixed_rows, make_pairs
from peftflow.config import RunConfig, load_config
from peftflow.data import prepare_dataset
from peftflow.evaluation.scoring import score_model
from peftflow.models.resolve import resolve_model
from peftflow.promotion import paired_bootstrap
from peftflow.stages import get_workflow
from peftflow.training.run import run as train_run

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 101  # held-out messages, apart from the SFT rows' (0) and the pairs' (23)
OTHER = tuple(f for f in FIELDS if f != "customer")


def held_out_rows(n: int) -> list[dict]:
    """`n` order rows on messages in neither training set (the chosen answers: the house style)."""
    seen = {r["input"] for r in make_mixed_rows(640) + make_pairs(1024)}
    return [r for r in make_rows(2 * n, HELD_OUT_SEED) if r["input"] not in seen][:n]


def write_held_out(root: Path, n: int) -> Path:
    """A dataset dir whose `held_out` entry holds n rows, all in its eval split (plus 4 that train nothing)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "held_out.json").write_text(json.dumps(held_out_rows(n + 4)))
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    (root / "dataset_info.json").write_text(
        json.dumps({"held_out": {"file_name": "held_out.json", "columns": columns}})
    )
    return root


def row_scores(prediction: str, reference: str) -> tuple[float, float, float]:
    """(house-style hit, other fields' share right, valid JSON) of one generated answer."""
    expected = json.loads(reference)
    try:
        got = json.loads(prediction.strip())
    except json.JSONDecodeError:
        return 0.0, 0.0, 0.0
    if not isinstance(got, dict):
        return 0.0, 0.0, 0.0
    other = sum(got.get(k) == expected[k] for k in OTHER) / len(OTHER)
    return float(got.get("customer") == expected["customer"]), other, 1.0


def evaluate(label: str, model_dir: str, data_path: str, cfg: RunConfig) -> dict:
    scored = score_model(label, model_dir, data_path, cfg)
    rows = [row_scores(e["prediction"], e["reference"]) for e in scored.examples]
    house, other, valid = (list(col) for col in zip(*rows))
    print(f"{label}: house style {mean(house):.3f}, other fields {mean(other):.3f}, json {mean(valid):.3f}", flush=True)
    return {"house": house, "other": other, "valid": valid, "examples": scored.examples}


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def train_sft(args, work: Path, base: str) -> str:
    cfg = RunConfig(
        dataset="demo_orders_mixed",
        dataset_dir="builtin",
        val_size=32,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=args.sft_steps,
        lr_scheduler_type="cosine",
        logging_steps=10,
        save_steps=10_000,
    )
    result = train_run(cfg, base, prepare_dataset(cfg, base).path, work / "sft")
    return merge.merge(base, result.adapter_dir, work / "sft" / "merged", tolerance=1e-3).merged_dir


def dpo_config(args, sft_dir: str, **update) -> RunConfig:
    """configs/dpo.yaml's recipe, started from the SFT model, without its registry sections."""
    recipe, _ = load_config(ROOT / "configs" / "dpo.yaml")
    keep = {k: v for k, v in recipe.model_dump(exclude_unset=True).items() if k not in ("registry", "promotion")}
    overrides = {k: v for k, v in vars(args).items() if k in ("pref_beta", "pref_ftx", "learning_rate") and v}
    if args.dpo_steps:
        overrides["max_steps"] = args.dpo_steps
    return RunConfig(**(keep | overrides | {"model_name_or_path": sft_dir, "save_steps": 10_000} | update))


def train_dpo(cfg: RunConfig, work: Path, callbacks=()) -> tuple[str, float]:
    """(adapter dir, seconds) of a DPO run on cfg."""
    models = get_workflow(cfg).resolve(cfg)
    data = prepare_dataset(cfg, models.model.path)
    start = time.perf_counter()
    result = train_run(
        cfg, models.model.path, data.path, work, callbacks, trainer_factory=get_workflow(cfg).trainer(cfg, models)
    )
    return result.adapter_dir, time.perf_counter() - start


def quality_table(sft: dict, dpo: dict, cfg: RunConfig, n: int) -> str:
    lines = [
        f"**DPO vs its SFT parent** ({n} held-out order messages, greedy, max 48 new tokens)",
        "",
        '| model | house style (customer "First Last") | other fields (item, quantity, city) | valid JSON |',
        "|---|---|---|---|",
    ]
    for label, s in (("SFT parent", sft), (f"DPO child ({cfg.max_steps} steps)", dpo)):
        lines.append(f"| {label} | {mean(s['house']):.3f} | {mean(s['other']):.3f} | {mean(s['valid']):.3f} |")
    lines.append("")
    for key, name in (("house", "house style"), ("other", "other fields"), ("valid", "valid JSON")):
        diff, lower, upper = paired_bootstrap(dpo[key], sft[key], samples=10_000, confidence=0.95)
        verdict = "excludes" if lower > 0 or upper < 0 else "includes"
        lines.append(
            f"- {name}: DPO - SFT {diff:+.3f}, 95% paired bootstrap interval [{lower:+.3f}, {upper:+.3f}] "
            f"({verdict} zero)"
        )
    return "\n".join(lines)


def timing_table(times: dict[str, tuple[float | None, str]], steps: int, batch: int, cutoff: int) -> str:
    ours = times["peftflow"][0]
    lines = [
        f"**DPO step time** (mean of steps 2..{steps}, batch {batch} pairs, cutoff {cutoff}, LoRA rank 8 alpha 16 "
        "on all linear layers, fp32, sigmoid loss, beta 0.1; same merged SFT model and pairs)",
        "",
        "| trainer | s/step | peftflow / peer | note |",
        "|---|---|---|---|",
    ]
    for name, (seconds, note) in times.items():
        ratio = f"{ours / seconds:.2f}" if seconds and ours else "-"
        shown = f"{seconds:.2f}" if seconds else "did not run"
        lines.append(f"| {name} | {shown} | {ratio if name != 'peftflow' else '1.00'} | {note} |")
    return "\n".join(lines)


def step_times(args, sft_dir: str, work: Path) -> dict[str, tuple[float | None, str]]:
    """peftflow's and each peer's mean step time on the same pairs and settings."""
    steps = args.timing_steps
    cfg = dpo_config(
        args,
        sft_dir,
        max_steps=steps,
        learning_rate=5e-5,
        pref_beta=0.1,
        pref_ftx=0.0,
        bf16_autocast=False,
        lr_scheduler_type="constant",
        logging_steps=1,
        max_samples=64,  # 48 training pairs after val_size: every trainer's (and TRL's precomputed) reference is short
        val_size=16,
    )
    timer = StepTimer()
    train_dpo(cfg, work / "peftflow", (timer,))
    times = {"peftflow": (timer.mean(), "reference log-probs computed once before step 1, not per step")}
    pairs = make_pairs(1024)[: cfg.max_samples] if cfg.max_samples else make_pairs(1024)
    for i, name in enumerate(PEERS):
        if args.peers and str(i) not in args.peers.split(","):
            continue
        python = args.lf_python if name.startswith("LLaMA") else args.trl_python
        times[name] = peer_step_times(name, python, sft_dir, pairs, cfg, work / f"peer-{i}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 held-out rows, 20 SFT steps, 3 timed steps: a smoke run")
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--sft-steps", type=int, default=60)
    ap.add_argument("--sft-dir", help="a merged SFT model from an earlier run (skips step 1)")
    ap.add_argument("--dpo-steps", type=int, help="override configs/dpo.yaml's max_steps")
    ap.add_argument("--learning-rate", type=float, dest="learning_rate")
    ap.add_argument("--pref-beta", type=float, dest="pref_beta")
    ap.add_argument("--pref-ftx", type=float, dest="pref_ftx")
    ap.add_argument("--timing-steps", type=int, default=6)
    ap.add_argument("--trl-python", default="/work/side-envs/trl/bin/python")
    ap.add_argument("--lf-python", default="/work/side-envs/lf/bin/python")
    ap.add_argument("--parts", default="quality,timing")
    ap.add_argument("--peers", help="which peers to time, by number (0 TRL, 1 TRL precomputed, 2 LLaMA-Factory)")
    ap.add_argument("--write", action="store_true", help="write the tables into docs/preference.md")
    args = ap.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("peftflow.train").setLevel(logging.INFO)  # a line per logging step: loss, lr, eta
    if args.quick:
        args.held_out, args.sft_steps, args.timing_steps = 64, 20, 3

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="peftflow-preference-bench-"))
    base = resolve_model("builtin:smollm2-135m-instruct").path
    sft_dir = args.sft_dir or train_sft(args, work, base)
    tables = {}
    if "quality" in args.parts:
        cfg = dpo_config(args, sft_dir)
        dpo_adapter, seconds = train_dpo(cfg, work / "dpo")
        print(f"DPO: {cfg.max_steps} steps in {seconds:.0f} s", flush=True)
        ecfg = RunConfig(
            dataset="held_out",
            dataset_dir=str(write_held_out(work / "held_out", args.held_out)),
            val_size=args.held_out,
            evaluation={"metric": "json_fields", "max_samples": args.held_out, "max_new_tokens": 48, "batch_size": 40},
        )
        data = prepare_dataset(ecfg, sft_dir)
        sft = evaluate("SFT parent", sft_dir, data.path, ecfg)
        dpo = evaluate("DPO child", dpo_adapter, data.path, ecfg)
        tables["quality"] = quality_table(sft, dpo, cfg, args.held_out)
        print(tables["quality"], flush=True)
    if "timing" in args.parts:
        cfg = dpo_config(args, sft_dir)
        tables["timing"] = timing_table(
            step_times(args, sft_dir, work), args.timing_steps, cfg.per_device_train_batch_size, cfg.cutoff_len
        )
        print(tables["timing"], flush=True)
    machine = f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPU cores, no GPU"
    print(f"machine: {machine}; total {time.perf_counter() - t0:.0f} s; work dir {work}")
    if args.write:
        write_doc(tables, machine)


def write_doc(tables: dict[str, str], machine: str) -> None:
    """Each part's table, with the command that measured it, between its markers in docs/preference.md."""
    command = "PYTHONPATH=. .venv/bin/python benchmarks/preference_benchmark.py " + " ".join(sys.argv[1:])
    doc = ROOT / "docs" / "preference.md"
    text = doc.read_text()
    for part, table in tables.items():
        marker = f"<!-- benchmark:{part} -->"
        body = f"{marker}\nMeasured on {machine} with:\n\n```\n{command}\n```\n\n{table}\n{marker}"
        head, found, rest = text.partition(marker)
        text = head + body + rest.partition(marker)[2] if found else text + "\n" + body + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
