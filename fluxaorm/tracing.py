"""OpenTelemetry tracing of flushes, publishes and handler calls (docs/metrics.md).

Applications call :func:`enable` once per engine; the spans themselves live in
``spans.py``, which imports ``opentelemetry`` (the ``fluxaorm[opentelemetry]``
extra). Importing this module never needs the extra; :func:`enable` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigurationError
from .events import TRACEPARENT
from .observe import attach

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from .engine import Engine

__all__ = ["TRACEPARENT_FIELD", "disable", "enable"]

#: The stream entry field that carries the producer's W3C trace context.
TRACEPARENT_FIELD = TRACEPARENT.decode()
_HINT = (
    "tracing needs OpenTelemetry: pip install 'fluxaorm[opentelemetry]' "
    "(and an OpenTelemetry SDK, e.g. opentelemetry-sdk, to export the spans)"
)


def enable(engine: Engine, tracer_provider: TracerProvider | None = None) -> None:
    """Trace the engine's flushes, publishes and handler calls from now on.

    A flush is a PRODUCER span named ``flush``; each publish a ``send`` span
    (its child during a flush); each handler call a CONSUMER span named
    ``process dirty_<Name>``, linked to the span that produced each event of the
    batch. Every stream entry written from now on carries the producer's W3C
    trace context in the field ``traceparent`` (also kept in the outbox, so an
    entry relayed after a crash still links to its flush). Metrics, if enabled,
    stay enabled.

    Args:
        engine: the engine to trace.
        tracer_provider: where the spans go; default: OpenTelemetry's global
            provider (``opentelemetry.trace.set_tracer_provider``).

    Raises:
        ConfigurationError: ``opentelemetry-api`` is not installed.
    """
    try:
        from opentelemetry import trace

        from .spans import Spans
    except ImportError as exc:
        raise ConfigurationError(f"{_HINT} ({exc})") from None
    from . import __version__

    tracer = trace.get_tracer("fluxaorm", __version__, tracer_provider)
    attach(engine, spans=Spans(tracer))


def disable(engine: Engine) -> None:
    """Stop tracing the engine (entries written from now on carry no trace context)."""
    attach(engine, spans=None)
