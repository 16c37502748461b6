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
