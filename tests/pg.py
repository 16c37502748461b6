"""The PostgreSQL server the tests use, and the rule for when it is missing.

The tests run against a real server: ``FETCHER_TEST_POSTGRES_DSN``, by default
the local one CI provides (``postgresql://postgres@127.0.0.1:5432/test``, trust
auth). Without a server, a developer's run skips those tests and says why;
under CI (``CI=true``) a missing server fails them, so a broken service can
never pass as a green run that tested nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

import asyncpg
import pytest

from fetcher.sinks.postgres import describe_dsn

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DSN_ENV = "FETCHER_TEST_POSTGRES_DSN"
#: Seconds to wait for the server before calling it missing.
PROBE_TIMEOUT_S = 5.0


def server_dsn(env: Mapping[str, str] | None = None) -> str:
    """The server's connection string: the environment's, or CI's local server."""
    env = os.environ if env is None else env
    return env.get(DSN_ENV) or DEFAULT_DSN


async def require_postgres(dsn: str, env: Mapping[str, str] | None = None) -> None:
    """Return if the server answers; otherwise skip, or fail when CI=true."""
    env = os.environ if env is None else env
    try:
        connection = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:
        reason = (
            f"PostgreSQL is not reachable at {describe_dsn(dsn)} ({type(exc).__name__}: {exc}); "
            f"start a server there or set {DSN_ENV}"
        )
        if env.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {reason}", pytrace=False)
        pytest.skip(reason)
    else:
        await connection.close()


def unique_table() -> str:
    """A table name no other test (or concurrent run) uses."""
    return f"fetcher_test_{uuid.uuid4().hex[:16]}"
