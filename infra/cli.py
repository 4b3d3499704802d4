"""The ``ctloop`` command line: the composition root of every process.

Each stage keeps its commands in ``infra/commands/<stage>.py`` with a ``register(cli)`` function;
this file lists them explicitly.
"""
from __future__ import annotations

import importlib
import logging

import click

from infra.settings import Settings

COMMAND_MODULES = (
    "infra.commands.core",        # broker, tail, topics, settings
    "infra.commands.processing",  # process, trigger
    "infra.commands.training",    # train, models
    "infra.commands.serving",     # status, promote, rollback
    "infra.commands.analytics",   # sink, sql, report
    "infra.commands.demo",        # demo, bench
    "infra.commands.dead_letters",  # dead-letters replay
    "infra.commands.app",         # app (the production stack's serving app)
)


@click.group()
@click.option("--log-level", default=None, help="Overrides CTLOOP_LOG_LEVEL.")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """ctloop: models that improve themselves (continuous training and deployment on Kafka)."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a CTLOOP_* value that does not parse: say which, no traceback
        raise click.ClickException(str(exc)) from None
    if log_level:
        settings = settings.replace(log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = settings


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(cli)


_register_all()


def main() -> None:
    """The ``ctloop`` command-line entry point."""
    cli(prog_name="ctloop")


if __name__ == "__main__":
    main()
