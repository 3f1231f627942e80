"""What every `peftflow` command shares: the --debug / --verbose state, one-line user errors, and
reading a run config with its warnings."""

from __future__ import annotations

import typer

state = {"debug": False, "verbose": False}


def fail(e: BaseException) -> None:
    from peftflow.errors import UserError

    if state["debug"] or not isinstance(e, UserError):
        raise e
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(UserError.exit_code)


def read_run_config(path):
    """(config, keys accepted but unused, schema read), warning about the unused keys."""
    from peftflow.config import read_config

    cfg, unused, schema = read_config(path)
    config_read(path, unused, [cfg])
    return cfg, unused, schema


def config_read(path, unused: list[str], configs: list) -> None:
    """After reading `path`: bitsandbytes let in when one of the configs it runs needs it, and one
    warning line for the keys accepted but unused."""
    if any(cfg.needs_bitsandbytes for cfg in configs):
        from flows.terminal import allow_bitsandbytes

        allow_bitsandbytes()
    if unused:
        typer.echo(f"warning: {path}: keys accepted but not used by peftflow yet: {', '.join(unused)}", err=True)
