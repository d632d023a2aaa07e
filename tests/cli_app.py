"""The application the command-line tests point ``fluxaorm --app`` at.

Imported by the ``fluxaorm`` subprocesses the tests start (from the repository
folder) and by the tests themselves. The servers come from the same variables as
the rest of the suite; ``CLI_APP_MYSQL_URL`` and ``CLI_APP_REDIS_URL`` point the
app elsewhere (a throwaway Redis, a closed port).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from decimal import Decimal

import fluxaorm


def _mysql_url() -> str:
    return os.environ.get("CLI_APP_MYSQL_URL") or os.environ.get(
        "FLUXAORM_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"
    )


def _redis_url() -> str:
    # Read when a registry is made: a test on the throwaway Redis Cluster points
    # the app there (in its own process and in the commands it starts).
    return os.environ.get("CLI_APP_REDIS_URL") or os.environ.get(
        "FLUXAORM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"
    )


@fluxaorm.entity(name="cli.Customer", table="cli_customers")
@dataclass
class Customer:
    id: int = field(default=0, metadata={"orm": "dirty=CliChanges,CliNew:add"})
    name: str = fluxaorm.column(length=100, default="")
    balance: Decimal = fluxaorm.column(precision=10, scale=2, default=Decimal("0"))


@fluxaorm.entity(name="cli.Order", table="cli_orders")
@dataclass
class Order:
    id: int = field(default=0, metadata={"orm": "dirty=CliChanges"})
    total: int = 0


def make_registry(*entities: type) -> fluxaorm.Registry:
    """A registry of ``entities`` (both by default) on the test servers."""
    registry = fluxaorm.Registry()
    registry.register_mysql(_mysql_url())
    registry.register_redis(_redis_url())
    registry.register_entity(*(entities or (Customer, Order)))
    return registry


def __getattr__(name: str) -> fluxaorm.Registry:
    """``registry`` (both entities) and ``partial_registry`` (another application's
    view of the same database: it knows only customers), made when ``--app``
    reads them, on the servers the environment names then."""
    if name == "registry":
        return make_registry()
    if name == "partial_registry":
        return make_registry(Customer)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def engine_factory() -> fluxaorm.Engine:
    """A function returning an engine, as ``--app`` accepts."""
    return make_registry().validate()


not_an_engine = 42

if os.environ.get("CLI_APP_WITHOUT_PROMETHEUS"):
    # As if the prometheus extra were not installed: importing it fails.
    sys.modules["prometheus_client"] = None  # type: ignore[assignment]
if os.environ.get("CLI_APP_WITHOUT_METRICS"):
    # As if this fluxaorm had no metrics module at all.
    sys.modules["fluxaorm.metrics"] = None  # type: ignore[assignment]
