"""``fluxaorm relay``, ``backfill`` and ``metrics``: the commands that do work.

Thin over ``Engine.relay_outbox()``, ``Engine.backfill()`` and
``fluxaorm.metrics.serve()`` (the extra ``fluxaorm[prometheus]``).
"""

from __future__ import annotations

import datetime
import importlib
from typing import Any

import click

from ..engine import Engine
from ..errors import DatabaseError, StreamError
from . import cli, engine, stopping
from ._output import counted, emit_json, progress

__all__: list[str] = []

_PROMETHEUS = "pip install 'fluxaorm[prometheus]'"


@cli.command(short_help="Publish what the outbox holds (once, or --loop).")
@click.option("--loop", is_flag=True, help="Relay again and again until interrupted.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between relays with --loop.",
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def relay(loop: bool, interval: float, as_json: bool) -> None:
    """Publish committed changes that have not reached Redis yet (the outbox).

    Once by default; with --loop every INTERVAL seconds until Ctrl-C or
    SIGTERM, backing off while a pool is down. Safe beside other relays and
    running consumers: no entry is published twice by two relays.
    """
    eng = engine()
    if not eng.outbox:
        click.echo(
            "the outbox is off (Registry(outbox=False)): nothing to relay", err=True
        )
    if not loop:
        _report(eng.relay_outbox(), as_json)
        return
    failures = 0
    with stopping() as stop:
        while not stop.is_set():
            try:
                published = eng.relay_outbox()
            except (StreamError, DatabaseError) as exc:
                if exc.permanent:
                    raise
                failures += 1
                wait = min(30.0, interval * 2**failures)
                click.echo(f"relay failed: {exc}; retrying in {wait:.1f}s", err=True)
                stop.wait(wait)
                continue
            failures = 0
            if published:
                _report(published, as_json)
            stop.wait(interval)


def _report(published: int, as_json: bool) -> None:
    if as_json:
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        emit_json({"time": now, "published": published})
    else:
        click.echo(f"published {counted(published, 'stream entry')} from the outbox")


def find_entity(eng: Engine, name: str) -> type:
    """Return the registered entity named ``name``.

    ``name`` may be the entity name of its stream events (``shop.User``), the
    class name (``UserEntity``) or the table name.

    Raises:
        click.BadParameter: no entity, or several, answer to that name.
    """
    found: dict[type, None] = {}
    for cls in eng.entities:
        schema = eng.schema(cls)
        if name in (schema.name, cls.__qualname__, cls.__name__, schema.table):
            found[cls] = None
    if len(found) == 1:
        return next(iter(found))
    known = ", ".join(sorted(eng.schema(c).name for c in eng.entities)) or "none"
    if not found:
        raise click.BadParameter(
            f"no registered entity is called {name!r} (registered: {known})",
            param_hint="'ENTITY'",
        )
    names = ", ".join(sorted(eng.schema(c).name for c in found))
    raise click.BadParameter(
        f"{name!r} names several entities ({names}); give the full entity name",
        param_hint="'ENTITY'",
    )


@cli.command(short_help="Publish existing rows as Update events (resumable).")
@click.argument("entity")
@click.option("--stream", required=True, help="The dirty stream to publish to.")
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows read and published per step.",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Ignore an interrupted run's checkpoint and start from the first row.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def backfill(
    entity: str, stream: str, chunk: int, restart: bool, as_json: bool
) -> None:
    """Publish every existing row of ENTITY to a stream as Update events, in id order.

    ENTITY is the entity name, class name or table name. Rows are read CHUNK at
    a time (memory stays bounded); each chunk and its checkpoint are written to
    Redis in one transaction, so an interrupted backfill (even killed) resumes
    where it stopped when run again, publishing no row twice. Progress goes to
    stderr.
    """
    eng = engine()
    cls = find_entity(eng, entity)
    info = eng.stream(stream)
    label = f"{eng.schema(cls).label} -> {info.key}"
    start: dict[str, int] = {}

    with progress(label) as update:

        def on_progress(done: int, total: int, last: int) -> None:
            if not start:
                start.update(done=done, last=last)
                if done and not as_json:
                    click.echo(
                        f"resuming after id {last} ({done:,} rows were published "
                        "before)",
                        err=True,
                    )
            update(done, total)

        published = eng.backfill(
            cls, info.name, chunk=chunk, restart=restart, progress=on_progress
        )
    result: dict[str, Any] = {
        "entity": eng.schema(cls).name,
        "stream": info.key,
        "published": published,
        "resumed_after_id": start.get("last", 0),
    }
    if as_json:
        emit_json(result)
        return
    resumed = (
        f" (resumed after id {result['resumed_after_id']})"
        if result["resumed_after_id"]
        else ""
    )
    click.echo(f"published {counted(published, 'row')} of {label}{resumed}")


@cli.command(short_help="Serve Prometheus metrics on a port.")
@click.option(
    "--port", type=click.IntRange(0, 65535), required=True, help="The port to serve on."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="The address to bind."
)
def metrics(port: int, host: str) -> None:
    """Serve the Prometheus metrics (fluxaorm_*) on HOST:PORT until interrupted.

    Needs the extra: pip install 'fluxaorm[prometheus]'.
    """
    eng = engine()
    try:
        module: Any = importlib.import_module("fluxaorm.metrics")
    except ImportError as exc:
        raise click.ClickException(
            f"metrics are not available ({_first_line(exc)}); install them with "
            f"{_PROMETHEUS}"
        ) from None
    try:
        module.serve(eng, port, host)
    except ImportError as exc:
        reason = _first_line(exc)
        if "fluxaorm[prometheus]" not in reason:
            reason += f"; install it with {_PROMETHEUS}"
        raise click.ClickException(reason) from None
    except KeyboardInterrupt:
        return


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__
