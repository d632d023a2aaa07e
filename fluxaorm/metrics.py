"""Prometheus metrics of flushes, publishes, the outbox and consumers (docs/metrics.md).

Applications call :func:`enable` to record counters and histograms in their
process, and :func:`start` (or their own exporter) to expose them; the
``fluxaorm metrics`` command calls :func:`serve`. The instruments live in
``instruments.py``, which imports ``prometheus_client`` (the
``fluxaorm[prometheus]`` extra); importing this module never needs it.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import ConfigurationError
from .observe import attach

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .engine import Engine

__all__ = ["MetricsServer", "disable", "enable", "serve", "start"]

_log = logging.getLogger("fluxaorm.metrics")
_HINT = "metrics need prometheus_client: pip install 'fluxaorm[prometheus]'"


def _require() -> None:
    """Raise a ConfigurationError naming the extra when prometheus_client is missing."""
    try:
        import prometheus_client  # noqa: F401 - only whether it imports
    except ImportError as exc:
        raise ConfigurationError(f"{_HINT} ({exc})") from None


def enable(engine: Engine, registry: CollectorRegistry | None = None) -> None:
    """Record the engine's metrics in this process from now on.

    Counts flushes, SQL statements, published entries, publish failures,
    relayed entries, and per stream and group the events handled, failed,
    dead-lettered and claimed, with handler durations and end-to-end
    latencies (see docs/metrics.md for every metric). Several engines may share
    a registry: their series add up. Tracing, if enabled, stays enabled.

    Args:
        engine: the engine to observe.
        registry: where the metrics go; default: prometheus_client's global
            registry, which its own exporters (``start_http_server``, the
            framework integrations) serve.

    Raises:
        ConfigurationError: ``prometheus_client`` is not installed.
    """
    _require()
    from .instruments import instruments_for

    attach(engine, metrics=instruments_for(registry))


def disable(engine: Engine) -> None:
    """Stop recording the engine's metrics (the series keep their values)."""
    attach(engine, metrics=None)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log requests at DEBUG instead of printing them to stderr."""
        _log.debug("%s - %s", self.address_string(), format % args)


class MetricsServer:
    """An HTTP endpoint serving metrics from a background thread.

    Made by :func:`start`; a context manager (:meth:`close` on exit). Any path
    answers; ``/metrics`` is the usual one.
    """

    def __init__(self, engine: Engine, port: int, host: str, statistics: bool):
        _require()
        from .instruments import wsgi_app

        app = wsgi_app(engine, statistics)
        server_class = _Server6 if ":" in host else _Server
        try:
            self._httpd = make_server(
                host, port, app, server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            name="fluxaorm-metrics",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The port the server listens on (the one picked when started with 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The URL to scrape (``http://host:port/metrics``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (waits for the serving thread)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def start(
    engine: Engine, port: int = 0, host: str = "127.0.0.1", *, statistics: bool = False
) -> MetricsServer:
    """Serve the engine's metrics over HTTP from a background thread; return at once.

    Serves what :func:`enable` records (from the registry it was given). With
    ``statistics`` the endpoint also reports, read from Redis and MySQL at each
    scrape, every stream's length, age and dead letters, every group's lag and
    pending entries and the outbox backlog; turn it on in one process only (the
    ``fluxaorm metrics`` command does), not in every replica of an application.

    Args:
        engine: the engine whose metrics to serve.
        port: the TCP port; 0 picks a free one (see :attr:`MetricsServer.port`).
        host: the address to listen on; the default serves this machine only.
        statistics: also report the stream and outbox gauges.

    Raises:
        ConfigurationError: ``prometheus_client`` is not installed, or the
            address cannot be bound.
    """
    return MetricsServer(engine, port, host, statistics)


def serve(engine: Engine, port: int, host: str = "127.0.0.1") -> None:
    """Serve every metric of the engine over HTTP until interrupted (SIGINT/SIGTERM).

    The endpoint reports the stream, group and outbox gauges, read from Redis
    and MySQL at each scrape, and the counters :func:`enable` records in this
    process, if enabled. ``fluxaorm metrics --port N`` runs this.

    Raises:
        ConfigurationError: ``prometheus_client`` is not installed (install
            ``fluxaorm[prometheus]``), or the address cannot be bound.
    """
    stop = threading.Event()
    with start(engine, port, host, statistics=True) as server, _stop_on(stop):
        _log.info("serving metrics on %s", server.url)
        while not stop.wait(0.5):
            pass


@contextmanager
def _stop_on(stop: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``stop.set()`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
