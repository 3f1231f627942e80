"""Every built-in dataset, written once into one folder with its dataset_info.json (LLaMA-Factory
format): the order task (datasets.py), its preference task (pairs and KTO feedback: preferences.py),
its plain-text notes (order_notes.py), shapes, tool calls."""

from __future__ import annotations

import json
from pathlib import Path

from peftflow.builtin.datasets import PROMPT_SEED, make_general_rows, make_rows
from peftflow.builtin.order_notes import write_notes_dataset
from peftflow.builtin.preferences import write_preference_datasets
from peftflow.builtin.shapes import write_shapes_dataset
from peftflow.builtin.tool_calls import DATASET_INFO as TOOLS_INFO
from peftflow.builtin.tool_calls import make_tool_rows

BUILTIN_NAMES = (
    "demo_orders",
    "demo_order_prompts",
    "demo_general",
    "demo_shapes",
    "demo_tools",
    "demo_orders_mixed",
    "demo_order_pairs",
    "demo_order_feedback",
    "demo_order_notes",
)


def write_builtin_datasets(dataset_dir: Path, n: int = 640, seed: int = 0) -> Path:
    """Write the demo data (orders; 512 order prompts without answers, for a distillation teacher to
    answer; the arithmetic guard set; the shapes image task; tool calling; the preference task's mixed
    orders, pairs and KTO feedback; 512 plain-text order notes for continued pre-training) and their dataset_info.json
    (LLaMA-Factory format) into `dataset_dir`."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    info = {
        "demo_orders": {"file_name": "demo_orders.json", "formatting": "alpaca", "columns": columns},
        "demo_order_prompts": {
            "file_name": "demo_order_prompts.json",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input"},
        },
        "demo_general": {"file_name": "demo_general.json", "formatting": "alpaca", "columns": columns},
    }
    (dataset_dir / "demo_orders.json").write_text(json.dumps(make_rows(n, seed), indent=1))
    prompts = [{k: v for k, v in row.items() if k != "output"} for row in make_rows(512, PROMPT_SEED)]
    (dataset_dir / "demo_order_prompts.json").write_text(json.dumps(prompts, indent=1))
    (dataset_dir / "demo_general.json").write_text(json.dumps(make_general_rows(64), indent=1))
    info |= write_shapes_dataset(dataset_dir, seed=seed)
    (dataset_dir / "demo_tools.json").write_text(json.dumps(make_tool_rows(n, seed), indent=1))
    info |= TOOLS_INFO
    info |= write_preference_datasets(dataset_dir, n, seed=seed)
    info |= write_notes_dataset(dataset_dir)
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return dataset_dir
