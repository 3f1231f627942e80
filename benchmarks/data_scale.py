"""Data preparation at scale: peftflow's prepare_dataset against LLaMA-Factory's own preprocessing,
at 10k, 100k and 1M alpaca rows, with the same worker count, on this machine.

The data: one jsonl file of generated alpaca rows per size (instruction / input / output; seeded,
so each size is a prefix of the next): instructions of 5 to 40 words, an input of 10 to 200 words on
half the rows, outputs of 20 to 600 words (log-uniform: many short answers, some long), drawn from
a list of common English words; generated once into --work-dir/data/SIZE with a dataset_info.json
and reused. Both sides read that folder, template `qwen` (ChatML), cutoff_len 1024, val_size 0.01,
seed 0, stage sft, the tokenizer of peftflow's builtin:smollm2-135m-instruct (resolved once into
--work-dir/home). Each side and size runs in its own child process:

  peftflow  peftflow.data.prepare.prepare_dataset(RunConfig(...), model dir), in this checkout's
            peftflow (PYTHONPATH), with PEFTFLOW_HOME a fresh folder (an empty prepared-data cache).
            preprocessing_num_workers = --workers where RunConfig has that field; otherwise one
            process (printed). Timed: the whole call: tokenizer load, read, validate, tokenise, mask,
            cut, split, write train/ and eval/ to disk.
  lf        LLaMA-Factory's own code in its side environment (--lf-python; never a peftflow
            dependency): get_train_args(dict) (ModelArguments, DataArguments,
            Seq2SeqTrainingArguments), then timed: load_tokenizer, get_template_and_fix_tokenizer and
            get_dataset(stage="sft") with preprocessing_num_workers = --workers, overwrite_cache: true:
            datasets' json load into Arrow, the train / eval split and the tokenising map passes, whose
            results datasets writes as Arrow cache files (no tokenized_path: nothing saved twice).

Both children get a fresh HF_DATASETS_CACHE, HF_HUB_OFFLINE=1 and no progress bars. The parent
samples from /proc the private memory of the child and every process below it (num_proc's workers):
a lone process's RssAnon, or with workers the summed Pss_Anon (a page forked processes share is split
among them; smaps_rollup walks the page tables, so such samples come every 5x their cost, the
sampler's share of a core bounded); else every 50 ms. Also summed VmRSS. Peak MB: that peak while
the timed call runs (the imports and the loaded tokenizer included); "at start": its value as the
call began. After the call each child counts its output (rows, tokens, supervised tokens per split)
as a cross-check, untimed; with matching templates and cuts both sides' counts agree.

Printed: the machine, each side's versions, the commit; one table (seconds and peak MB per side and
size, peftflow / LF ratios); a detail line per run (CPU seconds too: on a shared machine wall time
also waits for others); each side's growth per 10x rows (time, CPU, peak and added memory). The 1M
size needs tens of GB with a peftflow that holds every row in memory. The side environment, as built
for this benchmark: torch 2.11 so that PyPI's torchvision and torchaudio wheels load (the 2.13 CPU
wheel on this machine's disk is newer than any torchaudio):
  python3 -m venv /work/lf-env && /work/lf-env/bin/pip install torch==2.11.0 torchvision==0.26.0 \
      torchaudio==2.11.0 llamafactory==0.9.5
Usage:
  PYTHONPATH=. .venv/bin/python benchmarks/data_scale.py [--sizes 10k,100k,1m] [--workers 2]
      [--sides peftflow,lf] [--work-dir DIR] [--lf-python /work/lf-env/bin/python]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
CUTOFF, VAL_SIZE, SEED, TEMPLATE, DATASET = 1024, 0.01, 0, "qwen", "alpaca_gen"
MODEL, IGNORE = "builtin:smollm2-135m-instruct", -100
SAMPLE_S, SAMPLE_COST = 0.05, 5  # memory sampled every 50 ms, or every 5x what a sample took when that is longer
WORDS = """the of and to a in is it you that he was for on are with as his they be at one have this from or had by
word but what some we can out other were all there when up use your how said an each she which do their time if will
way about many then them write would like so these her long make thing see him two has look more day could go come did
number sound no most people my over know water than call first who may down side been now find any new work part take
get place made live where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move right boy old too
same tell does set three want air well also play small end put home read hand port large spell add even land here must
big high such follow act why ask men change went light kind off need house picture try us again animal point mother
world near build self earth father head stand own page should country found answer school grow study still learn plant
cover food sun four between state keep eye never last let thought city tree cross farm hard start might story saw far
sea draw left late run while press close night real life few north open seem together next white children begin got
walk example ease paper group always music those both mark often letter until mile river car feet care second book
carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood
main enough plain girl""".split()


def words(rng: random.Random, low: int, high: int) -> str:
    """A log-uniform number of words in [low, high], in sentences of 6 to 18 words."""
    n = int(math.exp(rng.uniform(math.log(low), math.log(high + 1))))
    out, picked = [], rng.choices(WORDS, k=n)
    while picked:
        cut = rng.randint(6, 18)
        sentence, picked = picked[:cut], picked[cut:]
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def data_dir(work: Path, label: str) -> Path:
    """work/data/LABEL: alpaca.jsonl and its dataset_info.json, generated once (a prefix of any larger size)."""
    out = work / "data" / label
    if (out / "dataset_info.json").is_file():
        return out
    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rng, part = random.Random(SEED), out / "alpaca.jsonl.part"
    with part.open("w") as f:
        for _ in range(SIZES[label]):
            row = {"instruction": words(rng, 5, 40)[:-1] + "?"}
            row |= {"input": words(rng, 10, 200) if rng.random() < 0.5 else "", "output": words(rng, 20, 600)}
            f.write(json.dumps(row) + "\n")
    part.rename(out / "alpaca.jsonl")
    (out / "dataset_info.json").write_text(json.dumps({DATASET: {"file_name": "alpaca.jsonl"}}))
    size = (out / "alpaca.jsonl").stat().st_size / MB
    print(f"generated {label}: {SIZES[label]} rows, {size:.0f} MB, {time.perf_counter() - t:.0f} s", flush=True)
    return out


def output_counts(splits: dict) -> dict:
    """Rows, tokens and supervised tokens of each split, read batch by batch from its Arrow table."""
    import pyarrow.compute as pc

    counts = {}
    for name, ds in splits.items():
        table = ds.data if hasattr(ds.data, "to_batches") else ds.data.table
        tokens = supervised = 0
        for batch in table.select(["input_ids", "labels"]).to_batches(max_chunksize=10_000):
            tokens += pc.sum(pc.list_value_length(batch.column(0))).as_py() or 0
            labels = pc.list_flatten(batch.column(1))
            supervised += pc.sum(pc.not_equal(labels, IGNORE)).as_py() or 0
        counts[name] = {"rows": len(ds), "tokens": tokens, "supervised": supervised}
    return counts


def cpu_s() -> float:
    """CPU seconds of this process and of its ended, waited-for children (the map workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def versions(packages: tuple[str, ...]) -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in packages)


def peftflow_side(data: str, model: str, workers: int, **_) -> dict:
    from datasets import load_from_disk

    import peftflow
    from peftflow.config import RunConfig
    from peftflow.data.prepare import prepare_dataset

    options = dict(model_name_or_path=model, dataset=DATASET, dataset_dir=data, template=TEMPLATE)
    options |= dict(cutoff_len=CUTOFF, val_size=VAL_SIZE, seed=SEED)
    has_workers = "preprocessing_num_workers" in RunConfig.model_fields
    cfg = RunConfig(**options, **({"preprocessing_num_workers": workers} if has_workers else {}))
    print("BEGIN", flush=True)
    t, cpu = time.perf_counter(), cpu_s()
    prepared = prepare_dataset(cfg, model)
    seconds, cpu = time.perf_counter() - t, cpu_s() - cpu
    print("END", flush=True)
    splits = {s: load_from_disk(str(Path(prepared.path) / s)) for s in ("train", "eval")}
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "workers": workers if has_workers else "1 (RunConfig has no preprocessing_num_workers)",
        "counts": output_counts(splits),
        "dropped": prepared.dropped,
        "truncated": prepared.truncated,
        "versions": f"peftflow at {Path(peftflow.__file__).parent}; "
        + versions(("datasets", "transformers", "tokenizers", "pyarrow")),
    }


def lf_side(data: str, model: str, workers: int, out: str, **_) -> dict:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    options = dict(model_name_or_path=model, stage="sft", do_train=True, finetuning_type="lora", dataset=DATASET)
    options |= dict(dataset_dir=data, template=TEMPLATE, cutoff_len=CUTOFF, val_size=VAL_SIZE, seed=SEED)
    options |= dict(preprocessing_num_workers=workers, overwrite_cache=True, output_dir=out, report_to="none")
    model_args, data_args, training_args, _, _ = get_train_args(options)
    print("BEGIN", flush=True)
    t, cpu = time.perf_counter(), cpu_s()
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    t_data = time.perf_counter()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    seconds, get_dataset_s, cpu = time.perf_counter() - t, time.perf_counter() - t_data, cpu_s() - cpu
    print("END", flush=True)
    splits = {"train": module["train_dataset"], "eval": module["eval_dataset"]}
    return {
        "seconds": seconds,
        "get_dataset_s": get_dataset_s,
        "cpu_s": cpu,
        "workers": workers,
        "counts": output_counts(splits),
        "versions": versions(("llamafactory", "datasets", "transformers", "tokenizers", "pyarrow", "torch")),
    }


def resolve(**_) -> dict:
    from peftflow.models.resolve import resolve_model

    return {"path": str(resolve_model(MODEL).path)}


def child(job: dict) -> None:
    result = {"peftflow": peftflow_side, "lf": lf_side, "resolve": resolve}[job["kind"]](**job)
    print("RESULT " + json.dumps(result), flush=True)


def tree(pid: int) -> list[int]:
    """pid and every process below it, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def proc_kb(path: str, fields: tuple[str, ...]) -> dict[str, int]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:  # the process ended between listing and reading
        return {}
    return {k: int(v.split()[0]) for k, v in (x.split(":", 1) for x in lines if ":" in x) if k in fields}


def tree_memory(pid: int) -> tuple[float, float, int]:
    """(private MB, summed VmRSS MB, processes) of pid's tree. Private: summed RssAnon for a lone
    process (none shares its pages); with workers, summed Pss_Anon (smaps_rollup: a page that forked
    processes share is split among them; it walks the page tables, ~25 ms a GB)."""
    private = rss = 0
    pids = tree(pid)
    for p in pids:
        status = proc_kb(f"/proc/{p}/status", ("VmRSS", "RssAnon"))
        pss = proc_kb(f"/proc/{p}/smaps_rollup", ("Pss_Anon",)) if len(pids) > 1 else {}
        private += pss.get("Pss_Anon", status.get("RssAnon", 0))
        rss += status.get("VmRSS", 0)
    return private / 1024, rss / 1024, len(pids)


def run_side(python: str, job: dict, env: dict, log: Path) -> dict:
    """One child; its tree's memory sampled while it runs, peaks taken between BEGIN and END."""
    cmd, load = [python, __file__, "--child", json.dumps(job)], os.getloadavg()[0]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        state = {"phase": "setup", "result": None, "start_mb": 0.0}

        def read():
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line == "BEGIN":
                    state["start_mb"] = tree_memory(proc.pid)[0]
                    state["phase"] = "timed"
                elif line == "END":
                    state["phase"] = "done"
                elif line.startswith("RESULT "):
                    state["result"] = json.loads(line[len("RESULT ") :])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        peak = {"private_mb": 0.0, "rss_mb": 0.0, "processes": 0}
        while proc.poll() is None:
            cost = time.perf_counter()
            if state["phase"] == "timed":
                private, rss, n = tree_memory(proc.pid)
                if state["phase"] == "timed":  # END may have come while sampling
                    peak = {"private_mb": max(peak["private_mb"], private), "rss_mb": max(peak["rss_mb"], rss),
                            "processes": max(peak["processes"], n)}  # fmt: skip
            time.sleep(max(SAMPLE_S, SAMPLE_COST * (time.perf_counter() - cost)))  # the sampler's share bounded
        reader.join(timeout=10)
    if proc.returncode or state["result"] is None:
        tail = [x for x in log.read_text().splitlines() if x.strip()][-1:] or ["no output"]
        why = "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else tail[0][:300]
        return {"failed": f"exit {proc.returncode}: {why} (log {log})"}
    peak["private_mb"] = max(peak["private_mb"], state["start_mb"])
    return {**state["result"], **peak, "start_mb": state["start_mb"], "load": load}


def child_env(side: str, run: Path) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=str(run / "hf-datasets"), HF_HUB_OFFLINE="1")
    env |= {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PEFTFLOW_HOME": str(run / "home")}
    env.pop("PEFTFLOW_STORAGE", None)
    if side == "peftflow":  # this checkout's peftflow
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    else:  # the side environment sees nothing of the project
        env.pop("PYTHONPATH", None)
    return env


def machine(work: Path) -> str:
    cpu = Path("/proc/cpuinfo").read_text()
    model = next((x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("model name")), "?")
    mem = next(x.split()[1] for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return (
        f"{model}, {os.cpu_count()} CPUs, {int(mem) / 2**20:.0f} GB RAM, {shutil.disk_usage(work).free / 2**30:.0f} GB "
        f"free in {work}; commit {commit.stdout.strip() or '?'}; load average {os.getloadavg()[0]:.1f}"
    )


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def report(results: dict, labels: list[str], sides: list[str]) -> None:
    def cell(label, side, key, fmt):
        r = results.get((label, side), {})
        return format(r[key], fmt) if key in r else format("failed" if "failed" in r else "-", ">" + fmt.split(".")[0])

    print(f"\n{'rows':>5} | {'peftflow s':>10} | {'LF s':>8} | {'time ratio':>10} | {'peftflow peak MB':>16} | "
          f"{'LF peak MB':>10} | {'memory ratio':>12}")  # fmt: skip
    for label in labels:
        p, lf = results.get((label, "peftflow"), {}), results.get((label, "lf"), {})
        print(
            f"{label:>5} | {cell(label, 'peftflow', 'seconds', '10.1f')} | {cell(label, 'lf', 'seconds', '8.1f')} | "
            f"{ratio(p.get('seconds'), lf.get('seconds')):>10} | {cell(label, 'peftflow', 'private_mb', '16.0f')} | "
            f"{cell(label, 'lf', 'private_mb', '10.0f')} | {ratio(p.get('private_mb'), lf.get('private_mb')):>12}"
        )
    print()
    for (label, side), r in results.items():
        if "failed" in r:
            print(f"{label} {side}: FAILED {r['failed']}")
            continue
        c = r["counts"]
        extra = f", get_dataset alone {r['get_dataset_s']:.1f} s" if "get_dataset_s" in r else ""
        extra += f", {r['truncated']} rows cut at cutoff, {r['dropped']} dropped" if "truncated" in r else ""
        print(
            f"{label} {side}: {r['seconds']:.1f} s{extra}, CPU {r['cpu_s']:.1f} s (load average before "
            f"{r['load']:.1f}); workers {r['workers']}; peak private "
            f"{r['private_mb']:.0f} MB (at start {r['start_mb']:.0f}, added {r['private_mb'] - r['start_mb']:.0f}), "
            f"peak summed RSS {r['rss_mb']:.0f} MB, up to {r['processes']} processes; train {c['train']['rows']} / "
            f"eval {c['eval']['rows']} rows, {c['train']['tokens'] + c['eval']['tokens']} tokens, "
            f"{c['train']['supervised'] + c['eval']['supervised']} supervised"
        )
    for side in sides:
        done = [(label, results[label, side]) for label in labels if "seconds" in results.get((label, side), {})]
        for (small, a), (large, b) in zip(done, done[1:]):
            rows = SIZES[large] / SIZES[small]
            added_a, added_b = a["private_mb"] - a["start_mb"], b["private_mb"] - b["start_mb"]
            print(
                f"growth {side} {small} -> {large} ({rows:.0f}x rows): time {b['seconds'] / a['seconds']:.1f}x "
                f"(CPU {b['cpu_s'] / a['cpu_s']:.1f}x), "
                f"peak memory {b['private_mb'] / a['private_mb']:.1f}x, added memory {ratio(added_b, added_a)}x"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1m")
    ap.add_argument("--workers", type=int, default=2, help="preprocessing_num_workers, both sides")
    ap.add_argument("--sides", default="peftflow,lf")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/peftflow-data-scale"))
    ap.add_argument("--lf-python", default="/work/lf-env/bin/python", help="python of the LLaMA-Factory environment")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    labels, sides = args.sizes.lower().split(","), args.sides.split(",")
    if not set(labels) <= set(SIZES) or not set(sides) <= {"peftflow", "lf"}:
        sys.exit(f"sizes: {', '.join(SIZES)}; sides: peftflow, lf (got {labels} {sides})")
    if "lf" in sides and not Path(args.lf_python).is_file():
        sys.exit(f"no LLaMA-Factory environment at {args.lf_python} (--lf-python)")
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pythons = {"peftflow": sys.executable, "lf": args.lf_python}
    env = child_env("peftflow", work) | {"PEFTFLOW_HOME": str(work / "home")}
    model = run_side(sys.executable, {"kind": "resolve"}, env, work / "resolve.log")
    if "failed" in model:
        sys.exit(f"resolving {MODEL} failed: {model['failed']}")
    print(machine(work), flush=True)
    print(f"{MODEL} at {model['path']}; template {TEMPLATE}, cutoff_len {CUTOFF}, val_size {VAL_SIZE}, seed {SEED}")
    results, shown = {}, set()
    for label in labels:
        data = data_dir(work, label)
        for side in sides:
            run = work / "runs" / f"{label}-{side}"
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            job = {"kind": side, "data": str(data), "model": model["path"], "workers": args.workers}
            job["out"] = str(run / "out")
            r = results[label, side] = run_side(pythons[side], job, child_env(side, run), work / f"{label}-{side}.log")
            print(f"{label} {side}: {r.get('seconds', 0):.1f} s {r.get('failed', '')}", flush=True)
            if "versions" in r and side not in shown:
                shown.add(side)
                print(f"  {side}: {r['versions']}", flush=True)
            shutil.rmtree(run, ignore_errors=True)  # the prepared data and the datasets cache
    report(results, labels, sides)


if __name__ == "__main__":
    main()
