"""fetcher: an async auto-paginating exporter for the Saleshandy team-stats API.

The front door: what a library user needs. Everything else is importable from
its module::

    import fetcher

    spec = fetcher.QuerySpec(user_ids=("2AwrlZ3aQn",), start=..., end=..., type="prospect")
    async with fetcher.Client(api_key=key) as client:
        async for page in client.pages(spec):
            ...

    summary = await fetcher.export(spec, fetcher.JsonlSink("stats.jsonl"), api_key=key)

The package, top to bottom (an import only points down; ``lint-imports`` checks
it, see ``[tool.importlinter]`` in ``pyproject.toml``)::

    integrations/  fetcher inside other tools: the dlt source
    app/        settings, the commands (export, plan, check, demo, enqueue, worker,
                status), progress, logs, cli
    distributed/  units, the PostgreSQL ledger, the Dramatiq broker, one unit's run
    run/        paging plan (one row per user), worker pool and export(), checkpoint,
                Client, one client per workspace (router)
    http/       page client, transport, limiter (+ quota, shared), retry, timeouts
    sinks/      the Sink protocols, one module per sink
    models.py   Page and the response's shape;  spec.py: QuerySpec;  dates.py;  files.py
    errors.py   FetcherError and its tree;  defaults.py: every default
    simulator/  the API's stand-in: imports nothing of the above

Names are loaded on first use (PEP 562), so ``import fetcher`` and the
command line's ``--help`` do not pay for the HTTP stack or the sinks' libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from fetcher._version import __version__
from fetcher.errors import (
    APIError,
    AuthError,
    ConfigError,
    FetcherError,
    IncompleteRunError,
    SinkError,
    TransportError,
)

if TYPE_CHECKING:
    from fetcher.http.limiter import Rate
    from fetcher.http.retry import RetryPolicy
    from fetcher.models import Page
    from fetcher.run.client import Client
    from fetcher.run.pool import PageStream, RunSnapshot, RunSummary, export
    from fetcher.sinks import (
        CsvSink,
        DuckDBSink,
        JsonlSink,
        MemorySink,
        ParquetSink,
        PostgresSink,
        Sink,
    )
    from fetcher.spec import QuerySpec, SpecError

#: Where each lazily loaded name lives.
_HOMES: Final = {
    "Rate": "fetcher.http.limiter",
    "RetryPolicy": "fetcher.http.retry",
    "Page": "fetcher.models",
    "Client": "fetcher.run.client",
    "PageStream": "fetcher.run.pool",
    "RunSnapshot": "fetcher.run.pool",
    "RunSummary": "fetcher.run.pool",
    "export": "fetcher.run.pool",
    "CsvSink": "fetcher.sinks",
    "DuckDBSink": "fetcher.sinks",
    "JsonlSink": "fetcher.sinks",
    "MemorySink": "fetcher.sinks",
    "ParquetSink": "fetcher.sinks",
    "PostgresSink": "fetcher.sinks",
    "Sink": "fetcher.sinks",
    "QuerySpec": "fetcher.spec",
    "SpecError": "fetcher.spec",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fetcher' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "APIError",
    "AuthError",
    "Client",
    "ConfigError",
    "CsvSink",
    "DuckDBSink",
    "FetcherError",
    "IncompleteRunError",
    "JsonlSink",
    "MemorySink",
    "Page",
    "PageStream",
    "ParquetSink",
    "PostgresSink",
    "QuerySpec",
    "Rate",
    "RetryPolicy",
    "RunSnapshot",
    "RunSummary",
    "Sink",
    "SinkError",
    "SpecError",
    "TransportError",
    "__version__",
    "export",
]
