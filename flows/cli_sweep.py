"""`peftflow sweep CONFIG --grid KEY=V1,V2`: train the variants, compare them, publish the best."""

from __future__ import annotations

from typing import Optional

import typer

from flows.cli_support import OFFLINE_STORE, config_read, fail, state


def sweep(
    config: str = typer.Argument(
        ..., help="Run config YAML; an optional `sweep:` section holds grid, variants, max_parallel."
    ),
    grid: list[str] = typer.Option(
        [], "--grid", help="KEY=V1,V2,...: one key's values; repeat for a grid of every combination."
    ),
    max_parallel: Optional[int] = typer.Option(
        None, "--max-parallel", min=1, help="Variants training at once (default: the section's, else 1)."
    ),
    offline_store: bool = OFFLINE_STORE,
) -> None:
    """Run the sweep flow: every variant trained and scored alike; only the best is registered and gated."""
    try:
        from peftflow.sweep.plan import check_sweep, read_sweep_file

        request, plan = read_sweep_file(config, grid, max_parallel)
        config_read(config, request.unused, [v.config for v in plan.variants])
        check_sweep(plan, offline_store)  # bad model, data or variant fail here, before the flow starts, as one line
        typer.echo(
            f"sweep of {len(plan.variants)} variants, {plan.max_parallel} at a time: "
            + "; ".join(v.name for v in plan.variants),
            err=True,
        )
        from flows.sweep import sweep as sweep_flow
        from flows.terminal import training_bar

        with training_bar(state["verbose"]):
            result = sweep_flow(request.base, request.grid, request.variants, request.max_parallel)
    except Exception as e:  # noqa: BLE001 - user errors become one line, others re-raise
        fail(e)
        return
    metric = plan.base.promotion.metric
    for row in result.rows:
        value = f"{row[metric]:.4f}" if metric in row else f"failed: {row.get('failed')}"
        typer.echo(f"{row['rank']:>2}  {row['variant']}: {metric} {value}")
    champion = f"v{result.champion}" if result.champion else "none"
    typer.echo(
        f"{result.name} v{result.version} ({result.winner}): "
        f"{'promoted' if result.promoted else 'not promoted'}; champion -> {champion}; report {result.report}"
    )
