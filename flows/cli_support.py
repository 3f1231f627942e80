"""What every `peftflow` command shares: the --debug / --verbose state, one-line user errors, and
reading a run config with its warnings."""

from __future__ import annotations

from pathlib import Path

import typer

state = {"debug": False, "verbose": False}
# run, validate, sweep: the run store probe skipped, for a machine without the store's credentials
OFFLINE_STORE = typer.Option(
    False,
    "--offline-store",
    envvar="PEFTFLOW_OFFLINE_STORE",
    help="Do not probe the run store (storage / PEFTFLOW_STORAGE): for a machine that "
    "deliberately lacks its credentials. Env: PEFTFLOW_OFFLINE_STORE=1.",
)


def fail(e: BaseException) -> None:
    from peftflow.errors import UserError

    if state["debug"] or not isinstance(e, UserError):
        raise e
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(UserError.exit_code)


def show_config_warnings() -> None:
    """The config reader's warnings (a key given twice) as one `warning:` line each on stderr, as the
    unused keys' warning is shown; they still reach the `peftflow` logger's handlers."""
    import logging
    import sys

    logger = logging.getLogger("peftflow.config")
    if not any(getattr(h, "peftflow_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler.peftflow_cli = True
        logger.addHandler(handler)


def read_run_config(path):
    """(config, keys that cannot change the run, schema read), warning about them."""
    from peftflow.config import read_config

    cfg, unused, schema = read_config(path)
    config_read(path, unused, [cfg])
    return cfg, unused, schema


def config_read(path, unused: list[str], configs: list) -> None:
    """After reading `path`: bitsandbytes let in when one of the configs it runs needs it, one
    warning line for the keys that cannot change the run (each with why), and one for each
    speed-only kernel this machine lacks."""
    from peftflow.config.lf_keys import unheard_note
    from peftflow.models.kernels import missing_kernels

    if any(cfg.needs_bitsandbytes for cfg in configs):
        from flows.terminal import allow_bitsandbytes

        allow_bitsandbytes()
    if unused:
        typer.echo(f"warning: {path}: keys that cannot change this run: {unheard_note(unused)}", err=True)
    for line in sorted({line for cfg in configs for line in missing_kernels(cfg)}):
        typer.echo(f"warning: {path}: {line}", err=True)


def registry_error(e: Exception, what: str) -> Exception:
    """An unknown registered model, version or alias is the user's mistake, not a crash."""
    from mlflow.exceptions import MlflowException

    from peftflow.errors import UserError

    if isinstance(e, MlflowException) and e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        err = UserError(f"{what}: {e.message}")
        err.__cause__ = e
        return err
    return e


def check_model_ref(model: str) -> None:
    from peftflow.errors import UserError

    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        raise UserError(f"--model {model}: directory not found")
