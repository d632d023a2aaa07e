"""The ``fluxaorm`` command: an application's schema, streams and outbox from a shell.

Installed as a console script (and run by ``python -m fluxaorm``). The command
modules (``_schema``, ``_streams``, ``_jobs``) add their commands to :data:`cli`
and reach the application's engine through :func:`engine`. Expected failures
(fluxaorm errors, a bad ``--app``, a refused confirmation) end with one line on
stderr and exit status 1; usage errors with status 2. See docs/cli.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .. import __version__
from ..consumer import _stop_on_signals as stop_on_signals
from ..engine import Engine
from ..errors import FluxaORMError
from ._app import AppError, load_engine

__all__ = ["cli", "engine", "main", "stopping"]


class _Group(click.Group):
    """A group whose subcommands' expected errors end in one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (FluxaORMError, AppError) as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # `fluxaorm tail ... | head`: the reader left
            ctx.exit(0)
        except OSError as exc:  # a port in use, a file not found
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


class _State:
    """The ``--app`` value, and the engine once a command asked for it."""

    def __init__(self, app: str | None):
        self.app = app
        self.engine: Engine | None = None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--app",
    envvar="FLUXAORM_APP",
    metavar="MODULE:ATTRIBUTE",
    help="The application's Registry, Engine or function returning one "
    "(default: $FLUXAORM_APP).",
)
@click.version_option(__version__, prog_name="fluxaorm")
@click.pass_context
def cli(ctx: click.Context, app: str | None) -> None:
    """Operate a fluxaorm application: schema, dirty streams, outbox, dead letters.

    Exit status: 0 success, 1 failure (or a schema that differs, for `schema
    diff`), 2 a usage error.
    """
    ctx.obj = _State(app)


def engine() -> Engine:
    """Return the application's engine, loading it on first use (closed on exit)."""
    ctx = click.get_current_context()
    state = ctx.find_object(_State)
    if state is None:  # pragma: no cover - every command runs under `cli`
        raise click.UsageError("run this command through `fluxaorm`")
    if state.engine is None:
        state.engine = load_engine(state.app)
        ctx.find_root().call_on_close(state.engine.close)
    return state.engine


@contextmanager
def stopping() -> Iterator[threading.Event]:
    """Yield an event set by SIGINT or SIGTERM, for loops that stop cleanly."""
    stop = threading.Event()
    with stop_on_signals(stop):
        yield stop


def main() -> None:
    """Run the command line (the ``fluxaorm`` console script)."""
    cli(prog_name="fluxaorm")


# The command modules register their commands on `cli` when imported.
from . import _jobs, _schema, _streams  # noqa: E402, F401
