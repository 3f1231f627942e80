"""The sweep's report where people look: a Prefect table and Markdown artifact, and the report,
the table and both charts on the sweep's MLflow run."""

import base64
import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from peftflow.mlflow_io import tracking
from peftflow.sweep.ranking import VariantResult
from peftflow.sweep.report import loss_curves, score_by_value


@task(name="write-sweep-report")
def write_sweep_report(
    run_id: str,
    out: str,
    markdown: str,
    rows: list[dict],
    results: list[VariantResult],
    swept: tuple[str, ...],
    metric: str,
) -> str:
    """Returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    ran = [r for r in results if not r.failed]
    files = [
        out / "report.md",
        out / "results.json",
        loss_curves(ran, out / "loss_curves.png"),
        score_by_value(ran, swept, metric, out / "score_by_value.png"),
    ]
    for path in files:
        tracking.log_artifact(run_id, str(path), "sweep")
    create_table_artifact(key="sweep", table=rows, description=f"Sweep variants, best first ({metric})")
    # The charts inline (the dashboard has no image artifact), and where MLflow keeps them.
    charts = [f"![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})" for p in files[2:]]
    where = tracking.run_url(run_id) or f"MLflow run `{run_id}`"
    create_markdown_artifact(
        key="sweep-report",
        description="Sweep report",
        markdown=markdown + "\n## Charts\n\n" + "\n\n".join(charts) + f"\n\nFiles: {where}, artifacts `sweep/`\n",
    )
    return str(out / "report.md")
