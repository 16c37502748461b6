from collections.abc import Callable

import pytest

import fetcher


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then everything else.
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_complete() -> None:
    """The front door exports a sorted __all__ whose names all exist."""
    assert fetcher.__all__ == sorted(fetcher.__all__, key=_isort_key)
    assert len(set(fetcher.__all__)) == len(fetcher.__all__)
    for name in fetcher.__all__:
        assert hasattr(fetcher, name), name


def test_public_objects_belong_to_fetcher() -> None:
    """Every public object is defined in the fetcher package (nothing leaks from deps)."""
    for name in fetcher.__all__:
        obj = getattr(fetcher, name)
        module = getattr(obj, "__module__", "fetcher")
        if isinstance(obj, str | tuple | int):
            continue
        assert module.startswith("fetcher"), (name, module)


def test_errors_share_one_root() -> None:
    """Every exported exception derives from FetcherError."""
    for name in fetcher.__all__:
        obj = getattr(fetcher, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, fetcher.FetcherError), name


@pytest.mark.parametrize(
    "build",
    [
        lambda: fetcher.Rate(0, 60.0),
        lambda: fetcher.Rate.parse("fast"),
        lambda: fetcher.RetryPolicy(attempts=0),
        lambda: fetcher.RetryPolicy(backoff_max_s=-1.0),
        lambda: fetcher.QuerySpec(user_ids=[], start="2024-01-02", end="2024-01-01"),  # type: ignore[arg-type, call-arg]
    ],
)
def test_the_front_doors_classes_refuse_bad_values_with_a_fetcher_error(
    build: Callable[[], object],
) -> None:
    """Built with a bad value, a front-door class raises a FetcherError that is a ValueError too."""
    with pytest.raises(fetcher.FetcherError) as caught:
        build()
    assert isinstance(caught.value, ValueError)


#: The front door, pinned: a name added or removed is an API change, made here on purpose.
FRONT_DOOR = [
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


def test_the_front_door_is_exactly_the_pinned_names() -> None:
    """``fetcher.__all__`` is the small set a library user needs; changing it changes this test."""
    assert fetcher.__all__ == FRONT_DOOR


def test_names_off_the_front_door_stay_reachable_from_their_modules() -> None:
    """What left the front door is one import away, in the layer it belongs to."""
    from fetcher.errors import PageRef, RateLimitedError  # noqa: PLC0415
    from fetcher.http.limiter import Limiter  # noqa: PLC0415
    from fetcher.http.transport import MockTransport, Transport  # noqa: PLC0415
    from fetcher.run.checkpoint import Checkpointer  # noqa: PLC0415
    from fetcher.sinks import TeeSink, make_sink  # noqa: PLC0415

    assert issubclass(RateLimitedError, fetcher.FetcherError)
    homes = {
        PageRef: "fetcher.errors",
        Limiter: "fetcher.http.limiter",
        MockTransport: "fetcher.http.transport",
        Transport: "fetcher.http.transport",
        Checkpointer: "fetcher.run.checkpoint",
        TeeSink: "fetcher.sinks.tee",
        make_sink: "fetcher.sinks.factory",
    }
    for obj, module in homes.items():
        assert obj.__module__ == module, obj
        assert getattr(obj, "__name__") not in fetcher.__all__  # noqa: B009  (obj: object)
