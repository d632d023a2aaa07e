"""MySQL pool options checked without a server; the pool itself is tested against
MariaDB in tests/test_db.py."""

from __future__ import annotations

import pytest

import fluxaorm

MYSQL_URL = "mysql://root@127.0.0.1:1/test"  # never connected to


def test_register_mysql_rejects_unknown_options():
    """An unknown pool option is a ConfigurationError listing the known ones."""
    registry = fluxaorm.Registry()
    with pytest.raises(fluxaorm.ConfigurationError, match="pool_size"):
        registry.register_mysql(MYSQL_URL, pool_sise=2)
