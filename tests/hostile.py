"""A deliberately hostile API server on a real local port, for security tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

STATS = "/v1/analytics/team/stats"


def page_body(records: list[dict[str, object]], total_pages: int = 1) -> bytes:
    return orjson.dumps(
        {
            "message": "ok",
            "payload": {
                "data": records,
                "meta": {"totalItems": len(records), "totalPages": total_pages, "currentPage": 1},
            },
        }
    )


@dataclass
class Hostile:
    """What the server does, and what it saw."""

    kind: str
    base_url: str = ""
    requests: int = 0
    keys_seen: list[str] = field(default_factory=list)


HOSTILE = web.AppKey("hostile", Hostile)


async def _handler(request: web.Request) -> web.StreamResponse:
    hostile = request.app[HOSTILE]
    hostile.requests += 1
    hostile.keys_seen.append(request.headers.get("x-api-key", ""))
    await request.read()
    kind = hostile.kind
    if kind == "huge":
        # No content-length; bytes until the client hangs up.
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        chunk = b" " * 65536
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(100_000):  # 6.5 GB if nobody stops it
                await response.write(chunk)
        return response
    if kind == "huge_declared":
        return web.Response(body=b" " * (4 * 1024 * 1024), content_type="application/json")
    if kind == "nested":
        return web.Response(body=b"[" * 200_000 + b"]" * 200_000, content_type="application/json")
    if kind == "non_utf8":
        return web.Response(
            body=b'{"payload": {"data": [{"userId": "a\xff\xfe"}]}}',
            content_type="application/json",
        )
    if kind == "retry_after_years":
        return web.json_response(
            {"message": "slow down"}, status=429, headers={"retry-after": "315360000"}
        )
    if kind == "retry_after_negative":
        if hostile.requests == 1:
            return web.json_response({"message": "x"}, status=429, headers={"retry-after": "-30"})
        return web.Response(body=page_body([{"userId": "u1"}]), content_type="application/json")
    if kind == "total_pages":
        return web.Response(
            body=page_body([{"userId": "u1"}], total_pages=10**9), content_type="application/json"
        )
    if kind == "big_string":
        record = {"userId": "u1", "firstName": "x" * (1024 * 1024), "prospectAdded": 1}
        return web.Response(body=page_body([record]), content_type="application/json")
    if kind == "echo_key":
        key = request.headers.get("x-api-key", "")
        return web.json_response({"message": f"bad request for key {key}"}, status=400)
    if kind == "redirect":
        raise web.HTTPTemporaryRedirect("http://127.0.0.2:9/steal")
    raise AssertionError(kind)


@contextlib.asynccontextmanager
async def hostile_server(kind: str) -> AsyncIterator[Hostile]:
    """Serve ``kind`` of hostility on a free port."""
    hostile = Hostile(kind)
    app = web.Application()
    app[HOSTILE] = hostile
    app.router.add_post(STATS, _handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hostile.base_url = f"http://127.0.0.1:{port}"
    try:
        yield hostile
    finally:
        await runner.cleanup()
