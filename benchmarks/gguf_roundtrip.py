"""GGUF export round trip: does the file answer like the model it came from?

For each outtype, the model is converted with llama.cpp's converter (peftflow export --format gguf), then
  transformers  the file loaded back with transformers' GGUF loader (dequantised to fp32):
                max |logit difference| on the chat-formatted probes, greedy answers identical?
  llama.cpp     the file run by llama.cpp itself (llama-cpp-python), greedy, from the same prompt
                tokens: answers identical to the source model's? Skipped when llama-cpp-python is
                not installed (it builds llama.cpp from source: `pip install llama-cpp-python`).

Usage:
  .venv/bin/python benchmarks/gguf_roundtrip.py                          # builtin:smollm2-135m-instruct
  .venv/bin/python benchmarks/gguf_roundtrip.py --model models:/peftflow-demo@champion --outtypes f16 q8_0
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time

from peftflow.builtin.probes import PROBE_TEXTS
from peftflow.serving import gguf as gguf_export

PROMPTS = list(PROBE_TEXTS) + [
    "Extract the order as JSON with keys customer, item, quantity, city.\n"
    "Could you deliver 2 blue mugs to Graz? Thanks, Aiko Tanaka",
    "Extract the order as JSON with keys customer, item, quantity, city.\n"
    "Order from Tom Berg: 3 x green lamp, ship to Lyon.",
]


def llama_cpp_answers(gguf_file: str, model_dir: str, max_new_tokens: int) -> list[str] | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = Llama(model_path=gguf_file, n_ctx=1024, n_threads=2, verbose=False, seed=0)
    answers = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        out = llm.create_completion(list(ids), max_tokens=max_new_tokens, temperature=0.0, top_k=1)
        answers.append(out["choices"][0]["text"])
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="builtin:smollm2-135m-instruct",
        help="builtin:NAME, models:/NAME@ALIAS or a merged model dir",
    )
    ap.add_argument("--outtypes", nargs="+", default=["f32", "f16", "q8_0"])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    if args.model.startswith("builtin:"):
        from peftflow.models.resolve import resolve_model

        source = resolve_model(args.model).path
    else:
        source = gguf_export.source_dir(args.model)
    print(f"source: {args.model} ({source}); {len(PROMPTS)} probes, {args.max_new_tokens} new tokens, greedy")
    print(f"{'outtype':8} {'MB':>7} {'convert s':>9} {'max|dlogit|':>12} {'HF agree':>9} {'llama.cpp agree':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in args.outtypes:
            start = time.perf_counter()
            written = gguf_export.export(source, f"{tmp}/model-{outtype}.gguf", outtype)
            seconds = time.perf_counter() - start
            check = gguf_export.round_trip(source, written.path, PROMPTS, args.max_new_tokens)
            native = llama_cpp_answers(written.path, source, args.max_new_tokens)
            if native is None:
                native_col = "skipped"
            else:
                same = sum(a.strip() == src.strip() for a, (src, _) in zip(native, check.answers))
                native_col = f"{same}/{len(PROMPTS)}"
            print(
                f"{outtype:8} {written.size_bytes / 1e6:7.1f} {seconds:9.1f} {check.max_abs_logit_diff:12.2e} "
                f"{check.greedy_agreement:9.0%} {native_col:>16}"
            )
            if native is not None:
                for (src, _), got in zip(check.answers, native):
                    if got.strip() != src.strip():
                        print(f"    differs: source {src.strip()[:60]!r} / llama.cpp {got.strip()[:60]!r}")
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp column skipped: llama-cpp-python is not installed here")


if __name__ == "__main__":
    main()
