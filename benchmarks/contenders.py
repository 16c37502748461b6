"""The contenders that are not fetcher: a plain sequential aiohttp loop, and dlt.

Each runs as its own process, like the fetcher CLI, so that all of them are
measured the same way (wall, CPU, memory of that process alone)::

    python -m benchmarks.contenders aiohttp --base-url URL --workload W.json --out X.jsonl
    python -m benchmarks.contenders dlt     --base-url URL --workload W.json --out X.jsonl

The workload is the list of request bodies fetcher itself would send (one per
query, without ``page``; see :func:`write_workload`), so every contender asks
for exactly the same queries. Each record is written as one JSON line, with
``_window_start`` added so that completeness can be checked per window.

- **aiohttp**: what one writes by hand: POST page 1, 2, 3... of each query
  until a short page, ``await response.json()``, ``json.dumps`` each record.
- **dlt**: ``dlt.sources.helpers.rest_client.RESTClient`` with a
  ``PageNumberPaginator`` that puts the page number in the JSON body
  (``page_body_path``) and stops at ``payload.meta.totalPages``. It measures
  dlt's fetching, not a pipeline load: records are written as above.

``--startup-only`` imports what the contender needs and exits: its start-up
cost, which the benchmark subtracts for a net CPU figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks._harness import KEY

TEAM_STATS_PATH = "/v1/analytics/team/stats"


def write_workload(path: Path, bodies: Iterable[dict[str, Any]]) -> int:
    """Write the query bodies (``page`` removed) for the contenders; return how many."""
    items = [{k: v for k, v in body.items() if k != "page"} for body in bodies]
    path.write_text(json.dumps(items))
    return len(items)


def _write_records(out: IO[str], records: Sequence[dict[str, Any]], window_start: str) -> None:
    for record in records:
        record["_window_start"] = window_start
        out.write(json.dumps(record) + "\n")


async def sequential_aiohttp(
    base_url: str, bodies: Sequence[dict[str, Any]], out: Path
) -> dict[str, int]:
    """Fetch every page one after another with aiohttp; stop each query at a short page."""
    import aiohttp  # noqa: PLC0415  (only this contender needs it here)

    requests = pages = records = 0
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as session:
        with out.open("w") as file:
            for body in bodies:
                page = 1
                while True:
                    payload = {**body, "page": page}
                    async with session.post(base_url + TEAM_STATS_PATH, json=payload) as resp:
                        resp.raise_for_status()
                        data = await resp.json()
                    requests += 1
                    rows = data["payload"]["data"]
                    _write_records(file, rows, body["startDate"])
                    records += len(rows)
                    if rows:
                        pages += 1
                    if len(rows) < body["limit"]:
                        break
                    page += 1
    return {"requests": requests, "pages": pages, "records": records}


def _dlt_client(base_url: str) -> tuple[Any, Any]:
    # By name: dlt is in the optional `bench` extra, and typing must not depend on it.
    import importlib  # noqa: PLC0415

    rest_client = importlib.import_module("dlt.sources.helpers.rest_client")
    paginators = importlib.import_module("dlt.sources.helpers.rest_client.paginators")
    client = rest_client.RESTClient(base_url=base_url, headers={"x-api-key": KEY})
    return client, paginators.PageNumberPaginator


def dlt_rest_pages(
    base_url: str, bodies: Sequence[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every page of every query with dlt's RESTClient and a body page-number paginator.

    Yields each query's body and one page of its records, one page after another.
    """
    client, paginator_class = _dlt_client(base_url)
    for body in bodies:
        paginator = paginator_class(
            base_page=1, page_body_path="page", total_path="payload.meta.totalPages"
        )
        for page in client.paginate(
            TEAM_STATS_PATH,
            method="POST",
            json={**body, "page": 1},
            paginator=paginator,
            data_selector="payload.data",
        ):
            yield body, list(page)


def dlt_rest_client(base_url: str, bodies: Sequence[dict[str, Any]], out: Path) -> dict[str, int]:
    """Fetch every page with dlt's RESTClient (:func:`dlt_rest_pages`); write JSON lines."""
    pages = records = 0
    with out.open("w") as file:
        for body, rows in dlt_rest_pages(base_url, bodies):
            _write_records(file, rows, body["startDate"])
            pages += 1
            records += len(rows)
    return {"requests": pages, "pages": pages, "records": records}


def main(argv: Sequence[str] | None = None) -> None:
    """Run one contender over a workload; write its own report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=["aiohttp", "dlt"])
    parser.add_argument("--base-url")
    parser.add_argument("--workload", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--startup-only", action="store_true")
    args = parser.parse_args(argv)
    if args.contender == "dlt":
        os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    if args.startup_only:
        if args.contender == "dlt":
            _dlt_client("http://127.0.0.1")
        else:
            import aiohttp  # noqa: F401, PLC0415
        return
    bodies = json.loads(args.workload.read_text())
    started = time.perf_counter()
    if args.contender == "aiohttp":
        stats = asyncio.run(sequential_aiohttp(args.base_url, bodies, args.out))
    else:
        stats = dlt_rest_client(args.base_url, bodies, args.out)
    report = stats | {"duration_s": time.perf_counter() - started}
    if args.report is not None:
        args.report.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
