import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fetcher.app.connect import open_api
from fetcher.app.settings import load_settings, parse_when, read_users_file, resolve_api_key
from fetcher.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("FETCHER_", "SALESHANDY_")):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fetcher.toml"
    path.write_text(text)
    return path


def test_precedence_flags_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flag beats FETCHER_*, which beats the config file, which beats the default."""
    config = write(tmp_path, "page_size = 30\nconcurrency = 3\ntimeout = 9.5\n")
    monkeypatch.setenv("FETCHER_PAGE_SIZE", "40")
    monkeypatch.setenv("FETCHER_CONCURRENCY", "4")
    settings = load_settings({"page_size": 50}, config_file=config)
    assert settings.page_size == 50  # flag
    assert settings.concurrency == 4  # environment
    assert settings.timeout == 9.5  # file
    assert settings.max_attempts == 6  # default


def test_concurrency_follows_a_configured_rate_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rate from any source sizes the default concurrency; a concurrency from any source wins."""
    assert load_settings({}).concurrency == 16
    config = write(tmp_path, 'rate_limit = "40/1s"\n')
    assert load_settings({}, config_file=config).concurrency == 40
    assert load_settings({"concurrency": 4}, config_file=config).concurrency == 4
    monkeypatch.setenv("FETCHER_CONCURRENCY", "6")
    assert load_settings({}, config_file=config).concurrency == 6
    monkeypatch.delenv("FETCHER_CONCURRENCY")
    monkeypatch.setenv("FETCHER_RATE_LIMIT", "24/s")
    assert load_settings({}).concurrency == 24


@pytest.mark.parametrize(
    ("flags", "fixed", "room"),
    [
        ({}, 16, 64),  # nothing given: the server's window may raise it (max_auto_in_flight)
        ({"concurrency": 16}, 16, 16),  # given, even at the default value: never raised
        ({"rate_limit": "40/1s"}, 40, 40),  # sized by the configured rate
    ],
)
async def test_the_server_may_raise_only_a_concurrency_nobody_gave(
    flags: dict[str, object], fixed: int, room: int
) -> None:
    """open_api lets the limiter raise the in-flight cap only when no source set it."""
    settings = load_settings({"base_url": "simulator", **flags})
    async with open_api(settings) as session:
        limiter = session.client.limiter
        assert (limiter.max_in_flight, limiter.max_auto_in_flight) == (fixed, room)


def test_lists_from_env_file_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists are comma-separated in flags and variables, arrays in TOML."""
    assert load_settings({"type": "prospect,email"}).type == ["prospect", "email"]
    monkeypatch.setenv("FETCHER_USERS", "a, b ,c")
    assert load_settings({}).users == ["a", "b", "c"]
    monkeypatch.delenv("FETCHER_USERS")
    config = write(tmp_path, 'users = ["x", "y"]\ntype = ["email"]\n')
    settings = load_settings({}, config_file=config)
    assert (settings.users, settings.type) == (["x", "y"], ["email"])


def test_unknown_config_key_names_file_and_key(tmp_path: Path) -> None:
    """A misspelt key in the file fails with the file, the key and the reason."""
    config = write(tmp_path, "page_sise = 10\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, config_file=config)
    message = str(info.value)
    assert str(config) in message and "page_sise" in message and "unknown setting" in message


def test_bad_value_in_file_names_file_and_key(tmp_path: Path) -> None:
    """A bad value in the file is blamed on the file's key, not on a flag."""
    config = write(tmp_path, 'sort_order = "sideways"\n')
    with pytest.raises(ConfigError, match=r"fetcher\.toml: key 'sort_order'.*asc"):
        load_settings({}, config_file=config)


def test_bad_value_in_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad FETCHER_* value is blamed on the variable."""
    monkeypatch.setenv("FETCHER_CONCURRENCY", "-3")
    with pytest.raises(ConfigError, match="environment variable FETCHER_CONCURRENCY"):
        load_settings({})


@pytest.mark.parametrize("text", ["page_size = [", "\xff"])
def test_unreadable_config_file(tmp_path: Path, text: str) -> None:
    """Invalid TOML is reported with the file name."""
    path = tmp_path / "bad.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings({}, config_file=path)


def test_missing_config_file(tmp_path: Path) -> None:
    """A config path that does not exist says so."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, config_file=tmp_path / "nope.toml")


def test_key_in_config_file_is_refused(tmp_path: Path) -> None:
    """An API key pasted into the config is refused, pointing to the env or a key file."""
    config = write(tmp_path, 'api_key = "sk_live_123"\n')
    with pytest.raises(ConfigError) as info:
        load_settings({}, config_file=config)
    assert "SALESHANDY_API_KEY" in str(info.value) and "api_key_file" in str(info.value)
    assert "sk_live_123" not in str(info.value)


def test_users_and_users_file_are_exclusive(tmp_path: Path) -> None:
    """Giving both users and users_file is an error."""
    with pytest.raises(ConfigError, match="not several"):
        load_settings({"users": "a", "users_file": tmp_path / "u.txt"})
    with pytest.raises(ConfigError, match="not several"):
        load_settings({"users": "a", "all_users": True})
    with pytest.raises(ConfigError, match="window or start/end"):
        load_settings({"window": "yesterday", "start": "2024-01-01"})


def test_users_file_parsing(tmp_path: Path) -> None:
    """One id per line; blanks and # comments are ignored; an empty list is an error."""
    path = tmp_path / "users.txt"
    path.write_text("# header\n a \n\nb # trailing\n#c\n")
    assert read_users_file(path) == ["a", "b"]
    path.write_text("# nobody\n\n")
    with pytest.raises(ConfigError, match="lists no user ids"):
        read_users_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_users_file(tmp_path / "missing.txt")


def test_dates_and_zones() -> None:
    """Bare dates span whole days in the zone; offsets are kept; naive times take the zone."""
    london = ZoneInfo("Europe/London")
    start = parse_when("2024-07-01", zone=london, end_of_day=False)
    end = parse_when("2024-07-01", zone=london, end_of_day=True)
    assert start.isoformat(timespec="milliseconds") == "2024-07-01T00:00:00.000+01:00"
    assert end.isoformat(timespec="milliseconds") == "2024-07-01T23:59:59.999+01:00"
    assert parse_when(
        "2024-01-01T10:00:00+05:30", zone=london, end_of_day=False
    ).utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert parse_when("2024-01-01T10:00:00", zone=dt.UTC, end_of_day=False).tzinfo is dt.UTC
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_when("01/02/2024", zone=dt.UTC, end_of_day=False)


def test_bare_dates_are_bounded_like_windows_where_clocks_change_at_midnight() -> None:
    """--start/--end dates give the same day bounds as --window and the slices.

    In Santiago, 2024-04-06 has 23:00-24:00 twice: the day ends at the later
    23:59:59.999 (-04:00), not the earlier one, which would drop an hour.
    """
    santiago = ZoneInfo("America/Santiago")
    end = parse_when("2024-04-06", zone=santiago, end_of_day=True)
    assert end.isoformat(timespec="milliseconds") == "2024-04-06T23:59:59.999-04:00"
    start = parse_when("2024-09-08", zone=santiago, end_of_day=False)  # no midnight that day
    assert start.isoformat(timespec="milliseconds") == "2024-09-08T01:00:00.000-03:00"


def test_queries_one_per_type() -> None:
    """--type prospect,email makes one validated query per report type."""
    settings = load_settings(
        {"users": "a,b", "start": "2024-01-01", "end": "2024-01-31", "type": "prospect,email,email"}
    )
    specs = settings.queries()
    assert [s.type for s in specs] == ["prospect", "email"]
    assert specs[0].body(1)["endDate"] == "2024-01-31T23:59:59.999+00:00"


def test_api_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key comes from SALESHANDY_API_KEY, or from the key file, which wins."""
    with pytest.raises(ConfigError, match="SALESHANDY_API_KEY"):
        resolve_api_key(load_settings({}))
    monkeypatch.setenv("SALESHANDY_API_KEY", "from-env")
    assert resolve_api_key(load_settings({})).get_secret_value() == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    settings = load_settings({"api_key_file": key_file})
    assert resolve_api_key(settings).get_secret_value() == "from-file"
    assert "from-file" not in repr(resolve_api_key(settings))
    key_file.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        resolve_api_key(settings)
