"""Opening the configured API: the key, the client, and the simulator for trials.

``fetcher export``, ``plan`` and ``check`` all talk to the API the same way,
so they open it here: the key from the environment or the key file (or the
simulator's own key), TLS verified (with the CA bundle if one is set), the
body cap, the rate limit, the timeout, and for ``base_url = "simulator"`` the
built-in simulator, started in-process on a free port. A
:class:`RecordingTransport` under the client keeps what each response said
about the rate limit (``plan`` and ``check`` report it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pydantic import SecretStr

from fetcher.app.settings import ExportSettings, resolve_api_key
from fetcher.errors import ConfigError
from fetcher.http.defaults import max_auto_in_flight
from fetcher.http.limiter import header_int, parse_reset
from fetcher.http.retry import RetryPolicy
from fetcher.http.transport import AiohttpTransport, Request, Response, Transport
from fetcher.models import ResponseShape
from fetcher.run.client import Client

if TYPE_CHECKING:
    from fetcher.simulator import RunningSimulator

__all__ = ["SIMULATOR_KEY", "ApiSession", "Observed", "RecordingTransport", "api_key", "open_api"]

#: The key the in-process simulator accepts when the user has none set.
SIMULATOR_KEY: Final = "sim-key"


@dataclass(frozen=True, slots=True)
class Observed:
    """What one response said about the rate limit, and how long it took."""

    status: int
    elapsed_s: float
    limit: int | None = None
    remaining: int | None = None
    reset_in_s: float | None = None


class RecordingTransport:
    """A transport that remembers each response's timing and rate-limit headers.

    Args:
        inner: the transport that really sends.
        wall_clock: epoch seconds, to read epoch ``x-ratelimit-reset`` values.
    """

    def __init__(self, inner: Transport, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self.observed: list[Observed] = []
        #: Requests handed to the inner transport, answered or not: a connection
        #: dropped mid-request was still sent, and the server may have counted it.
        self.sent = 0
        self._wall = wall_clock

    async def send(self, request: Request) -> Response:
        """Send through the inner transport and record what came back."""
        started = time.monotonic()
        self.sent += 1
        response = await self.inner.send(request)
        headers = response.headers
        raw_reset = headers.get("x-ratelimit-reset")
        self.observed.append(
            Observed(
                status=response.status,
                elapsed_s=time.monotonic() - started,
                limit=header_int(headers, "x-ratelimit-limit"),
                remaining=header_int(headers, "x-ratelimit-remaining"),
                reset_in_s=(
                    None if raw_reset is None else parse_reset(raw_reset, now_wall=self._wall())
                ),
            )
        )
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.inner.aclose()


@dataclass(slots=True)
class ApiSession:
    """An open client for the configured API (see :func:`open_api`)."""

    client: Client
    transport: RecordingTransport | None
    base_url: str


def api_key(settings: ExportSettings) -> SecretStr:
    """The key: the key file, else ``SALESHANDY_API_KEY``, else the simulator's own.

    Raises:
        ConfigError: no key, and the API is not the built-in simulator.
    """
    try:
        return resolve_api_key(settings)
    except ConfigError:
        if settings.uses_simulator and settings.api_key_file is None:
            return SecretStr(SIMULATOR_KEY)
        raise


@contextlib.asynccontextmanager
async def open_api(
    settings: ExportSettings,
    *,
    retry: RetryPolicy | None = None,
    concurrency: int | None = None,
    record: bool = True,
    key: SecretStr | None = None,
) -> AsyncIterator[ApiSession]:
    """A client for the settings' API; for ``base_url = "simulator"``, a simulator too.

    Args:
        settings: the API, key, timeout, rate limit, TLS and parsing settings.
        retry: the client's retry policy (default: from the settings).
        concurrency: requests in flight (default: the settings').
        record: keep what each response said (a short probe); an export, whose
            pages run into the thousands, does not.
        key: the key, when the caller has resolved it already (default:
            :func:`api_key`); a key file is then read, and warned about, once.

    Raises:
        ConfigError: no API key.
    """
    if key is None:
        key = api_key(settings)
    if retry is None:
        retry = RetryPolicy(
            attempts=settings.max_attempts, max_retry_after_s=settings.max_retry_after
        )
    async with contextlib.AsyncExitStack() as stack:
        base_url = settings.base_url
        if settings.uses_simulator:
            simulator = await stack.enter_async_context(_simulator(settings, key))
            base_url = simulator.base_url
        limit = concurrency or settings.concurrency
        # Nobody fixed it (no flag, variable, config key or rate): the client may
        # raise it when the server's headers allow (see Client's concurrency).
        auto = concurrency is None and "concurrency" not in settings.model_fields_set
        sender = AiohttpTransport.for_client(
            timeout=settings.timeout,
            concurrency=limit,
            max_in_flight=max_auto_in_flight(limit) if auto else None,
            max_body_bytes=settings.max_body_bytes,
            ca_bundle=settings.ca_bundle,
        )
        transport = RecordingTransport(sender) if record else None
        client = await stack.enter_async_context(
            Client(
                api_key=key,
                base_url=base_url,
                concurrency=None if auto else limit,
                rate_limit=settings.rate,
                timeout=settings.timeout,
                retry=retry,
                shape=ResponseShape(
                    records_path=settings.records_path, user_id_field=settings.user_id_field
                ),
                transport=transport or sender,
                shared_limiter=settings.shared_limiter,
            )
        )
        yield ApiSession(client, transport, base_url)


def _simulator(
    settings: ExportSettings, key: SecretStr
) -> contextlib.AbstractAsyncContextManager[RunningSimulator]:
    from fetcher.simulator import SimulatorConfig, serve  # noqa: PLC0415  (only for trials)

    knobs = settings.simulator
    return serve(
        SimulatorConfig(
            seed=knobs.seed,
            team_size=knobs.team_size,
            api_keys=(key.get_secret_value(),),
            latency_ms=knobs.latency_ms,
            rate_limit=knobs.rate_limit,
            rate_window_s=knobs.rate_window_s,
            fault_rate=knobs.fault_rate,
        )
    )
