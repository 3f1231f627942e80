"""`peftflow` command line: run, sweep, validate, export (safetensors or GGUF), check-serving, generate, promote,
rollback, history, emit-dataset-updated, relay, webhooks create.

User mistakes (bad config, bad data, unknown model) print one line and exit 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer

from flows.cli_export import export
from flows.cli_support import (
    OFFLINE_STORE,
    check_model_ref,
    fail,
    read_run_config,
    registry_error,
    show_config_warnings,
    state,
)
from flows.cli_sweep import sweep

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune, evaluate and publish PEFT models.")


def _set_defaults() -> None:
    """Offline-safe defaults; explicit environment settings win."""
    from peftflow.paths import peftflow_home

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary local server can take longer than Prefect's 20 s to start on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # A sweep's queued variants poll the temporary server for a slot: every 2 s, not up to 30 s.
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS", "2")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Cached step results live next to the files they point at, so deleting the home clears both.
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(peftflow_home() / "prefect-results"))
    # First use of a SQLite store logs table creation on stderr; a user error must stay one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show each training step and the libraries' bars and warnings."
    ),
) -> None:
    from flows.terminal import hide_bitsandbytes, quiet_libraries

    state["debug"], state["verbose"] = debug, verbose
    _set_defaults()
    quiet_libraries(verbose)
    hide_bitsandbytes()  # until a config that needs it is read (_read)
    show_config_warnings()


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="Run config YAML; omit for the built-in demo."),
    offline_store: bool = OFFLINE_STORE,
) -> None:
    """Run the finetune flow: prepare, train, merge, evaluate, publish, promote."""
    try:
        cfg, _, _ = read_run_config(config)
        from peftflow.preflight import preflight

        preflight(cfg, offline_store)  # what `validate` checks: bad model or data fail here, as one line
        from flows.finetune import finetune
        from flows.terminal import training_bar

        with training_bar(state["verbose"]):
            result = finetune(cfg)
    except Exception as e:  # noqa: BLE001 - user errors become one line, others re-raise
        fail(e)
        return
    scores = "  ".join(f"{label}={s['score']:.3f}" for label, s in result.scores.items())
    champion = f"v{result.champion}" if result.champion else "none"
    typer.echo(f"{result.name} v{result.version}: {scores}; champion -> {champion}")


app.command()(sweep)


@app.command()
def validate(config: str = typer.Argument(..., help="Run config YAML."), offline_store: bool = OFFLINE_STORE) -> None:
    """Check the config, model and data without training; print a data report."""
    try:
        cfg, _, schema = read_run_config(config)
        from peftflow.data.report import DataProblems
        from peftflow.preflight import preflight

        try:
            report = preflight(cfg, offline_store).report  # what `run` checks before its flow, no more, no less
        except DataProblems as e:  # the data cannot train: its whole report, then the first problem
            typer.echo(f"schema: {schema}")
            typer.echo(e.report.to_text())
            raise
    except Exception as e:  # noqa: BLE001
        fail(e)
        return
    typer.echo(f"schema: {schema}")
    typer.echo(report.to_text())


app.command()(export)


@app.command()
def generate(
    model: str = typer.Option(..., "--model", help="Model URI, e.g. models:/NAME@champion, or a local dir."),
    prompt: str = typer.Option(..., "--prompt", help="User message."),
    image: Optional[str] = typer.Option(
        None, "--image", help="Image file the message is about (vision-language models)."
    ),
    max_new_tokens: int = typer.Option(128, help="Generation budget."),
) -> None:
    """Generate a chat reply from a registered (or local) model, about an image with --image."""
    try:
        from peftflow.inference import generate_reply

        check_model_ref(model)
        text = generate_reply(model, prompt, max_new_tokens, image=image)
    except Exception as e:  # noqa: BLE001
        fail(registry_error(e, f"--model {model}"))
        return
    typer.echo(text)


@app.command("check-serving")
def check_serving(
    model: str = typer.Argument(..., help="models:/NAME@ALIAS, models:/NAME/VERSION or a local dir."),
) -> None:
    """Is the version ready for vLLM (adapter) or any transformers server (merged)? Exit 1 when not."""
    try:
        from peftflow.serving.checks import check_dir

        report = check_dir(_local_model_dir(model))
    except Exception as e:  # noqa: BLE001
        fail(registry_error(e, model))
        return
    for line in report.checked:
        typer.echo(f"ok: {line}")
    for line in report.problems:
        typer.echo(f"problem: {line}")
    typer.echo(f"{model}: {report.kind} version {'ready to serve' if report.ready else 'NOT ready to serve'}")
    if not report.ready:
        raise typer.Exit(1)


def _local_model_dir(model: str) -> str:
    """A `models:/` reference downloaded (an unknown name or alias is one line), or the dir as given."""
    from peftflow.errors import UserError

    check_model_ref(model)
    if not model.startswith("models:/"):
        return model
    from peftflow.mlflow_io.downloads import download_model_dir

    try:
        return download_model_dir(model)
    except LookupError as e:
        raise UserError(str(e)) from None


def _actor(given: Optional[str]) -> str:
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    return given or f"cli:{user}"


def _show_aliases(name: str) -> None:
    from peftflow.mlflow_io.aliases import alias_versions

    parts = [f"{alias} -> v{v}" if v else f"{alias} -> none" for alias, v in alias_versions(name).items()]
    typer.echo(f"{name}: " + ", ".join(parts))


@app.command()
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Option(..., "--version", help="Version to make champion."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded on the version."),
    actor: Optional[str] = typer.Option(None, "--actor", help="Who; default cli:<user>."),
) -> None:
    """Make VERSION the champion by hand (no gate); the old champion becomes `previous`."""
    try:
        from peftflow.mlflow_io.aliases import move_champion

        move_champion(name, version, reason, _actor(actor))
        _show_aliases(name)
    except Exception as e:  # noqa: BLE001
        fail(registry_error(e, f"{name} v{version}"))


@app.command()
def rollback(
    name: str = typer.Argument(..., help="Registered model name."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded on both versions."),
    actor: Optional[str] = typer.Option(None, "--actor", help="Who; default cli:<user>."),
) -> None:
    """Swap `champion` and `previous`: the previous champion serves again (run twice to undo)."""
    try:
        from peftflow.mlflow_io.aliases import rollback as roll_back

        roll_back(name, reason, _actor(actor))
        _show_aliases(name)
    except Exception as e:  # noqa: BLE001
        fail(registry_error(e, name))


@app.command()
def history(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Option(..., "--version", help="Version whose alias moves to show."),
) -> None:
    """Every alias move recorded on VERSION: when, alias, by whom, why."""
    try:
        import json

        from peftflow.mlflow_io.aliases import CHALLENGER, CHAMPION, PREVIOUS, alias_history

        moves = [{"alias": a, **m} for a in (CHAMPION, PREVIOUS, CHALLENGER) for m in alias_history(name, version, a)]
    except Exception as e:  # noqa: BLE001
        fail(registry_error(e, f"{name} v{version}"))
        return
    for m in sorted(moves, key=lambda m: m["at"]):
        typer.echo(json.dumps(m))


@app.command("emit-dataset-updated")
def emit_dataset_updated(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name(s) in dataset_info.json."),
    dataset_dir: Optional[str] = typer.Option(None, "--dataset-dir", help="Folder with dataset_info.json."),
    uri: Optional[str] = typer.Option(None, "--uri", help="Object that changed, e.g. s3://bucket/key."),
) -> None:
    """Emit `peftflow.dataset.updated` to the Prefect server (PREFECT_API_URL); the `retrain-on-data`
    deployment retrains on it."""
    try:
        from flows.events import emit_dataset_updated as emit

        event = emit(dataset, dataset_dir, uri)
    except Exception as e:  # noqa: BLE001
        fail(e)
        return
    typer.echo(f"emitted {event.event} {event.id} for dataset {dataset}")


@app.command()
def relay(
    host: str = typer.Option("0.0.0.0", "--host", help="Interface to listen on."),
    port: int = typer.Option(8765, "--port", help="Port; MLflow posts to http://HOST:PORT/mlflow-webhook."),
    secret: str = typer.Option(
        "",
        "--secret",
        envvar="PEFTFLOW_WEBHOOK_SECRET",
        show_default=False,
        help="Webhook secret shared with MLflow (env PEFTFLOW_WEBHOOK_SECRET).",
    ),
    model: list[str] = typer.Option(
        [],
        "--model",
        envvar="PEFTFLOW_RELAY_MODELS",
        help="Registered model to relay (repeat; env: space-separated); default all.",
    ),
) -> None:
    """Serve MLflow registry webhooks: verify each, emit `peftflow.model.alias-set` to PREFECT_API_URL."""
    try:
        from services.relay import serve

        serve(host, port, secret, frozenset(model))
    except Exception as e:  # noqa: BLE001
        fail(e)


webhooks = typer.Typer(no_args_is_help=True, help="The MLflow webhook that feeds `peftflow relay`.")
app.add_typer(webhooks, name="webhooks")


@webhooks.command("create")
def webhooks_create(
    url: str = typer.Option(..., "--url", help="The relay, e.g. http://relay:8765/mlflow-webhook."),
    secret: str = typer.Option(
        "",
        "--secret",
        envvar="PEFTFLOW_WEBHOOK_SECRET",
        show_default=False,
        help="Webhook secret (env PEFTFLOW_WEBHOOK_SECRET).",
    ),
    model: list[str] = typer.Option([], "--model", help="Team's registered model (repeat); checked to exist."),
    name: str = typer.Option("peftflow-relay", "--name", help="Webhook name; an existing one is updated."),
) -> None:
    """Register (or update) the webhook on MLFLOW_TRACKING_URI for alias moves, then send MLflow's test delivery."""
    try:
        from peftflow.mlflow_io.webhooks import ensure_webhook

        setup = ensure_webhook(url, secret, model, name)
    except Exception as e:  # noqa: BLE001
        fail(e)
        return
    typer.echo(f"webhook {name} ({setup.webhook_id}) {'created' if setup.created else 'updated'} -> {url}")
    if not setup.test_ok:
        typer.echo(f"error: MLflow's test delivery failed ({setup.test_status}): {setup.test_detail[:300]}", err=True)
        raise typer.Exit(1)
    typer.echo(f"test delivery: {setup.test_status} {setup.test_detail[:300]}")


@app.command("local-deployments")
def local_deployments(
    out: str = typer.Option("deployments/prefect.local.yaml", "--out", help="File to write."),
    pool: str = typer.Option("local", "--pool", help="Process work pool name."),
) -> None:
    """Write the deployments of deployments/prefect.yaml for one machine: a process pool, this checkout.
    Then: prefect deploy --all --prefect-file OUT."""
    from pathlib import Path

    from flows.deployfile import write_local_deployments

    typer.echo(f"wrote {write_local_deployments(Path(out), pool=pool)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
