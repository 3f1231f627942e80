"""`peftflow export`: LLaMA-Factory's export YAML (or a registered version) merged into its unquantized
base and written ready to serve, as sharded safetensors and, with --format gguf, one GGUF file."""

from __future__ import annotations

from typing import Optional

import typer

from flows.cli_support import check_model_ref, fail, registry_error


def export(
    config: Optional[str] = typer.Argument(
        None,
        help="LLaMA-Factory export YAML (v0 or v1), e.g. examples/merge_lora/*.yaml; "
        "may be omitted with --format gguf --model M --out FILE.",
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="Export this registered version instead, e.g. models:/NAME@champion "
        "(with --format gguf and no CONFIG, also a merged dir).",
    ),
    fmt: str = typer.Option(
        "safetensors",
        "--format",
        help="safetensors (sharded dir) or gguf (one file, llama.cpp's converter; needs peftflow[gguf]).",
    ),
    outtype: str = typer.Option("f16", "--outtype", help="gguf: f32, f16, bf16 or q8_0."),
    out: Optional[str] = typer.Option(
        None, "--out", help="gguf: the file to write (default: EXPORT_DIR/model-OUTTYPE.gguf)."
    ),
    verify: bool = typer.Option(True, help="gguf: load the file back with transformers and compare with the model."),
) -> None:
    """Merge an adapter into its unquantized base and write a ready-to-serve model: a sharded
    safetensors dir, or with --format gguf also one GGUF file checked against it."""
    try:
        from peftflow.errors import UserError

        if fmt not in ("safetensors", "gguf"):
            raise UserError(f"--format {fmt}: expected safetensors or gguf")
        if config is None and (fmt != "gguf" or not model or not out):
            raise UserError("export: give an export YAML, or --format gguf with --model and --out")
        src = _export_dir(config, model) if config else _merged_dir(model)
        if fmt == "gguf":
            _export_gguf(src, out, outtype, verify)
    except Exception as e:  # noqa: BLE001
        fail(registry_error(e, f"--model {model}") if model else e)


def _export_dir(config: str, model: Optional[str]) -> str:
    from peftflow.config import read_yaml
    from peftflow.errors import UserError
    from peftflow.export import read_spec, run_export

    if model is not None and not model.startswith("models:/"):
        raise UserError(f"--model {model}: expected a registered version, models:/NAME@ALIAS or models:/NAME/VERSION")
    result = run_export(read_spec(read_yaml(config), config), registered=model)
    merged = f"merged (max |logit diff| {result.max_abs_logit_diff:.1e})" if result.merged else "no adapter"
    typer.echo(f"exported {result.export_dir}: {result.shards} safetensors shard(s), {result.dtype}, {merged}")
    return result.export_dir


def _merged_dir(model: str) -> str:
    """--model as a local merged model dir (a registered version is downloaded; an adapter is refused)."""
    from peftflow.serving import gguf

    check_model_ref(model)
    return gguf.source_dir(model)


def _export_gguf(src: str, out: Optional[str], outtype: str, verify: bool) -> None:
    """One GGUF file from a merged dir (the export's, or --model's), then the transformers round trip."""
    from pathlib import Path

    from peftflow.errors import UserError
    from peftflow.serving import gguf

    if verify and (problem := gguf.loader_problem(src)):  # refused before minutes of converting
        raise UserError(f"--verify: {problem}; export with --no-verify")
    written = gguf.export(src, out or str(Path(src) / f"model-{outtype}.gguf"), outtype)
    typer.echo(f"{written.path}: {written.outtype}, {written.size_bytes / 1e6:.1f} MB")
    if verify:
        from peftflow.builtin.probes import PROBE_TEXTS

        check = gguf.round_trip(src, written.path, list(PROBE_TEXTS))
        typer.echo(
            f"round trip: greedy agreement {check.greedy_agreement:.0%} on {len(check.answers)} probes, "
            f"max |logit diff| {check.max_abs_logit_diff:.2e}"
        )
