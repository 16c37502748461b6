"""fetcher: an async auto-paginating exporter for the Saleshandy team-stats API.

The front door; everything public is importable from here::

    import fetcher

    spec = fetcher.QuerySpec(user_ids=("2AwrlZ3aQn",), start=..., end=..., type="prospect")
    async with fetcher.Client(api_key=key) as client:
        async for page in client.pages(spec):
            ...

    summary = await fetcher.export(spec, fetcher.JsonlSink("stats.jsonl"), api_key=key)
"""

from fetcher._version import __version__
from fetcher.client import DEFAULT_BASE_URL, Client
from fetcher.errors import (
    APIError,
    AuthError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    FetcherError,
    IncompleteRunError,
    InvalidJSONError,
    PageRef,
    RateLimitedError,
    RequestRejectedError,
    RequestTimeoutError,
    ResponseError,
    ResponseTooLargeError,
    ServerError,
    ShapeError,
    SinkError,
    TLSError,
    TransportError,
)
from fetcher.limits import Limiter, Rate
from fetcher.models import Page, PageMeta, ResponseShape, parse_page
from fetcher.retry import RetryPolicy
from fetcher.runner import FailedPage, PageStream, RunSummary, export
from fetcher.sinks import (
    CsvSink,
    DuckDBSink,
    JsonlSink,
    MemorySink,
    ParquetSink,
    PostgresSink,
    ResumableSink,
    Sink,
    TeeSink,
    make_sink,
)
from fetcher.spec import EMAIL_METRICS, MAX_PAGE_SIZE, PROSPECT_METRICS, QuerySpec
from fetcher.state import Checkpointer
from fetcher.transport import AiohttpTransport, MockTransport, Request, Response, Transport

__all__ = [
    "DEFAULT_BASE_URL",
    "EMAIL_METRICS",
    "MAX_PAGE_SIZE",
    "PROSPECT_METRICS",
    "APIError",
    "AiohttpTransport",
    "AuthError",
    "Checkpointer",
    "Client",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "CsvSink",
    "DuckDBSink",
    "FailedPage",
    "FetcherError",
    "IncompleteRunError",
    "InvalidJSONError",
    "JsonlSink",
    "Limiter",
    "MemorySink",
    "MockTransport",
    "Page",
    "PageMeta",
    "PageRef",
    "PageStream",
    "ParquetSink",
    "PostgresSink",
    "QuerySpec",
    "Rate",
    "RateLimitedError",
    "Request",
    "RequestRejectedError",
    "RequestTimeoutError",
    "Response",
    "ResponseError",
    "ResponseShape",
    "ResponseTooLargeError",
    "ResumableSink",
    "RetryPolicy",
    "RunSummary",
    "ServerError",
    "ShapeError",
    "Sink",
    "SinkError",
    "TLSError",
    "TeeSink",
    "Transport",
    "TransportError",
    "__version__",
    "export",
    "make_sink",
    "parse_page",
]
