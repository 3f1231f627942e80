"""Peak memory of merging a LoRA adapter: shard by shard (peftflow.merge.stream_merge) against
peft's merge_and_unload on the whole model, on SmolLM2-135M as shipped (one 540 MB shard) and
re-saved as 100 MB shards.

Each merge runs in its own child process. Its memory is the peak resident set (VmHWM) minus the
resident set after imports (VmRSS): what the merge itself added. The bound printed next to it is
1.5 x (largest base shard in fp32 + adapter file). Usage:
  .venv/bin/python benchmarks/merge_memory.py
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 2**20


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(kind: str, base: str, adapter: str, out: str) -> None:
    import torch  # noqa: F401  (imports count as baseline, not as merge memory)

    from peftflow import merge

    baseline = _status_kb("VmRSS")
    if kind == "stream":
        assert merge.stream_merge(base, adapter, out)
    else:
        merge._merge_in_memory(base, adapter, Path(out), False)
    print("RESULT " + json.dumps({"added_mb": (_status_kb("VmHWM") - baseline) / 1024}), flush=True)


def run(kind: str, base: Path, adapter: Path, out: Path) -> float:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(base), str(adapter), str(out)], capture_output=True, text=True
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(proc.stderr[-3000:])
    return json.loads(line[-1][7:])["added_mb"]


def largest_shard_fp32_mb(base: Path) -> float:
    from safetensors import safe_open

    sizes = []
    for shard in base.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            sizes.append(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) * 4 / MB)
    return max(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftflow.models.resolve import resolve_model

    work = Path(tempfile.mkdtemp(prefix="peftflow-merge-bench-"))
    shipped = Path(resolve_model("builtin:smollm2-135m-instruct").path)
    model = AutoModelForCausalLM.from_pretrained(shipped)
    model.save_pretrained(work / "sharded", max_shard_size="100MB")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    peft_model.save_pretrained(work / "adapter")
    del model, peft_model
    adapter_mb = (work / "adapter" / "adapter_model.safetensors").stat().st_size / MB

    print(f"adapter {adapter_mb:.1f} MB; memory added by the merge (peak RSS - RSS after imports)")
    print(f"{'base':22} {'merge':15} {'added MB':>9} {'bound MB':>9} {'ratio to shard+adapter':>22}")
    for label, base in (("one 540 MB shard", shipped), ("100 MB shards", work / "sharded")):
        unit = largest_shard_fp32_mb(base) + adapter_mb
        for kind in ("stream", "merge_and_unload"):
            added = run(kind, base, work / "adapter", work / f"out-{kind}-{base.name}")
            print(f"{label:22} {kind:15} {added:9.0f} {1.5 * unit:9.0f} {added / unit:21.2f}x")


if __name__ == "__main__":
    main()
