"""The `peftflow` command line, run for real in a subprocess.

User mistakes must print exactly one `error:` line on stderr and exit 2, for `validate` and for
`run` (which must stop before any Prefect flow starts); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from peftflow.builtin.datasets import make_rows

ROOT = Path(__file__).resolve().parents[2]
ALPACA = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}}


@pytest.fixture
def cli(tmp_path, peftflow_home):
    """cli(*args) -> CompletedProcess of `python -m flows.cli *args`, cwd = tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PEFTFLOW_HOME=str(peftflow_home),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        COLUMNS="200",  # help text and rich tracebacks are laid out for this width
        HF_HUB_OFFLINE="1",
    )

    def run(*args: str, timeout: float = 300, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=tmp_path,
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "run.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def good_dataset(write_dataset, n: int = 24, extra_rows: list | None = None) -> Path:
    rows = make_rows(n, seed=1) + (extra_rows or [])
    return write_dataset({"orders": {"file_name": "orders.json", **ALPACA}}, {"orders.json": rows})


def config_text(model: str, dataset_dir: Path | str, **extra) -> str:
    lines = [
        f"model_name_or_path: {model}",
        f"dataset_dir: {dataset_dir}",
        "dataset: orders",
        "cutoff_len: 256",
        "val_size: 4",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str, ignore: str | None = None) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not (ignore and ignore in line)]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def assert_nothing_registered(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        if "registered_models" in tables:
            assert conn.execute("select count(*) from registered_models").fetchone()[0] == 0
        if "runs" in tables:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0


# --- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        ((), ["run", "sweep", "validate", "generate", "--debug", "--verbose"]),
        (("run",), ["Run the finetune flow", "CONFIG", "--offline-store"]),
        (("validate",), ["Check the config", "CONFIG", "--offline-store"]),
        (("sweep",), ["--grid", "--offline-store"]),
        (("generate",), ["Generate a chat reply", "--model", "--prompt", "--max-new-tokens"]),
    ],
)
def test_help(cli, args, words):
    proc = cli(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.upper()
    for word in words:
        assert word.upper() in text, (word, proc.stdout)


# --- user errors: one line, exit 2, for validate and for run ----------------------------------


def _case(name, tmp_path, write_config, write_dataset, tiny_model):
    """(config path, words the error line must contain) for one kind of user mistake."""
    if name == "unknown_key":
        return write_config(f"model_name_or_path: {tiny_model}\nlora_rnk: 4\n"), [
            "run.yaml",
            "lora_rnk",
            "did you mean 'lora_rank'",
        ]
    if name == "unknown_nested_key":
        return write_config("evaluation:\n  max_sample: 4\n"), ["run.yaml", "evaluation.max_sample", "max_samples"]
    if name == "bad_value":
        return write_config("lora_rank: abc\n"), ["run.yaml", "lora_rank", "abc"]
    if name == "missing_file":
        return tmp_path / "nope.yaml", ["nope.yaml", "not found"]
    if name == "invalid_yaml":
        return write_config("lora_rank: 8\ndataset: [a, b\n"), ["run.yaml", "invalid YAML", "line"]
    if name == "unknown_dataset":
        root = good_dataset(write_dataset)
        return write_config(config_text(tiny_model, root).replace("dataset: orders", "dataset: ordrs")), [
            "dataset_info.json",
            "ordrs",
            "did you mean 'orders'",
        ]
    if name == "unknown_guard_dataset":
        root = good_dataset(write_dataset)
        return write_config(config_text(tiny_model, root) + "promotion:\n  guard_dataset: orderz\n"), [
            "dataset_info.json",
            "orderz",
            "did you mean 'orders'",
        ]
    if name == "malformed_json":
        root = write_dataset(
            {"orders": {"file_name": "orders.json", **ALPACA}}, {"orders.json": '[{"instruction": "x",'}
        )
        return write_config(config_text(tiny_model, root)), ["orders.json"]
    if name == "unknown_builtin":
        return write_config("model_name_or_path: builtin:nosuch-model\n"), [
            "builtin:nosuch-model",
            "builtin:smollm2-135m-instruct",
        ]
    if name == "missing_model_dir":
        return write_config(f"model_name_or_path: {tmp_path}/no-such-model\n"), ["model_name_or_path", "no-such-model"]
    if name == "invalid_rows":
        root = good_dataset(write_dataset, extra_rows=[{"instruction": "", "input": "", "output": "x"}])
        return write_config(config_text(tiny_model, root)), ["orders.json", "row 25", "on_invalid_rows"]
    if name == "unknown_lora_target":  # known only from the model: checked before training, not hours into it
        root = good_dataset(write_dataset)
        return write_config(config_text(tiny_model, root) + "lora_target: q_proj,v_projj\n"), [
            "lora_target",
            "v_projj",
            "v_proj",
        ]
    if name == "unknown_scheduler":
        root = good_dataset(write_dataset)
        return write_config(config_text(tiny_model, root) + "lr_scheduler_type: cosin\n"), [
            "lr_scheduler_type",
            "cosin",
            "did you mean 'cosine'",
        ]
    # known before training, found only after it (registration), when it starts, or inside the flow until issue 38
    if name == "registered_name_mlflow_refuses":
        root = good_dataset(write_dataset)
        return write_config(config_text(tiny_model, root) + "registry:\n  name: team/orders\n"), [
            "registry.name",
            "team/orders",
            "MLflow refuses",
            "cannot contain '/'",
        ]
    if name == "load_best_with_mismatched_saving":  # transformers would refuse it only once training starts
        text = "eval_strategy: steps\neval_steps: 4\nsave_steps: 6\nload_best_model_at_end: true\n"
        return write_config(f"model_name_or_path: {tiny_model}\n{text}"), [
            "run.yaml",
            "save_steps (6)",
            "eval_steps (4)",
        ]
    if name == "scheduler_needs_arguments":
        root = good_dataset(write_dataset)
        return write_config(config_text(tiny_model, root) + "lr_scheduler_type: cosine_with_min_lr\n"), [
            "lr_scheduler_type",
            "cosine_with_min_lr",
            "min_lr",
        ]
    if name == "unusable_store":
        (tmp_path / "a-file").write_text("")
        root = good_dataset(write_dataset)
        return write_config(config_text(tiny_model, root) + f"storage: file://{tmp_path}/a-file/store\n"), [
            "storage",
            f"{tmp_path}/a-file/store",
            "failed",
            "--offline-store",
        ]
    raise AssertionError(name)


CASES = [
    "unknown_key",
    "unknown_nested_key",
    "bad_value",
    "missing_file",
    "invalid_yaml",
    "unknown_dataset",
    "unknown_guard_dataset",
    "malformed_json",
    "unknown_builtin",
    "missing_model_dir",
    "invalid_rows",
    "unknown_lora_target",
    "unknown_scheduler",
    "registered_name_mlflow_refuses",
    "scheduler_needs_arguments",
    "unusable_store",
    "load_best_with_mismatched_saving",
]


@pytest.mark.parametrize("case", CASES)
def test_validate_user_error_is_one_line(cli, tmp_path, write_config, write_dataset, tiny_model, case):
    path, needles = _case(case, tmp_path, write_config, write_dataset, tiny_model)
    assert_one_error_line(cli("validate", str(path)), *needles)


@pytest.mark.parametrize("case", CASES)
def test_run_user_error_stops_before_the_flow(cli, tmp_path, write_config, write_dataset, tiny_model, case):
    path, needles = _case(case, tmp_path, write_config, write_dataset, tiny_model)
    proc = cli("run", str(path))
    assert_one_error_line(proc, *needles)
    assert "finetune" not in proc.stdout + proc.stderr  # Prefect logs the flow run by name when it starts
    assert_nothing_registered(tmp_path)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_debug_shows_the_traceback(cli, write_config, command):
    path = write_config("lora_rnk: 4\n")
    proc = cli("--debug", command, str(path))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "lora_rnk" in proc.stderr


# --- validate on good data ----------------------------------------------------------------------


def test_validate_prints_the_data_report(cli, write_config, write_dataset, tiny_model):
    root = good_dataset(write_dataset)
    path = write_config(config_text(tiny_model, root))
    proc = cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "datasets: orders" in out
    assert "rows: 24 read, 24 kept, 0 dropped" in out
    assert "tokens per row: p50=" in out and "p90=" in out and "p99=" in out and "max=" in out
    assert "truncated at cutoff_len 256: 0 rows (0.0%)" in out
    assert "problem:" not in out
    # Nothing else: no library warnings (transformers, bitsandbytes) or bars.
    assert proc.stderr == ""
    # Python's import log (stderr): peft is imported, bitsandbytes only by a config that needs it
    # (a blocked `import bitsandbytes` is logged too: its submodules tell a real import).
    imports = {"PYTHONPROFILEIMPORTTIME": "1"}
    verbose = cli("--verbose", "validate", str(path), extra_env=imports)
    assert verbose.returncode == 0 and verbose.stdout == out
    assert _imported(verbose.stderr, "peft") and not _imported(verbose.stderr, "bitsandbytes.nn")
    eight_bit = cli(
        "validate", str(write_config(config_text(tiny_model, root, optim="adamw_8bit"), "8bit.yaml")), extra_env=imports
    )
    assert eight_bit.returncode == 0 and _imported(eight_bit.stderr, "bitsandbytes.nn"), eight_bit.stderr[-2000:]


def _imported(import_log: str, module: str) -> bool:
    return any(
        line.rsplit("|", 1)[-1].strip() == module for line in import_log.splitlines() if line.startswith("import time:")
    )


def test_validate_reports_dropped_rows_with_reasons(cli, write_config, write_dataset, tiny_model):
    bad = [
        {"instruction": "", "input": "", "output": "x"},  # row 25: empty prompt
        {"instruction": "Extract", "input": "m", "output": ""},
    ]  # row 26: empty answer
    root = good_dataset(write_dataset, extra_rows=bad)
    path = write_config(config_text(tiny_model, root, on_invalid_rows="drop", cutoff_len=96))
    proc = cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows_line = next(line for line in out.splitlines() if line.startswith("rows:"))
    read, kept, dropped = (int(rows_line.split()[i]) for i in (1, 3, 5))
    assert read == 26 and read == kept + dropped and dropped >= 2, out
    drop_lines = [line for line in out.splitlines() if line.strip().startswith("dropped ")]
    assert len(drop_lines) >= 2, out
    assert any("row 25" in line for line in drop_lines) and any("row 26" in line for line in drop_lines), out
    assert "truncated at cutoff_len 96:" in out
    rate = float(out.split("truncated at cutoff_len 96:")[1].split("(")[1].split("%")[0])
    assert 0 < rate < 100, out  # some rows cut, none dropped for it


def test_llamafactory_keys_warn_once_and_validate(cli, write_config, write_dataset, tiny_model):
    text = (
        config_text(tiny_model, good_dataset(write_dataset))
        + "do_train: true\nplot_loss: true\noverwrite_cache: true\n"
    )
    proc = cli("validate", str(write_config(text)))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    assert all(k in warnings[0] for k in ("do_train", "plot_loss", "overwrite_cache")), warnings[0]
    assert not any(line.startswith("error:") for line in lines)
    assert "rows: 24 read, 24 kept" in proc.stdout


@pytest.mark.parametrize(
    "model, needles",
    [
        ("models:/no-such-model@champion", ["--model models:/no-such-model@champion", "not found"]),
        ("./no-such-dir", ["--model ./no-such-dir", "directory not found"]),
    ],
)
def test_generate_unknown_model_is_one_line(cli, tmp_path, model, needles):
    # MLflow logs two INFO lines when it creates a fresh sqlite store; everything else is one line.
    assert_one_error_line(
        cli("generate", "--model", model, "--prompt", "hi"), *needles, ignore="INFO mlflow.store.db.utils"
    )


def test_export_format_gguf_and_check_serving_commands(cli, tmp_path, tiny_finetune):
    import json
    import shutil

    adapter, merged = tiny_finetune
    done = cli(
        "export",
        "--format",
        "gguf",
        "--model",
        merged,
        "--out",
        str(tmp_path / "out" / "tiny.gguf"),
        "--outtype",
        "f32",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny.gguf: f32" in done.stdout
    assert "round trip: greedy agreement 100% on 2 probes, max |logit diff| 0.00e+00" in done.stdout
    assert "de-quantizing GGUF tensors" not in done.stderr + done.stdout  # transformers' bar: --verbose only

    refused = cli("export", "--format", "gguf", "--model", adapter, "--out", str(tmp_path / "a.gguf"))
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "is a PEFT adapter; GGUF export needs a merged model" in refused.stderr
    no_out = cli("export", "--format", "gguf", "--model", merged)
    assert (
        no_out.returncode == 2
        and no_out.stderr == "error: export: give an export YAML, or --format gguf with --model and --out\n"
    )

    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    not_ready = cli("check-serving", str(bad))
    assert not_ready.returncode == 1
    assert "problem: modules_to_save ['lm_head']: vLLM refuses adapters with fully trained modules" in not_ready.stdout


def test_sweep_user_error_stops_before_the_flow(cli, tmp_path, write_config, write_dataset, tiny_model):
    """Every variant is checked, its training setup included, before a flow run starts (a bad
    value of a variant is one line too: tests/unit/test_sweep.py)."""
    path = write_config(config_text(tiny_model, good_dataset(write_dataset)))
    proc = cli("sweep", str(path), "--grid", "optim=adamw_torch,adamw_tourch")
    assert_one_error_line(proc, "sweep variant 'optim=adamw_tourch': ", "adamw_tourch")
    assert "sweep of" not in proc.stderr and "Flow run" not in proc.stdout + proc.stderr
    assert_nothing_registered(tmp_path)
