"""What the orchestration costs: the finetune flow's wall time against its steps' own time.

Runs the demo (configs/demo.yaml; --steps / --eval-samples shorten it) twice under a temporary
Prefect server, in a fresh PEFTFLOW_HOME with the built-in model converted beforehand. For each
run it prints the flow's wall time, the sum of its task runs' times (the step compute), the
difference as a share of the wall time (orchestration overhead), and for the second run, with
unchanged inputs, its wall time as a share of the first run's. Usage:
  .venv/bin/python benchmarks/pipeline_overhead.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def task_times(flow_run_id) -> dict[str, tuple[float, str]]:
    """Task name -> (seconds from start to end, final state) for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out = {}
    for r in runs:
        seconds = (r.end_time - r.start_time).total_seconds() if r.start_time and r.end_time else 0.0
        out[r.name] = (seconds, r.state.name if r.state else "?")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="optimizer steps (default: the demo's)")
    ap.add_argument("--eval-samples", type=int, help="held-out rows scored (default: the demo's)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="peftflow-overhead-"))
    os.environ.update(
        PEFTFLOW_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "prefect-results"),
    )
    from prefect.testing.utilities import prefect_test_harness

    from flows.finetune import finetune
    from peftflow.config import load_config
    from peftflow.models.resolve import resolve_model

    cfg, _ = load_config(ROOT / "configs" / "demo.yaml")
    cfg = cfg.model_copy(
        update={
            "max_steps": args.steps or cfg.max_steps,
            "evaluation": cfg.evaluation.model_copy(
                update={"max_samples": args.eval_samples or cfg.evaluation.max_samples}
            ),
        }
    )
    resolve_model(cfg.model_name_or_path)  # the one-off GGUF conversion is not part of a run
    start = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=180):
        print(f"temporary Prefect server started in {time.perf_counter() - start:.1f} s (not counted)")
        walls = []
        for label in ("first run", "unchanged re-run"):
            start = time.perf_counter()
            state = finetune(cfg, return_state=True)
            wall = time.perf_counter() - start
            state.result()
            tasks = task_times(state.state_details.flow_run_id)
            staged = sum(s for s, _ in tasks.values())
            walls.append(wall)
            print(
                f"{label}: wall {wall:.1f} s, stages {staged:.1f} s, overhead {wall - staged:.1f} s "
                f"({(wall - staged) / wall:.1%} of wall)"
            )
            for name, (seconds, status) in sorted(tasks.items(), key=lambda kv: -kv[1][0]):
                print(f"    {name:32} {seconds:7.2f} s  {status}")
    print(f"unchanged re-run / first run: {walls[1] / walls[0]:.1%}")


if __name__ == "__main__":
    main()
