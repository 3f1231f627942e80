"""LoRA and QLoRA training throughput on a GPU: tokens/s, peak CUDA memory, MFU.

Models: SmolLM2-135M (the built-in, converted locally) and a 7B-class Llama (Llama-2-7B's shape)
with random weights: nothing comes from a hub. Each step is peftflow's training step: the
decoder under bf16 autocast and the chunked supervised-only loss (peftflow.lm_loss), AdamW on
the adapter. Batches are random tokens, every position supervised. MFU counts 4 x params FLOPs
per token for an adapter step (forward 2N, backward to the activations 2N; the frozen weights
get no gradient) plus attention, against the GPU's dense bf16 peak (--peak-tflops).

Not run in this project yet (no GPU was lent). Usage:
  .venv/bin/python benchmarks/gpu_throughput.py --steps 10 --batch 4 --seq 1024
  .venv/bin/python benchmarks/gpu_throughput.py --device cpu --models smollm2 --methods lora --steps 1 --seq 64  # smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

LLAMA_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16


def model_dir(name: str, work: Path) -> str:
    if name == "smollm2":
        from peftflow.models.resolve import resolve_model

        return resolve_model("builtin:smollm2-135m-instruct").path
    from transformers import LlamaConfig, LlamaForCausalLM

    out = work / "llama-7b-random"
    if not (out / "config.json").is_file():
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(LlamaConfig(**LLAMA_7B)).to(torch.bfloat16)
        model.save_pretrained(out)  # QLoRA quantises at load, so the weights go through disk
        del model
    return str(out)


def build(path: str, method: str, device: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if method == "qlora":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quant, dtype=torch.bfloat16, device_map={"": device}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.bfloat16 if device == "cuda" else torch.float32
        ).to(device)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


def flops_per_token(model, seq: int) -> float:
    config = model.get_base_model().config
    params = sum(p.numel() for p in model.parameters())
    if getattr(config, "quantization_config", None):  # 4-bit weights count as their full-size originals
        params = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    attention = 2 * 2 * config.num_hidden_layers * seq * config.hidden_size  # QK^T and AV, forward + backward
    return 4 * params + 2 * attention


def measure(name: str, method: str, args, work: Path) -> dict:
    from peftflow.losses import supervised_ce

    device = args.device
    model = build(model_dir(name, work), method, device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.get_base_model().config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = supervised_ce(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step()  # warm-up: kernels, allocator
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    float(loss)  # waits for the device
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch * args.seq
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    achieved = tokens * flops_per_token(model, args.seq) / seconds / 1e12
    model = optimizer = None  # freed before the next measurement (the closure reads them until here)
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "tokens_per_s": tokens / seconds,
        "peak_gib": peak,
        "tflops": achieved,
        "mfu": achieved / args.peak_tflops if args.peak_tflops else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,llama7b")
    ap.add_argument("--methods", default="lora,qlora")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; default from the GPU name")
    args = ap.parse_args()
    if args.peak_tflops is None and args.device == "cuda":
        gpu = torch.cuda.get_device_name()
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    work = Path(tempfile.mkdtemp(prefix="peftflow-gpu-bench-"))
    print(
        f"device {args.device}, batch {args.batch} x {args.seq} tokens, {args.steps} steps, peak {args.peak_tflops} "
        "TFLOPS"
    )
    print(f"{'model':10} {'method':6} {'tokens/s':>10} {'peak GiB':>9} {'TFLOPS':>7} {'MFU':>6}")
    for name in args.models.split(","):
        for method in args.methods.split(","):
            r = measure(name, method, args, work)
            print(
                f"{name:10} {method:6} {r['tokens_per_s']:10.0f} {r['peak_gib']:9.2f} {r['tflops']:7.1f} "
                f"{r['mfu']:6.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
