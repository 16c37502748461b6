"""Settings: command-line flags, environment and a TOML file, merged and validated once.

Precedence, highest first: flags > environment (``FETCHER_<SETTING>``) >
config file (``--config PATH``, TOML) > defaults. Everything is validated
before any request; a bad value raises :class:`~fetcher.errors.ConfigError`
naming where it came from (the flag, the variable, or the file and key) and
what to do.

The API key is deliberately not a setting: it comes from ``SALESHANDY_API_KEY``
or from a key file (``--api-key-file``, or ``api_key_file`` in the config),
never from a flag (it would show in the process list) or from the config file
itself (see :func:`resolve_api_key`).

Several workspaces, each with its own key, are ``[[workspaces]]`` tables in the
config file (:class:`WorkspaceSettings`): a ``name``, where its key is
(``api_key_env``, the name of a variable, or ``api_key_file``), and optionally
its own ``base_url``, users and ``rate_limit``; everything else is shared.
:meth:`ExportSettings.for_workspace` gives one workspace's settings, and
:func:`resolve_workspace_key` its key.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import re
import stat
import tomllib
import zoneinfo
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import structlog
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fetcher import defaults
from fetcher.dates import day_end, day_start, parse_slice, resolve_window, split_window
from fetcher.errors import ConfigError
from fetcher.http.defaults import DEFAULT_BASE_URL, DEFAULT_CONCURRENCY, default_concurrency
from fetcher.http.limiter import Rate
from fetcher.spec import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    CountBy,
    QuerySpec,
    ReportType,
    SortOrder,
    SpecError,
)

__all__ = [
    "API_KEY_ENV",
    "ExportSettings",
    "WorkspaceSettings",
    "load_settings",
    "read_users_file",
    "resolve_api_key",
    "resolve_workspace_key",
]

API_KEY_ENV: Final = "SALESHANDY_API_KEY"
ENV_PREFIX: Final = "FETCHER_"

log = structlog.get_logger("fetcher.app.settings")

_config_file: ContextVar[Path | None] = ContextVar("fetcher_config_file", default=None)


def _split_list(value: Any) -> Any:
    """Accept ``a,b,c`` (flags, environment) as well as a list (TOML)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


def _readable_rate(value: str) -> str:
    Rate.parse(value)  # raises ValueError naming the accepted forms
    return value


#: A rate as written (``30/min``), checked readable.
RateText = Annotated[str, AfterValidator(_readable_rate)]
TypeList = Annotated[list[ReportType], NoDecode, BeforeValidator(_split_list)]


def parse_when(value: str, *, zone: dt.tzinfo, end_of_day: bool) -> dt.datetime:
    """Parse a window bound: an ISO date or datetime; naive ones are in ``zone``.

    A bare date means the start of that day (``00:00:00.000``) for a start,
    and its last millisecond (``23:59:59.999``) for an end, as in the
    reference page's example window: :func:`~fetcher.dates.day_start` and
    :func:`~fetcher.dates.day_end`, as for ``--window`` and the slices, so
    days where the clocks change at midnight are bounded the same way.

    Raises:
        ValueError: with the accepted forms.
    """
    text = value.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return day_end(day, zone) if end_of_day else day_start(day, zone)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"cannot read {value!r} as a date; use YYYY-MM-DD or an ISO 8601 datetime "
            "such as 2024-01-01T00:00:00+00:00"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=zone)


def _default_types() -> list[ReportType]:
    return [defaults.TYPE]


SliceUnit = Literal["day", "week", "month"]
SinkKind = Literal["jsonl", "csv", "parquet", "duckdb", "postgres"]

#: ``base_url`` value that starts the built-in simulator in-process.
SIMULATOR_URL: Final = "simulator"


class SimulatorSettings(BaseModel):
    """The built-in simulator's knobs, for ``base_url = "simulator"`` (demos, trials)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 1
    team_size: int = Field(default=120, ge=0, le=100_000)
    latency_ms: float = Field(default=30.0, ge=0)
    rate_limit: int | None = Field(default=None, ge=1)
    rate_window_s: float = Field(default=1.0, gt=0)
    fault_rate: float = Field(default=0.0, ge=0, le=1)


def check_base_url(value: str) -> str:
    """A base URL: ``simulator``, or an http(s) URL without its trailing slash.

    Raises:
        ValueError: with an example of a good one.
    """
    if value == SIMULATOR_URL:
        return value
    if not value.startswith(("http://", "https://")):
        raise ValueError(
            f"{value!r} is not an http(s) URL; e.g. {DEFAULT_BASE_URL} "
            f"(or {SIMULATOR_URL!r} for the built-in simulator)"
        )
    return value.rstrip("/")


def check_key_only_over_https(base_url: str, *, allow_insecure_http: bool) -> None:
    """Refuse plain http to another host unless the user said so.

    Raises:
        ValueError: naming the URL and the two ways out.
    """
    if base_url.startswith("http://") and not allow_insecure_http:
        host = urlsplit(base_url).hostname or ""
        if not is_loopback(host):
            raise ValueError(
                f"base_url {base_url!r} is plain http to another host: the API key "
                "would cross the network unencrypted. Use https://, or pass "
                "--allow-insecure-http if you really mean it"
            )


_WORKSPACE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class WorkspaceSettings(BaseModel):
    """One ``[[workspaces]]`` table: a Saleshandy workspace, its key, and what differs.

    Its key is never in the config: ``api_key_env`` names the environment
    variable that holds it, or ``api_key_file`` a file. ``base_url``, the users
    (``users``, ``users_file`` or ``all_users``) and ``rate_limit`` override the
    shared settings for this workspace only; unset, the shared ones apply.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    api_key_env: str | None = None
    api_key_file: Path | None = None
    base_url: str | None = None
    users: CommaList | None = None
    users_file: Path | None = None
    all_users: bool = False
    rate_limit: RateText | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _WORKSPACE_NAME.fullmatch(value):
            raise ValueError(
                f"workspace name {value!r}: use letters, digits, '_', '.' or '-', "
                "starting with a letter or digit, at most 64 characters (e.g. acme)"
            )
        return value

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an environment variable name; api_key_env names the "
                'variable that holds the key (e.g. api_key_env = "ACME_SALESHANDY_KEY"), '
                "it is not the key"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @model_validator(mode="after")
    def _one_key_one_way(self) -> WorkspaceSettings:
        if self.api_key_env is None and self.api_key_file is None:
            raise ValueError(
                f'workspace {self.name!r} has no key; set api_key_env = "VARIABLE" (the '
                'environment variable holding its key) or api_key_file = "PATH"'
            )
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError(f"workspace {self.name!r}: give api_key_env or api_key_file, not both")
        ways = [self.users is not None, self.users_file is not None, self.all_users]
        if sum(ways) > 1:
            raise ValueError(
                f"workspace {self.name!r}: give one of users, users_file or all_users, not several"
            )
        return self

    @property
    def sets_users(self) -> bool:
        """Whether this workspace names its own users (else the shared ones apply)."""
        return self.users is not None or self.users_file is not None or self.all_users


class ExportSettings(BaseSettings):
    """Every setting of ``fetcher export``; each can be a flag, a variable or a config key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # The API ("simulator" runs the built-in simulator in-process, see [simulator])
    base_url: str = DEFAULT_BASE_URL
    api_key_file: Path | None = None
    allow_insecure_http: bool = False
    ca_bundle: Path | None = None
    # The query
    users: CommaList | None = None
    users_file: Path | None = None
    all_users: bool = False
    user_batch_size: int = Field(default=defaults.USER_BATCH_SIZE, ge=1)
    start: str | None = None
    end: str | None = None
    window: str | None = None
    slice: SliceUnit | None = None
    timezone: str = defaults.TIMEZONE
    type: TypeList = Field(default_factory=_default_types, min_length=1)
    count_by: CountBy = defaults.COUNT_BY
    order_by: str | None = None
    sort_order: SortOrder = defaults.SORT_ORDER
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    # How to fetch
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=256)
    rate_limit: RateText | None = None
    shared_limiter: str | None = None
    timeout: float = Field(default=defaults.TIMEOUT_S, gt=0, le=3600)
    max_attempts: int = Field(default=defaults.MAX_ATTEMPTS, ge=1, le=100)
    max_pages: int = Field(default=defaults.MAX_PAGES, ge=1)
    records_path: str | None = None
    user_id_field: str = Field(default=defaults.USER_ID_FIELD, min_length=1)
    max_body_bytes: int = Field(default=defaults.MAX_BODY_BYTES, ge=1024)
    max_retry_after: float = Field(default=defaults.MAX_RETRY_AFTER_S, ge=0)
    repair_rounds: int = Field(default=defaults.REPAIR_ROUNDS, ge=0, le=20)
    # Where results go
    out: Path | None = None
    sink: SinkKind | None = None
    table: str = defaults.TABLE
    postgres_dsn: SecretStr | None = None
    report: Path | None = None
    # Checkpoints and resume
    state: Path | None = None
    checkpoint_interval: float = Field(default=defaults.CHECKPOINT_INTERVAL_S, gt=0, le=3600)
    catch_up: bool = False
    # The built-in simulator, when base_url = "simulator"
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    # Several workspaces, each with its own key ([[workspaces]] in the config)
    workspaces: list[WorkspaceSettings] | None = None
    # Distributed mode (fetcher enqueue / worker): the broker, tries per unit
    broker: str | None = None
    unit_attempts: int = Field(default=defaults.UNIT_ATTEMPTS, ge=1, le=100)
    # Logging
    log_format: Literal["console", "json"] = defaults.LOG_FORMAT
    log_level: Literal["debug", "info", "warning", "error"] = defaults.LOG_LEVEL

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: builtins.type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init arguments) > environment > the TOML config file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/London"
            ) from None
        return value

    @field_validator("shared_limiter", "broker")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError("not a Redis URL; write redis://HOST:PORT/DB (or rediss:// for TLS)")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("workspaces")
    @classmethod
    def _unique_workspaces(
        cls, value: list[WorkspaceSettings] | None
    ) -> list[WorkspaceSettings] | None:
        if value is None:
            return None
        if not value:
            raise ValueError(
                "no workspaces; add [[workspaces]] tables with a name and api_key_env, "
                "or remove the key"
            )
        seen: set[str] = set()
        for workspace in value:
            if workspace.name in seen:
                raise ValueError(
                    f"two workspaces are named {workspace.name!r}; give each [[workspaces]] "
                    "table its own name (it is part of every row's key)"
                )
            seen.add(workspace.name)
        return value

    @field_validator("window")
    @classmethod
    def _readable_window(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_window(value, zone=dt.UTC, now=dt.datetime.now(dt.UTC))
        return value

    @field_validator("slice", mode="before")
    @classmethod
    def _slice_names(cls, value: Any) -> Any:
        return parse_slice(value) if isinstance(value, str) else value

    @field_validator("table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            raise ValueError(
                f"{value!r} is not a plain table name; use letters, digits and underscores"
            )
        return value

    @field_validator("type")
    @classmethod
    def _unique_types(cls, value: list[ReportType]) -> list[ReportType]:
        return list(dict.fromkeys(value))

    @model_validator(mode="before")
    @classmethod
    def _concurrency_follows_rate(cls, data: Any) -> Any:
        """No concurrency given but a rate: one second of it in flight (see default_concurrency)."""
        if isinstance(data, dict) and data.get("concurrency") is None:
            rate = data.get("rate_limit")
            if isinstance(rate, str):
                with contextlib.suppress(ValueError):  # the field's validator names it
                    return {**data, "concurrency": default_concurrency(Rate.parse(rate))}
        return data

    @model_validator(mode="after")
    def _one_way_each(self) -> ExportSettings:
        ways = [self.users is not None, self.users_file is not None, self.all_users]
        if sum(ways) > 1:
            raise ValueError("give one of users, users_file or all_users, not several")
        if self.window is not None and (self.start is not None or self.end is not None):
            raise ValueError("give either window or start/end, not both")
        return self

    @model_validator(mode="after")
    def _key_only_over_https(self) -> ExportSettings:
        check_key_only_over_https(self.base_url, allow_insecure_http=self.allow_insecure_http)
        for workspace in self.workspaces or ():
            if workspace.base_url is not None:
                check_key_only_over_https(
                    workspace.base_url, allow_insecure_http=self.allow_insecure_http
                )
        return self

    def workspace(self, name: str) -> WorkspaceSettings:
        """The workspace called ``name``.

        Raises:
            ConfigError: no such workspace in the config.
        """
        for workspace in self.workspaces or ():
            if workspace.name == name:
                return workspace
        known = ", ".join(w.name for w in self.workspaces or ()) or "none"
        raise ConfigError(
            f"no workspace named {name!r} in the config (it has: {known}); check the "
            "config file this process reads",
            field="workspaces",
        )

    def for_workspace(self, workspace: WorkspaceSettings) -> ExportSettings:
        """These settings as one workspace sees them: its key, URL, users and rate.

        The result has no workspaces of its own; what the workspace does not
        set is shared.
        """
        update: dict[str, Any] = {"workspaces": None, "api_key_file": workspace.api_key_file}
        if workspace.base_url is not None:
            update["base_url"] = workspace.base_url
        if workspace.sets_users:
            update.update(
                users=workspace.users,
                users_file=workspace.users_file,
                all_users=workspace.all_users,
            )
        if workspace.rate_limit is not None:
            update["rate_limit"] = workspace.rate_limit
            if "concurrency" not in self.model_fields_set:
                update["concurrency"] = default_concurrency(Rate.parse(workspace.rate_limit))
        return self.model_copy(update=update)

    @property
    def uses_simulator(self) -> bool:
        """Whether the built-in simulator stands in for the API."""
        return self.base_url == SIMULATOR_URL

    @property
    def needs_team_list(self) -> bool:
        """Whether the users come from the API's team member list.

        With ``all_users``, or against the built-in simulator when no users are given.
        """
        explicit = self.users is not None or self.users_file is not None
        return self.all_users or (self.uses_simulator and not explicit)

    @property
    def state_path(self) -> Path | None:
        """Where checkpoints go: ``--state``, else beside the output, else nowhere."""
        if self.state is not None:
            return self.state
        if self.out is not None:
            return self.out.with_name(self.out.name + ".state.json")
        return None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The configured time zone."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def rate(self) -> Rate | None:
        """The configured rate ceiling, parsed."""
        return Rate.parse(self.rate_limit) if self.rate_limit else None

    def user_ids(self) -> list[str]:
        """The user ids from ``users`` or ``users_file`` (``all_users`` is the CLI's to fetch).

        Raises:
            ConfigError: when neither is given, or the file cannot be read.
        """
        if self.users is not None:
            return list(self.users)
        if self.users_file is not None:
            return read_users_file(self.users_file)
        raise ConfigError(
            "no users; pass --users ID,ID,..., --users-file PATH or --all-users", field="users"
        )

    def resolved_window(self, *, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
        """The export window as aware datetimes (absolute, or relative evaluated now).

        Raises:
            ConfigError: naming ``window``, ``start`` or ``end``.
        """
        if self.window is not None:
            moment = now or dt.datetime.now(self.zone)
            try:
                return resolve_window(self.window, zone=self.zone, now=moment)
            except ValueError as exc:
                raise ConfigError(str(exc), field="--window") from None
        bounds = []
        for name, end_of_day in (("start", False), ("end", True)):
            raw = getattr(self, name)
            if raw is None:
                raise ConfigError(
                    f"missing; pass --{name} YYYY-MM-DD (or --window, e.g. yesterday)", field=name
                )
            try:
                bounds.append(parse_when(raw, zone=self.zone, end_of_day=end_of_day))
            except ValueError as exc:
                raise ConfigError(str(exc), field=name) from None
        if bounds[0] > bounds[1]:
            raise ConfigError(
                f"start ({bounds[0].isoformat()}) is after end "
                f"({bounds[1].isoformat()}); swap them",
                field="--start",
            )
        return bounds[0], bounds[1]

    def slices(
        self, *, now: dt.datetime | None = None, after: dt.datetime | None = None
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """The window split into ``slice`` units in the configured zone.

        Args:
            now: the moment relative windows are evaluated at.
            after: catch-up: only what lies after this instant (a completed window's end).

        Raises:
            ConfigError: for an unusable window.
        """
        start, end = self.resolved_window(now=now)
        if after is not None and after >= start:
            start = (after + dt.timedelta(milliseconds=1)).astimezone(self.zone)
            if start > end:
                return []
        try:
            return split_window(start, end, self.slice, self.zone)
        except ValueError as exc:
            raise ConfigError(str(exc), field="--slice") from None

    def queries(
        self,
        users: list[str] | None = None,
        *,
        now: dt.datetime | None = None,
        after: dt.datetime | None = None,
        workspace: str | None = None,
    ) -> list[QuerySpec]:
        """Every query of the run: slice x report type x user batch, validated.

        Args:
            users: the user ids (default: from ``users`` or ``users_file``).
            now: the moment relative windows are evaluated at.
            after: catch-up: skip what ends at or before this instant.
            workspace: the workspace the queries are asked in (their key and
                every row carry it).

        Raises:
            ConfigError: naming the setting that makes a query invalid.
        """
        windows = self.slices(now=now, after=after)
        users = self.user_ids() if users is None else users
        size = self.user_batch_size
        batches = [tuple(users[i : i + size]) for i in range(0, len(users), size)] or [()]
        specs = []
        for start, end in windows:
            for report_type in self.type:
                for batch in batches:
                    try:
                        specs.append(
                            QuerySpec(
                                user_ids=batch,
                                start=start,
                                end=end,
                                type=report_type,
                                count_by=self.count_by,
                                order_by=self.order_by,
                                sort_order=self.sort_order,
                                page_size=self.page_size,
                                workspace=workspace,
                            )
                        )
                    except SpecError as exc:
                        raise config_error(exc.validation, source=None) from None
        return specs

    def job_identity(self, users: list[str]) -> str:
        """Everything that identifies the job but its window: the catch-up ledger's key."""
        parts = [
            ",".join(self.type),
            self.count_by,
            str(self.order_by),
            self.sort_order,
            str(self.page_size),
            str(self.slice),
            self.timezone,
            str(self.user_batch_size),
            hashlib.sha256("\n".join(sorted(users)).encode()).hexdigest()[:16],
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (where plain http is harmless)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_users_file(path: Path) -> list[str]:
    """Read user ids, one per line; blank lines and ``#`` comments are ignored.

    Raises:
        ConfigError: if the file cannot be read or holds no ids.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}", field="users_file"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", field="users_file") from None
    users = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            users.append(entry)
    if not users:
        raise ConfigError(f"{path} lists no user ids", field="users_file")
    return users


#: How the settings' fields are spelled on the command line.
def flag_name(field: str) -> str:
    """``page_size`` -> ``--page-size``."""
    return "--" + field.replace("_", "-")


def config_error(exc: ValidationError, *, source: Mapping[str, str] | None) -> ConfigError:
    """The first validation error as a ConfigError naming where the value came from.

    Args:
        exc: pydantic's error.
        source: per field, where its value came from (flag, variable, file key).
    """
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    field = loc[0] if loc else ""
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown setting; check the spelling (see `fetcher export --help`)"
    elif "input" in err and err["type"] not in ("missing",) and field:
        message = f"{message} (got {err['input']!r})"
    if not field:
        # A check across fields (e.g. order_by against type): its message starts
        # with the field it blames.
        field = next((name for name in _SPEC_FIELDS if message.startswith(name + " ")), "")
    where = (source or {}).get(field) or (flag_name(field) if field else "")
    if field == "workspaces" and len(loc) > 1 and loc[1].isdigit():
        # [[workspaces]] table n (1-based, as a reader counts them), and its key
        where = f"{where}: table #{int(loc[1]) + 1}" + (f", key {loc[2]!r}" if len(loc) > 2 else "")
    if field in _SPEC_FIELDS and source is None:
        where = flag_name(_SPEC_FIELDS[field])
    return ConfigError(message, field=where or None)


_SPEC_FIELDS: Final = {
    "user_ids": "users",
    "start": "start",
    "end": "end",
    "type": "type",
    "count_by": "count_by",
    "order_by": "order_by",
    "sort_order": "sort_order",
    "page_size": "page_size",
}


def _describe_sources(
    flags: Mapping[str, Any], env: Mapping[str, str], config_file: Path | None
) -> dict[str, str]:
    """Where each field's value comes from, for error messages (highest precedence wins)."""
    where: dict[str, str] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}
        for key in data:
            where[key] = f"{config_file}: key {key!r}"
    for name in ExportSettings.model_fields:
        variable = ENV_PREFIX + name.upper()
        if variable in env:
            where[name] = f"environment variable {variable}"
    for name in flags:
        where[name] = flag_name(name)
    return where


def load_settings(flags: Mapping[str, Any], *, config_file: Path | None = None) -> ExportSettings:
    """Merge flags, environment (``os.environ``) and config file into validated settings.

    Args:
        flags: the flags the user gave (unset flags must be left out).
        config_file: a TOML file, or ``None``.

    Raises:
        ConfigError: naming the flag, variable or file key that is wrong.
    """
    if config_file is not None:
        _check_config_file(config_file)
    token = _config_file.set(config_file)
    try:
        return ExportSettings(**flags)
    except ValidationError as exc:
        raise config_error(exc, source=_describe_sources(flags, os.environ, config_file)) from None
    finally:
        _config_file.reset(token)


def _check_config_file(path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", field="--config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", field="--config") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", field="--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", field="--config") from None
    for key in ("api_key", "x_api_key", "key"):
        if key in data:
            raise ConfigError(
                f"{path}: key {key!r}: the API key must not be written into the config file; "
                f"set {API_KEY_ENV} or put the key in a file and set api_key_file",
                field=f"{path}: {key}",
            )
    workspaces = data.get("workspaces")
    for number, table in enumerate(workspaces if isinstance(workspaces, list) else [], 1):
        for key in ("api_key", "x_api_key", "key"):
            if isinstance(table, dict) and key in table:
                raise ConfigError(
                    f"{path}: [[workspaces]] table #{number}: key {key!r}: the API key must "
                    'not be written into the config file; set api_key_env = "VARIABLE" '
                    '(a variable holding it) or api_key_file = "PATH"',
                    field=f"{path}: workspaces #{number}: {key}",
                )


def warn_if_readable_by_others(path: Path) -> None:
    """Warn, as ssh does, when a key file can be read by its group or by others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it will say what is wrong
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "key_file.unprotected",
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
            fix=f"chmod 600 {path}",
            note="other users on this machine can read the API key",
        )


def resolve_api_key(settings: ExportSettings, *, env: Mapping[str, str] | None = None) -> SecretStr:
    """The API key: ``--api-key-file`` (or ``api_key_file``) wins over the environment.

    Raises:
        ConfigError: when there is no key, or the key file cannot be read.
    """
    env = os.environ if env is None else env
    if settings.api_key_file is not None:
        path = settings.api_key_file
        warn_if_readable_by_others(path)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read key file {path}: {exc.strerror or exc}", field="--api-key-file"
            ) from None
        if not key:
            raise ConfigError(f"key file {path} is empty", field="--api-key-file")
        return SecretStr(key)
    key = env.get(API_KEY_ENV, "").strip()
    if not key:
        raise ConfigError(
            f"no API key; set {API_KEY_ENV} or pass --api-key-file PATH", field="api key"
        )
    return SecretStr(key)


def resolve_workspace_key(
    workspace: WorkspaceSettings, *, env: Mapping[str, str] | None = None, warn: bool = True
) -> SecretStr:
    """A workspace's key, from its variable (``api_key_env``) or file (``api_key_file``).

    Args:
        workspace: the workspace.
        env: the environment (default: ``os.environ``).
        warn: warn when the key file can be read by others (once per command).

    Raises:
        ConfigError: naming the workspace and its key setting: the variable is
            unset or empty, or the file cannot be read or is empty.
    """
    env = os.environ if env is None else env
    where = f"workspaces[{workspace.name}]"
    if workspace.api_key_file is not None:
        path = workspace.api_key_file
        if warn:
            warn_if_readable_by_others(path)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the key file {path} of workspace {workspace.name!r}: "
                f"{exc.strerror or exc}; check api_key_file",
                field=f"{where}.api_key_file",
            ) from None
        if not key:
            raise ConfigError(
                f"the key file {path} of workspace {workspace.name!r} is empty; put its key in it",
                field=f"{where}.api_key_file",
            )
        return SecretStr(key)
    assert workspace.api_key_env is not None  # one of the two, see WorkspaceSettings
    key = env.get(workspace.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"the variable {workspace.api_key_env} holding the key of workspace "
            f"{workspace.name!r} is not set in this environment; set it (export "
            f"{workspace.api_key_env}=...) or give the workspace an api_key_file",
            field=f"{where}.api_key_env",
        )
    return SecretStr(key)
