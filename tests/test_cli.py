"""The ``fluxaorm`` command, run as a subprocess against the real servers.

Each test starts ``fluxaorm --app tests.cli_app:registry ...`` (see
``tests/cli_app.py``) from the repository folder and asserts what it prints and
its exit status: 0 success, 1 an expected failure (one line on stderr, never a
traceback), 2 a usage error.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from click.testing import CliRunner

import fluxaorm
from fluxaorm.cli import cli
from tests.cli_app import Customer, Order, make_registry
from tests.conftest import MYSQL_URL
from tests.servers import ThrowawayRedis, free_port

# Every command against the one Redis server and against a Redis Cluster.
pytestmark = pytest.mark.also_on_cluster

ROOT = Path(__file__).resolve().parent.parent
FLUXAORM = str(Path(sys.executable).with_name("fluxaorm"))
APP = "tests.cli_app:registry"
STREAM = "dirty_CliChanges"


def run(
    *args: str,
    app: str | None = APP,
    stdin: str | None = "",
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``fluxaorm [--app APP] ARGS`` to completion and return what it did."""
    command = [FLUXAORM, *(("--app", app) if app else ()), *args]
    return subprocess.run(
        command,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def invoke(*args: str, app: str = APP, stdin: str = "") -> Any:
    """Run the command in this process (click's runner): cheaper than a subprocess.

    For the checks around each command's subprocess test; the result has
    ``exit_code``, ``stdout`` and ``stderr``.
    """
    return CliRunner().invoke(cli, ["--app", app, *args], input=stdin)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``fluxaorm --app APP ARGS`` in the background, stdout and stderr piped."""
    return subprocess.Popen(
        [FLUXAORM, "--app", APP, *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


class Lines:
    """Lines of a pipe, read by a thread, handed out with a deadline."""

    def __init__(self, pipe: Any):
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float = 15.0) -> str:
        line = self._queue.get(timeout=timeout)
        if line is None:
            raise EOFError("the command closed its output")
        return line


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert exit status 1 with one line on stderr and no traceback; return it."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def stop(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    """Send ``sig`` and return the exit status (the command must stop by itself)."""
    process.send_signal(sig)
    return process.wait(timeout=15)


@pytest.fixture
def app(
    clean: None, redis_target: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[fluxaorm.Engine]:
    """The app's engine on clean servers, its tables created; on the throwaway
    Redis Cluster too (the commands started then use it as well)."""
    if redis_target.kind == "cluster":
        monkeypatch.setenv("CLI_APP_REDIS_URL", redis_target.url)
    with make_registry().validate() as engine:
        engine.sync_schema()
        yield engine


def flush_customers(engine: fluxaorm.Engine, *names: str) -> list[Customer]:
    orm = engine.new_orm()
    made = [orm.new_entity(Customer, name=n, balance=Decimal("1.50")) for n in names]
    orm.flush()
    return made


# -- the command itself -----------------------------------------------------------------


def test_every_command_has_help() -> None:
    """--help works on the group and on every command and subcommand."""
    runner = CliRunner()
    todo: list[tuple[str, ...]] = [()]
    seen = 0
    while todo:
        path = todo.pop()
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: " in result.output
        seen += 1
        command: Any = cli
        for part in path:
            command = command.commands[part]
        if isinstance(command, click.Group):
            todo.extend((*path, sub) for sub in command.commands)
    # The group, 9 commands, schema's 2 and dead's 3.
    assert seen == 15


def test_installed_command_and_python_m_show_the_version() -> None:
    """The console script and `python -m fluxaorm` are the same command."""
    script = run("--version", app=None)
    module = subprocess.run(
        [sys.executable, "-m", "fluxaorm", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == module.returncode == 0
    assert (
        script.stdout == module.stdout == f"fluxaorm, version {fluxaorm.__version__}\n"
    )


@pytest.mark.parametrize(
    ("app", "says"),
    [
        (None, "no application given: pass --app module:attribute"),
        ("tests.cli_app", "expected module:attribute"),
        ("tests.no_such_module:registry", "no module named 'tests.no_such_module'"),
        ("tests.cli_app:nothing", "tests.cli_app has no attribute 'nothing'"),
        ("tests.cli_app:not_an_engine", "gives an object of type int"),
    ],
)
def test_a_wrong_app_is_one_line_and_exit_1(app: str | None, says: str) -> None:
    """A missing or wrong --app ends with one line naming what to fix, exit status 1."""
    args = ["--app", app, "check"] if app else ["check"]
    result = CliRunner().invoke(cli, args, env={"FLUXAORM_APP": None})
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert says in result.stderr


def test_a_wrong_app_in_a_subprocess_shows_no_traceback() -> None:
    """The installed command: a module that does not import is one line, exit 1."""
    result = run("check", app="tests.no_such_module:registry")
    assert "no module named 'tests.no_such_module'" in one_line_error(result)


def test_app_from_the_environment_and_a_function_returning_an_engine(app: Any) -> None:
    """FLUXAORM_APP is read when --app is missing; a function is called for its engine."""
    result = run(
        "check", app=None, env={"FLUXAORM_APP": "tests.cli_app:engine_factory"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "ok: MySQL pools default; Redis pools default; 2 entities, 2 dirty streams\n"
    )


def test_usage_error_exits_2() -> None:
    """An unknown option is a usage error: exit status 2."""
    result = invoke("streams", "--no-such-option")
    assert result.exit_code == 2
    assert "No such option '--no-such-option'" in result.stderr


# -- check and schema -------------------------------------------------------------------


def test_check_reports_tables_out_of_sync_then_ok(clean: None) -> None:
    """check exits 1 while tables are missing (JSON says why) and 0 once applied."""
    missing = run("check")
    assert missing.returncode == 1
    assert (
        "the tables do not match the entities (cli_customers, cli_orders, "
        in (missing.stderr.splitlines()[0])
    )
    as_json = invoke("check", "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["permanent"] is True
    assert report["pool"] == "default"

    assert invoke("schema", "apply").exit_code == 0
    ok = invoke("check", "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == {
        "ok": True,
        "mysql_pools": ["default"],
        "redis_pools": ["default"],
        "entities": 2,
        "streams": 2,
    }


@pytest.mark.single_redis  # a Redis server (or address) of its own
def test_no_command_prints_a_password() -> None:
    """Unreachable servers behind URLs with passwords: the errors never show them."""
    port = free_port()
    env = {
        "CLI_APP_MYSQL_URL": f"mysql://app:Sup3rS3cret@127.0.0.1:{port}/shop",
        "CLI_APP_REDIS_URL": f"redis://worker:R3disS3cret@127.0.0.1:{port}/0",
    }
    for args in (("check",), ("streams",)):
        result = run(*args, env=env)
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr
        for secret in ("Sup3rS3cret", "R3disS3cret"):
            assert secret not in result.stdout + result.stderr, args
    assert f"127.0.0.1:{port}" in result.stderr


def test_schema_diff_exits_1_on_drift_and_marks_destructive_statements(
    app: fluxaorm.Engine, mysql_conn: Any
) -> None:
    """schema diff prints the SQL, marks the destructive ALTER, exits 1; 0 once in sync."""
    cursor = mysql_conn.cursor()
    cursor.execute("ALTER TABLE cli_orders ADD COLUMN legacy_note int NULL")
    cursor.execute("ALTER TABLE cli_customers DROP COLUMN balance")

    result = run("schema", "diff")

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    add = next(i for i, line in enumerate(lines) if "ADD COLUMN `balance`" in line)
    assert not lines[add - 1].startswith("-- DESTRUCTIVE")
    drop = lines.index("ALTER TABLE `cli_orders` DROP COLUMN `legacy_note`;")
    assert lines[drop - 1].startswith("-- DESTRUCTIVE: can lose data")
    assert lines[-1] == "-- 2 statements to run (1 destructive)"

    as_json = json.loads(invoke("schema", "diff", "--json").stdout)
    assert as_json["in_sync"] is False
    assert [(a["table"], a["destructive"]) for a in as_json["alters"]] == [
        ("cli_customers", False),
        ("cli_orders", True),
    ]

    safe = invoke("schema", "apply")
    assert safe.exit_code == 0
    assert "not run: 1 destructive statement" in safe.stderr
    assert invoke("schema", "diff").exit_code == 1
    assert invoke("schema", "apply", "--destructive", "--yes").exit_code == 0
    in_sync = run("schema", "diff")
    assert (in_sync.returncode, in_sync.stdout) == (0, "-- in sync\n")


def _tables(conn: Any) -> set[str]:
    cursor = conn.cursor()
    cursor.execute("SHOW TABLES")
    return {row[0] for row in cursor.fetchall()}


def test_schema_apply_never_drops_another_apps_tables_by_accident(
    app: fluxaorm.Engine, mysql_conn: Any
) -> None:
    """A partial registry's apply --destructive --yes keeps every table it does not know;
    dropping them needs --drop-unknown-tables and a yes."""
    cursor = mysql_conn.cursor()
    cursor.execute("CREATE TABLE other_app_invoices (id int PRIMARY KEY)")
    cursor.execute("INSERT INTO other_app_invoices VALUES (1)")
    everything = _tables(mysql_conn)
    partial = "tests.cli_app:partial_registry"

    diff = invoke("schema", "diff", app=partial)
    assert diff.exit_code == 0, diff.stdout
    assert (
        "-- table 'other_app_invoices' (pool 'default') is used by no " in diff.stdout
    )
    applied = run("schema", "apply", "--destructive", "--yes", app=partial)
    assert applied.returncode == 0, applied.stderr
    assert _tables(mysql_conn) == everything

    for answer in ("n\n", ""):  # "no", and no terminal to ask on
        refused = invoke(
            "schema", "apply", "--drop-unknown-tables", app=partial, stdin=answer
        )
        assert "not confirmed: nothing was run" in refused.stderr
        assert refused.exit_code == 1
        assert "DROP TABLE `other_app_invoices`;" in refused.stderr
        assert _tables(mysql_conn) == everything

    dropped = run("schema", "apply", "--drop-unknown-tables", app=partial, stdin="y\n")
    assert dropped.returncode == 0, dropped.stderr
    assert "dropping the tables cli_orders, other_app_invoices?" in dropped.stderr
    assert _tables(mysql_conn) == {"cli_customers", "_fluxaorm_outbox"}


# -- streams, tail, replay -------------------------------------------------------------


def test_streams_shows_length_groups_lag_pending_dead_letters_and_outbox(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """streams reports what the broker measures, as a table and as JSON."""
    flush_customers(app, "a", "b", "c")
    redis_client.xgroup_create(STREAM, "billing", "0")
    redis_client.xreadgroup("billing", "worker-1", {STREAM: ">"}, count=1)
    redis_client.xadd(f"{STREAM}:dead", {"error": "boom"})

    table = run("streams")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "billing" in line)
    cells = [c.strip() for c in row.replace("│", "|").split("|")]
    assert cells[:4] == [STREAM, "billing", "2", "1"]
    assert "Outbox (committed, not yet in Redis)" in table.stdout

    report = json.loads(invoke("streams", "--json").stdout)
    (changes,) = [s for s in report["streams"] if s["stream"] == STREAM]
    assert (changes["len"], changes["dead_letters"]) == (3, 1)
    (group,) = changes["groups"]
    assert (group["name"], group["lag"], group["pending"]) == ("billing", 2, 1)
    assert group["consumers"][0]["name"] == "worker-1"
    assert report["outbox"] == [
        {
            "mysql_pool": "default",
            "rows": 0,
            "entries": 0,
            "oldest_seconds": 0.0,
            "quarantined": 0,
        }
    ]


def test_streams_watch_refreshes_until_sigterm(app: fluxaorm.Engine) -> None:
    """streams --watch --json prints a document per refresh and stops cleanly on SIGTERM."""
    process = start("streams", "--watch", "--interval", "0.1", "--json")
    lines = Lines(process.stdout)
    first = json.loads(lines.next())
    flush_customers(app, "a")
    deadline = time.monotonic() + 15
    while True:
        latest = json.loads(lines.next())
        lengths = {s["stream"]: s["len"] for s in latest["streams"]}
        if lengths[STREAM] == 1 or time.monotonic() > deadline:
            break
    assert {s["stream"]: s["len"] for s in first["streams"]}[STREAM] == 0
    assert lengths[STREAM] == 1
    assert stop(process, signal.SIGTERM) == 0


def test_tail_follows_a_stream_while_flushes_happen(app: fluxaorm.Engine) -> None:
    """tail prints each insert, update and delete as the flushes publish them."""
    process = start("tail", "CliChanges")
    lines = Lines(process.stdout)
    assert "following dirty_CliChanges from now" in process.stderr.readline()
    (tom,) = flush_customers(app, "Tom")
    first = lines.next()
    orm = app.new_orm()
    edited = orm.edit_entity(orm.get_by_id(Customer, tom.id))
    edited.name = "Tim"
    orm.flush()
    second = lines.next()
    orm.new_entity(Order, total=5)
    orm.delete_entity(edited)
    orm.flush()
    third, fourth = lines.next(), lines.next()
    assert stop(process) == 0

    assert first.split("  ")[1:] == [
        "Insert",
        "cli.Customer",
        f"id={tom.id}",
        f'{{"id": {tom.id}, "name": "Tom", "balance": "1.50"}}',
    ]
    assert second.split("  ")[1:] == [
        "Update",
        "cli.Customer",
        f"id={tom.id}",
        '{"name": "Tim"}',
        'old={"name": "Tom"}',
    ]
    assert sorted(line.split("  ")[1] for line in (third, fourth)) == [
        "Delete",
        "Insert",
    ]


def test_tail_from_a_point_reads_what_the_stream_holds_as_json(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """tail --from 0 / an entry id / a time / a duration starts there; --count stops."""
    flush_customers(app, "a")
    flush_customers(app, "b")
    flush_customers(app, "c")
    ids = [i.decode() for i, _ in redis_client.xrange(STREAM)]

    def tail(start: str, count: int) -> list[dict[str, Any]]:
        result = invoke(
            "tail", "CliChanges", "--from", start, "--count", str(count), "--json"
        )
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    everything = tail("0", 3)
    assert [e["message_id"] for e in everything] == ids
    assert [e["bind"]["name"] for e in everything] == ["a", "b", "c"]
    assert everything[0]["operation"] == "Insert" and everything[0]["stream"] == STREAM
    assert [e["message_id"] for e in tail(ids[1], 2)] == ids[1:]
    hour_ago = (datetime.now() - timedelta(hours=1)).isoformat(timespec="seconds")
    assert [e["message_id"] for e in tail(hour_ago, 3)] == ids
    assert [e["message_id"] for e in tail("10m", 1)] == ids[:1]

    bad = invoke("tail", "CliChanges", "--from", "yesterday-ish")
    assert bad.exit_code == 2
    assert "'yesterday-ish' is not an entry id" in bad.stderr


def test_tail_shows_an_invalid_entry_and_goes_on(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """An entry that is not a valid event is printed with its reason, not a crash."""
    redis_client.xadd(STREAM, {"foreign": "producer"})
    flush_customers(app, "a")
    result = invoke("tail", "CliChanges", "--from", "0", "--count", "2")
    assert result.exit_code == 0, result.stderr
    invalid, valid = result.stdout.splitlines()
    assert invalid.endswith("  invalid  missing field 'action'")
    assert "  Insert  cli.Customer  " in valid


def test_unknown_stream_is_one_line(app: fluxaorm.Engine) -> None:
    """A stream no entity declares: exit 1 naming the declared ones."""
    line = one_line_error(run("tail", "Nope"))
    assert "no entity declares the dirty stream 'Nope'" in line
    assert "CliChanges, CliNew" in line


def _consume_all(engine: fluxaorm.Engine, group: str) -> list[str]:
    """Consume every event of CliChanges in ``group`` (keeping the entries); their names."""
    got: list[str] = []
    consumer = fluxaorm.new_dirty_stream_consumer_many(
        engine.new_orm(),
        "CliChanges",
        lambda events: got.extend(e.bind["name"] for e in events),
        group=group,
        delete_acknowledged=False,
    )
    with consumer:
        consumer.consume(100, 0)
    return got


def test_replay_moves_a_group_back_and_its_consumers_get_the_events_again(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """replay --from 0 / an entry id re-delivers what the stream holds from there."""
    flush_customers(app, "a", "b", "c")
    assert _consume_all(app, "search") == ["a", "b", "c"]
    assert _consume_all(app, "search") == []

    again = run("replay", "CliChanges", "--group", "search", "--from", "0")
    assert again.returncode == 0, again.stderr
    assert again.stdout == (
        "group 'search' of dirty_CliChanges moved: it delivers the first entry at "
        "or after 0 next; 3 entries to deliver, 0 pending\n"
    )
    assert _consume_all(app, "search") == ["a", "b", "c"]

    second = redis_client.xrange(STREAM)[1][0].decode()
    moved = invoke(
        "replay", "CliChanges", "--group", "search", "--from", second, "--json"
    )
    assert json.loads(moved.stdout) == {
        "stream": STREAM,
        "group": "search",
        "created": False,
        "from": second,
        "lag": 2,
        "pending": 0,
    }
    assert _consume_all(app, "search") == ["b", "c"]

    created = invoke(
        "replay", "CliChanges", "--group", "audit", "--from", "1h", "--json"
    )
    assert json.loads(created.stdout)["created"] is True
    assert _consume_all(app, "audit") == ["a", "b", "c"]


def test_replay_asks_before_skipping_undelivered_entries(
    app: fluxaorm.Engine,
) -> None:
    """Moving a group past entries it has not read asks; no answer leaves it in place."""
    flush_customers(app, "a", "b")
    assert invoke("replay", "CliChanges", "--group", "g", "--from", "0").exit_code == 0

    refused = invoke("replay", "CliChanges", "--group", "g", "--from", "$")
    assert "Group 'g' has 2 entries not yet delivered" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: not confirmed: the group was not moved (pass --yes to skip the question)"
    )
    assert refused.exit_code == 1
    assert _consume_all(app, "g") == ["a", "b"]

    flush_customers(app, "c")
    skipped = invoke("replay", "CliChanges", "--group", "g", "--from", "$", "--yes")
    assert skipped.exit_code == 0, skipped.stderr
    assert _consume_all(app, "g") == []


# -- dead letters ------------------------------------------------------------------------


def _poison(engine: fluxaorm.Engine) -> None:
    """Make the event of customer "b" a dead letter (max_deliveries=2)."""

    def handler(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        failed = None
        for event in events:
            if event.bind.get("name") == "b":
                failed = ValueError("cannot handle b [yet]")
            else:
                event.ack()
        if failed is not None:
            raise failed

    consumer = fluxaorm.new_dirty_stream_consumer_single(
        engine.new_orm(), "CliChanges", handler, max_deliveries=2
    )
    for _ in range(3):
        with contextlib.suppress(ValueError):
            consumer.consume(10, 0)


def test_dead_letters_are_listed_requeued_and_purged(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """dead list shows the poison event and why; requeue puts it back; purge asks first."""
    flush_customers(app, "a", "b", "c")
    _poison(app)

    table = run("dead", "list", "CliChanges")
    assert table.returncode == 0, table.stderr
    assert "Insert cli.Customer id=2" in table.stdout
    assert "ValueError: cannot handle b [yet]" in table.stdout
    (letter,) = [
        json.loads(line)
        for line in invoke("dead", "list", "CliChanges", "--json").stdout.splitlines()
    ]
    assert letter["deliveries"] == 2 and letter["group"] == "default"
    assert letter["event"]["bind"] == {"id": 2, "name": "b", "balance": "1.50"}
    assert letter["fields"]["action"] == "add"

    requeued = run("dead", "requeue", "CliChanges")
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout == (
        "requeued 1 dead letter to dirty_CliChanges; 0 left in dirty_CliChanges:dead\n"
    )
    (entry,) = redis_client.xrange(STREAM)
    assert entry[1][b"id"] == b"2"

    _poison(app)
    kept = invoke("dead", "purge", "CliChanges", stdin="n\n")
    assert kept.exit_code == 1
    assert "Delete all 1 dead letter of dirty_CliChanges for good?" in kept.stderr
    assert redis_client.xlen(f"{STREAM}:dead") == 1
    purged = run("dead", "purge", "CliChanges", "--yes", "--json")
    assert json.loads(purged.stdout) == {"stream": STREAM, "purged": 1}
    assert redis_client.xlen(f"{STREAM}:dead") == 0


@pytest.mark.single_redis  # a Redis server (or address) of its own
def test_dead_requeue_never_loses_a_letter_when_redis_refuses(clean: None) -> None:
    """Redis out of memory: requeue exits 1 saying so, every letter stays; later all move."""
    with ThrowawayRedis(["--maxmemory-policy", "noeviction"]) as server:
        client = server.client()
        letters = [
            client.xadd(
                f"{STREAM}:dead",
                {
                    "action": "add",
                    "entity": "cli.Customer",
                    "id": str(n),
                    "s": b"\x81\xa2id" + bytes([n]),
                    "error": "boom",
                    "deliveries": "3",
                    "original_id": f"1-{n}",
                    "group": "default",
                },
            )
            for n in range(1, 6)
        ]
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used - 262_144)
        env = {"CLI_APP_REDIS_URL": server.url}

        refused = run("dead", "requeue", "CliChanges", env=env)

        assert "5 dead letters could not be requeued and stay in" in one_line_error(
            refused
        )
        assert [i for i, _ in client.xrange(f"{STREAM}:dead")] == letters
        assert client.xlen(STREAM) == 0
        client.config_set("maxmemory", 0)
        done = run("dead", "requeue", "CliChanges", "--json", env=env)
        assert json.loads(done.stdout) == {
            "stream": STREAM,
            "requeued": 5,
            "dead_letters_left": 0,
        }
        assert [f[b"id"] for _, f in client.xrange(STREAM)] == [
            str(n).encode() for n in range(1, 6)
        ]
        client.close()


# -- relay ---------------------------------------------------------------------------------


def _outbox_backlog(mysql_conn: Any, *names: str) -> None:
    """Flush customers while Redis is unreachable, their outbox rows aged past the delay."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(f"redis://127.0.0.1:{free_port()}/0")
    registry.register_entity(Customer, Order)
    with registry.validate() as offline:
        flush_customers(offline, *names)
    mysql_conn.cursor().execute(
        "UPDATE `_fluxaorm_outbox` SET `created_at` = UTC_TIMESTAMP(6) - INTERVAL 60 SECOND"
    )


def test_relay_publishes_the_outbox_backlog(
    app: fluxaorm.Engine, mysql_conn: Any, redis_client: redis.Redis
) -> None:
    """streams shows the backlog, relay publishes it once, and the backlog is gone."""
    _outbox_backlog(mysql_conn, "a", "b")
    (outbox,) = json.loads(invoke("streams", "--json").stdout)["outbox"]
    assert (outbox["rows"], outbox["entries"]) == (1, 4)

    result = run("relay")

    assert (result.returncode, result.stdout) == (
        0,
        "published 4 stream entries from the outbox\n",
    )
    assert redis_client.xlen(STREAM) == 2
    (outbox,) = json.loads(invoke("streams", "--json").stdout)["outbox"]
    assert outbox["rows"] == 0
    assert invoke("relay", "--json").stdout.endswith('"published": 0}\n')


def test_relay_loop_publishes_as_backlog_appears_and_stops_on_sigterm(
    app: fluxaorm.Engine, mysql_conn: Any, redis_client: redis.Redis
) -> None:
    """relay --loop relays every interval until SIGTERM, then exits 0."""
    process = start("relay", "--loop", "--interval", "0.1", "--json")
    lines = Lines(process.stdout)
    _outbox_backlog(mysql_conn, "a")
    report = json.loads(lines.next())
    assert report["published"] == 2
    assert redis_client.xlen(STREAM) == 1
    assert stop(process, signal.SIGTERM) == 0


# -- backfill ------------------------------------------------------------------------------


def test_backfill_publishes_every_row_as_an_update_in_id_order(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """backfill CliChanges: one Update per row, every field, id order, progress on stderr."""
    flush_customers(app, *"abcdefg")
    redis_client.delete(STREAM, "dirty_CliNew")

    result = run("backfill", "Customer", "--stream", "CliChanges", "--chunk", "3")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "published 7 rows of Customer -> dirty_CliChanges\n"
    assert "Customer -> dirty_CliChanges: 7/7 rows (100%" in result.stderr
    assert redis_client.exists("dirty_CliNew") == 0
    entries = app.get_event_broker().tail("CliChanges", "0", block=0)
    events = [e.event for e in next(entries)]
    assert [(e.operation, e.id, e.bind["name"]) for e in events if e] == [
        (fluxaorm.Update, n + 1, name) for n, name in enumerate("abcdefg")
    ]
    assert events[0] is not None and events[0].bind == {
        "id": 1,
        "name": "a",
        "balance": Decimal("1.50"),
    }
    again = invoke("backfill", "cli_customers", "--stream", "CliNew", "--json")
    assert json.loads(again.stdout) == {
        "entity": "cli.Customer",
        "stream": "dirty_CliNew",
        "published": 7,
        "resumed_after_id": 0,
    }


def test_backfill_refuses_a_stream_the_entity_does_not_feed(
    app: fluxaorm.Engine,
) -> None:
    """An entity that does not feed the stream: one line naming the streams it feeds."""
    line = one_line_error(run("backfill", "Order", "--stream", "CliNew"))
    assert "Order does not feed the dirty stream dirty_CliNew" in line
    assert "(it feeds: dirty_CliChanges)" in line
    unknown = invoke("backfill", "Nobody", "--stream", "CliNew")
    assert unknown.exit_code == 2
    assert "no registered entity is called 'Nobody'" in unknown.stderr


def _wait4(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, int]:
    """Wait for ``process``; return its exit status and peak memory (KiB)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the backfill did not finish")
        time.sleep(0.02)


def _backfill_process(entity: str, chunk: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [FLUXAORM, "--app", APP, "backfill", entity, "--stream", "CliChanges",
         "--chunk", str(chunk)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_backfill_of_100000_rows_resumes_after_sigkill_without_duplicates(
    app: fluxaorm.Engine, mysql_conn: Any, redis_client: redis.Redis
) -> None:
    """SIGKILL mid-way, run again: every row exactly once, in id order, memory bounded."""
    rows = 100_000
    cursor = mysql_conn.cursor()
    values = [(n, f"name{n}", "1.00") for n in range(1, rows + 1)]
    for at in range(0, rows, 25_000):
        cursor.executemany(
            "INSERT INTO cli_customers (id, name, balance) VALUES (%s, %s, %s)",
            values[at : at + 25_000],
        )
    # The peak memory of a backfill that has nothing to read: the command alone.
    empty = _backfill_process("Order", 5000)
    status, baseline = _wait4(empty)
    assert status == 0, empty.stderr.read() if empty.stderr else ""

    first = _backfill_process("Customer", 2000)
    checkpoint = "dirty_{dirty_CliChanges}:backfill:cli.Customer"
    while True:
        last = redis_client.xrevrange(checkpoint, count=1)
        if last and int(last[0][1][b"last_id"]) >= 20_000:
            first.kill()
            break
        assert first.poll() is None, "the backfill ended before it could be killed"
    first.wait(15)
    killed_at = redis_client.xlen(STREAM)
    assert 20_000 <= killed_at < rows

    second = _backfill_process("Customer", 5000)
    status, peak = _wait4(second)
    err = second.stderr.read() if second.stderr else ""
    assert status == 0, err
    assert f"resuming after id {killed_at} ({killed_at:,} rows were published" in err
    assert "Customer -> dirty_CliChanges: 100,000/100,000 rows (100%" in err
    assert redis_client.xlen(checkpoint) == 0

    ids: list[int] = []
    start = "-"
    while True:
        page = redis_client.xrange(STREAM, start, "+", count=20_000)
        if not page:
            break
        ids.extend(int(fields[b"id"]) for _, fields in page)
        assert all(fields[b"action"] == b"edit" for _, fields in page)
        start = "(" + page[-1][0].decode()
    assert len(ids) - len(set(ids)) == 0  # duplicates
    assert ids == list(range(1, rows + 1))  # every row, in id order
    # Reading the 80,000 rows left at once would add 90 MB and more.
    assert peak - baseline < 30 * 1024, (peak, baseline)


# -- metrics and the plain output ------------------------------------------------------------


@pytest.mark.parametrize(
    "missing", ["CLI_APP_WITHOUT_METRICS", "CLI_APP_WITHOUT_PROMETHEUS"]
)
def test_metrics_without_the_extra_is_one_line_naming_it(
    missing: str, app: fluxaorm.Engine
) -> None:
    """metrics --port exits 1 with one line saying to pip install 'fluxaorm[prometheus]'."""
    line = one_line_error(
        run("metrics", "--port", str(free_port()), env={missing: "1"})
    )
    assert "pip install 'fluxaorm[prometheus]'" in line


def test_metrics_serves_the_stream_gauges_until_stopped(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """fluxaorm metrics --port N serves fluxaorm_* metrics: the stream's length and
    its group's lag and pending read at scrape time, follow a flush made by another
    process, and the command stops with exit 0 on SIGTERM."""
    import urllib.request

    flush_customers(app, "a", "b")
    redis_client.xgroup_create(STREAM, "billing", "0")
    port = free_port()
    process = start("metrics", "--port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> dict[str, float]:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    text = reply.read().decode()
                break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the endpoint never answered"
                time.sleep(0.1)
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("fluxaorm_") and f'stream="{STREAM}"' in line
        }

    try:
        first = scrape()
        assert first[f'fluxaorm_stream_length{{stream="{STREAM}"}}'] == 2
        assert first[f'fluxaorm_group_lag{{group="billing",stream="{STREAM}"}}'] == 2
        assert (
            first[f'fluxaorm_group_pending{{group="billing",stream="{STREAM}"}}'] == 0
        )
        flush_customers(app, "c")
        redis_client.xreadgroup("billing", "worker", {STREAM: ">"}, count=1)
        second = scrape()
        assert second[f'fluxaorm_stream_length{{stream="{STREAM}"}}'] == 3
        assert second[f'fluxaorm_group_lag{{group="billing",stream="{STREAM}"}}'] == 2
        assert (
            second[f'fluxaorm_group_pending{{group="billing",stream="{STREAM}"}}'] == 1
        )
    finally:
        code = stop(process, signal.SIGTERM)
    assert code == 0
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()


def test_without_rich_tables_and_progress_are_plain_text(
    app: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """Without the cli extra (rich), streams prints aligned text and backfill plain progress."""
    flush_customers(app, "a", "b")
    redis_client.xgroup_create(STREAM, "billing", "0")
    no_rich = (
        "import sys; sys.modules['rich'] = None; from fluxaorm.cli import main; main()"
    )

    def plain(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", no_rich, "--app", APP, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    streams = plain("streams")
    assert streams.returncode == 0, streams.stderr
    lines = streams.stdout.splitlines()
    header = lines.index("Consumer groups") + 1
    assert lines[header].split() == [
        "stream", "group", "lag", "pending", "last", "delivered", "oldest",
        "pending", "consumers",
    ]  # fmt: skip
    assert lines[header + 2].split()[:4] == [STREAM, "billing", "2", "0"]
    assert "┃" not in streams.stdout

    backfill = plain("backfill", "Customer", "--stream", "CliChanges")
    assert backfill.returncode == 0, backfill.stderr
    assert "Customer -> dirty_CliChanges: 2/2 rows (100%" in backfill.stderr
