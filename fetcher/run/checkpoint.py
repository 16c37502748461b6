"""Checkpoints, resume and the run lock: what makes a killed run safe to start again.

One JSON state file per export (``--state``, by default ``OUT.state.json``)
records, per query, which pages are *done*, the query's last page when known,
and a token from the sink saying how far its output is durable. A page is done
only once the sink has made it durable (:meth:`ResumableSink.checkpoint`) and
the state file naming it has been replaced atomically on disk; pages written
after the last checkpoint are not done, and on resume the sink discards them
(the JSONL sink truncates its file to the checkpointed offset) and they are
fetched again. So a run killed at any instant, SIGKILL included, and started
again with the same command ends with every record exactly once, without
fetching done pages again.

The same file keeps a small ledger across runs: for each job (everything but
the window) the end of the last window it completed, which ``--catch-up``
starts from.

A lock file beside the state (``OUT.state.json.lock``, an ``fcntl`` lock via
`filelock`_) stops two runs from writing the same output at once. The kernel
drops the lock when its process dies, however it dies, so a stale lock never
blocks a later run.

The state file names the account's user ids, so it is created ``0600``.

.. _filelock: https://py-filelock.readthedocs.io/
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import filelock
import orjson
import structlog

from fetcher.errors import ConfigError
from fetcher.files import write_atomically

if TYPE_CHECKING:
    from fetcher.models import Page
    from fetcher.run.paging import QueryPlan
    from fetcher.sinks import Sink
    from fetcher.spec import QuerySpec

__all__ = ["Checkpointer", "QueryProgress", "RunLock", "RunState", "fingerprint"]

log = structlog.get_logger("fetcher.run.checkpoint")

STATE_VERSION: Final = 1
StateStatus = Literal["running", "complete", "incomplete", "failed"]


def fingerprint(specs: Iterable[QuerySpec], output: str) -> str:
    """Identifies one export: its queries and where it writes. Resume needs a match."""
    digest = hashlib.sha256(output.encode())
    for key in sorted(spec.key for spec in specs):
        digest.update(b"\0" + key.encode())
    return digest.hexdigest()[:24]


def _ranges(numbers: Iterable[int]) -> list[list[int]]:
    """[1, 2, 3, 7] -> [[1, 3], [7, 7]]: compact in the file for long queries."""
    out: list[list[int]] = []
    for n in sorted(numbers):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def _unranges(ranges: Iterable[Iterable[int]]) -> set[int]:
    numbers: set[int] = set()
    for low, high in ranges:
        numbers.update(range(int(low), int(high) + 1))
    return numbers


@dataclass(slots=True)
class QueryProgress:
    """What is durably done of one query."""

    spec: dict[str, Any]
    done: set[int] = field(default_factory=set)
    end: int | None = None
    total_pages: int | None = None
    total_items: int | None = None
    records: int = 0

    def to_json(self) -> dict[str, Any]:
        """The query's entry in the state file."""
        return {
            "spec": self.spec,
            "done": _ranges(self.done),
            "end": self.end,
            "total_pages": self.total_pages,
            "total_items": self.total_items,
            "records": self.records,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueryProgress:
        """Read a query's entry back."""
        return cls(
            spec=dict(data["spec"]),
            done=_unranges(data.get("done", [])),
            end=data.get("end"),
            total_pages=data.get("total_pages"),
            total_items=data.get("total_items"),
            records=int(data.get("records", 0)),
        )


@dataclass(slots=True)
class RunState:
    """The state file's contents.

    Attributes:
        path: where it is stored.
        fingerprint: the export it belongs to (see :func:`fingerprint`).
        status: ``running`` until the run ends.
        queries: durable progress per query key.
        sink: the sink's last checkpoint token.
        ledger: per job identity, the end of the last completed window (ISO 8601).
        shape: what the last completed run's responses looked like (records path,
            new fields): the next run is held to it.
    """

    path: Path
    fingerprint: str = ""
    status: StateStatus = "running"
    queries: dict[str, QueryProgress] = field(default_factory=dict)
    sink: dict[str, Any] | None = None
    #: each user batch once, by digest (queries name theirs): a year of daily
    #: slices shares a handful of batches, and the file stays small
    users: dict[str, list[str]] = field(default_factory=dict)
    ledger: dict[str, str] = field(default_factory=dict)
    shape: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    updated_at: str = ""

    @classmethod
    def load(cls, path: Path) -> RunState | None:
        """Read the state file; ``None`` if there is none.

        Raises:
            ConfigError: when the file exists but cannot be understood.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(
                f"cannot read state file {path}: {exc.strerror}", field="--state"
            ) from None
        try:
            return cls._parse(path, orjson.loads(raw))
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(
                f"state file {path} is not a fetcher state file ({exc}); "
                "move it away, or pass --fresh to start over",
                field="--state",
            ) from None

    @classmethod
    def _parse(cls, path: Path, data: Any) -> RunState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
        run = data.get("run") or {}
        return cls(
            path=path,
            fingerprint=str(run.get("fingerprint", "")),
            status=run.get("status", "running"),
            queries={
                key: QueryProgress.from_json(value)
                for key, value in (run.get("queries") or {}).items()
            },
            sink=run.get("sink"),
            users={str(k): list(v) for k, v in (run.get("users") or {}).items()},
            ledger={str(k): str(v) for k, v in (data.get("ledger") or {}).items()},
            shape=dict(data.get("shape") or {}),
            started_at=str(run.get("started_at", "")),
            updated_at=str(run.get("updated_at", "")),
        )

    def to_json(self) -> dict[str, Any]:
        """The file's contents."""
        return {
            "version": STATE_VERSION,
            "run": {
                "fingerprint": self.fingerprint,
                "status": self.status,
                "started_at": self.started_at,
                "updated_at": self.updated_at,
                "sink": self.sink,
                "users": self.users,
                "queries": {key: q.to_json() for key, q in self.queries.items()},
            },
            "ledger": self.ledger,
            "shape": self.shape,
        }

    def save(self) -> None:
        """Replace the file atomically and durably (temp file, fsync, rename, fsync dir)."""
        self.updated_at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        data = orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2)
        write_atomically(self.path, data, mode=0o600)  # it names the account's user ids

    def spec_of(self, key: str) -> dict[str, Any]:
        """A query's spec as recorded, its user ids filled back in."""
        described = dict(self.queries[key].spec)
        described["user_ids"] = self.users[described.pop("users")]
        return described

    def done_pages(self) -> dict[str, frozenset[int]]:
        """Per query key, the pages already durably written."""
        return {key: frozenset(q.done) for key, q in self.queries.items()}


class RunLock:
    """An exclusive lock on one export's state, released by the kernel if the process dies.

    Args:
        state_path: the state file the lock guards.
    """

    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_name(state_path.name + ".lock")
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {self.path.parent} for the state file: {exc.strerror or exc}; "
                "choose another --state or --out",
                field="--state",
            ) from None
        try:
            self._lock.acquire()
        except filelock.Timeout:
            holder = _read_holder(self.path)
            raise ConfigError(
                f"another fetcher run{holder} is writing this output (lock {self.path}); "
                "wait for it to finish, or give this run a different --out/--state",
                field="--state",
            ) from None
        # Say who holds it, for the message a second run prints; the lock itself is fcntl's.
        with contextlib.suppress(OSError):
            self.path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def _read_holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


class Checkpointer:
    """Records which pages are durably written, and resumes from that record.

    Args:
        state: the state to update (loaded or new).
        interval_s: the longest time between two checkpoints while pages arrive.
        resumed: whether ``state`` continues an interrupted run of the same export.
    """

    def __init__(self, state: RunState, *, interval_s: float = 1.0, resumed: bool = False) -> None:
        self.state = state
        self.interval_s = interval_s
        self.resumed = resumed
        self.resumed_pages = sum(len(q.done) for q in state.queries.values()) if resumed else 0
        self.resumed_records = sum(q.records for q in state.queries.values()) if resumed else 0
        # (query key, page number, records) of pages written since the last
        # checkpoint: not the pages themselves, which would keep up to a second's
        # worth of records alive after the sink has them.
        self._pending: list[tuple[str, int, int]] = []
        self._last = time.monotonic()

    @classmethod
    def open(
        cls,
        path: Path,
        specs: list[QuerySpec],
        *,
        output: str,
        fresh: bool = False,
        interval_s: float = 1.0,
    ) -> Checkpointer:
        """Load the state for this export, resuming it if it is an unfinished run of it.

        Args:
            path: the state file.
            specs: the run's queries.
            output: where the run writes (part of the export's identity).
            fresh: ignore an unfinished run and start over.
            interval_s: see the class.
        """
        print_ = fingerprint(specs, output)
        previous = RunState.load(path)
        ledger = previous.ledger if previous else {}
        shape = previous.shape if previous and not fresh else {}
        if (
            previous is not None
            and not fresh
            and previous.fingerprint == print_
            and previous.status != "complete"
            and previous.sink is not None
        ):
            previous.status = "running"
            log.info(
                "run.resuming",
                state=str(path),
                pages_done=sum(len(q.done) for q in previous.queries.values()),
            )
            return cls(previous, interval_s=interval_s, resumed=True)
        unfinished = previous is not None and previous.status != "complete"
        if unfinished and previous is not None and previous.fingerprint != print_:
            log.warning(
                "run.state_replaced",
                state=str(path),
                reason="the unfinished run recorded there exported different queries",
            )
        state = RunState(
            path=path,
            fingerprint=print_,
            ledger=dict(ledger),
            shape=dict(shape),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        )
        for spec in specs:
            described = spec.model_dump(mode="json", exclude={"user_ids"})
            # JSON, not a joined string: ("a\nb",) and ("a", "b") are different batches.
            batch = hashlib.sha256(orjson.dumps(spec.user_ids)).hexdigest()[:16]
            state.users.setdefault(batch, list(spec.user_ids))
            described["users"] = batch
            state.queries[spec.key] = QueryProgress(spec=described)
        return cls(state, interval_s=interval_s)

    def restart(self) -> None:
        """Forget the interrupted run's progress (its output could not be continued)."""
        self.resumed = False
        self.resumed_pages = self.resumed_records = 0
        self.state.sink = None
        for progress in self.state.queries.values():
            progress.done.clear()
            progress.records = 0
            progress.end = progress.total_pages = progress.total_items = None

    async def start(self) -> None:
        """Record that the run has started (before anything is fetched)."""
        self.state.status = "running"
        await anyio.to_thread.run_sync(self.state.save)

    def done_pages(self) -> dict[str, frozenset[int]]:
        """Per query key, pages to skip."""
        return self.state.done_pages() if self.resumed else {}

    def known_ends(self) -> dict[str, tuple[int | None, int | None]]:
        """Per query key, (last page, total pages) learnt by an earlier run."""
        if not self.resumed:
            return {}
        return {key: (q.end, q.total_pages) for key, q in self.state.queries.items()}

    def written(self, page: Page) -> None:
        """A page was handed to the sink; it is done at the next checkpoint."""
        self._pending.append((page.query.key, page.number, len(page.records)))

    def due(self) -> bool:
        """Whether enough time has passed for a checkpoint."""
        return bool(self._pending) and time.monotonic() - self._last >= self.interval_s

    async def commit(self, sink: Sink, plans: Iterable[QueryPlan]) -> None:
        """Make the sink durable, then record its pages as done, atomically.

        Raises:
            SinkError: when the sink cannot make its output durable.
        """
        checkpoint = getattr(sink, "checkpoint", None)
        if checkpoint is None:
            return
        token = await checkpoint()
        state = self.state
        for key, number, records in self._pending:
            progress = state.queries.get(key)
            if progress is not None:
                progress.done.add(number)
                progress.records += records
        for plan in plans:
            progress = state.queries.get(plan.key)
            if progress is not None:
                progress.end = plan.end if plan.end is not None else progress.end
                progress.total_pages = plan.total_pages or progress.total_pages
                progress.total_items = plan.total_items or progress.total_items
        state.sink = dict(token)
        await anyio.to_thread.run_sync(state.save)
        self._pending.clear()
        self._last = time.monotonic()

    @property
    def expected_records_path(self) -> str | None:
        """Where the last completed run found the records, if it recorded that."""
        path = self.state.shape.get("records_path")
        return path if isinstance(path, str) else None

    async def finish(
        self,
        status: StateStatus,
        *,
        ledger: Mapping[str, str] | None = None,
        shape: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how the run ended (and, on success, the ledger's position and shape)."""
        self.state.status = status
        if ledger:
            self.state.ledger.update(ledger)
        if shape:
            self.state.shape = dict(shape)
        await anyio.to_thread.run_sync(self.state.save)
