"""Checkpoints, resume and the run lock: what makes a killed run safe to start again.

One JSON state file per export (``--state``, by default ``OUT.state.json``)
records, per query, which pages are *done*, the query's last page when known,
the user ids written so far while the query is open (its pages are written as
they arrive, one row per user: the set says which users a resumed run must
not write again), whether the query is *complete* (every page done and every
user the API counted written), and a token from the sink saying how far its
output is durable. A page is done only once the sink has made it durable
(:meth:`ResumableSink.checkpoint`) and the state file naming it has been
replaced atomically on disk; pages written after the last checkpoint are not
done, and on resume the sink discards them (the JSONL sink truncates its file
to the checkpointed offset; databases upsert them again) and they are fetched
again. So a run killed at any instant, SIGKILL included, and started again
with the same command ends with every record exactly once, fetching again
only the pages written after the last checkpoint (about a second's worth, see
``interval_s``) and those in flight at the kill.

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
import pydantic
import structlog

from fetcher import defaults
from fetcher.errors import ConfigError
from fetcher.files import write_atomically
from fetcher.run.paging import Resume

if TYPE_CHECKING:
    from fetcher.models import Page
    from fetcher.run.paging import QueryPlan
    from fetcher.sinks import Sink
    from fetcher.spec import QuerySpec

__all__ = ["Checkpointer", "QueryProgress", "RunLock", "RunState", "fingerprint"]

log = structlog.get_logger("fetcher.run.checkpoint")

#: 2: pages are checkpointed one by one, with the user ids written per open query.
#: A version 1 file (whole queries only) is still read: its done queries are complete.
STATE_VERSION: Final = 2
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
    #: records the query's pages held, repeats included (for a query without a total)
    rows: int = 0
    #: user ids written while the query is open; emptied once it is complete
    written: set[str] = field(default_factory=set)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        """The query's entry in the state file."""
        return {
            "spec": self.spec,
            "done": _ranges(self.done),
            "end": self.end,
            "total_pages": self.total_pages,
            "total_items": self.total_items,
            "records": self.records,
            "rows": self.rows,
            "complete": self.complete,
            "written_users": sorted(self.written),
        }

    def resume(self) -> Resume:
        """What a resumed run carries on from."""
        return Resume(
            done=frozenset(self.done),
            end=self.end,
            total_pages=self.total_pages,
            total_items=self.total_items,
            written=frozenset(self.written),
            rows=self.rows,
            finalized=self.complete,
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

        Every field is checked before anything is used (see :class:`_StateFile`).

        Raises:
            ConfigError: when the file exists but cannot be understood; it names
                the field that is wrong. Nothing is changed on disk.
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
            data = _StateFile.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise ConfigError(
                f"state file {path} is not a fetcher state file ({_first_problem(exc)}); "
                "move it away, or pass --fresh to start over (the next run then "
                "replaces it)",
                field="--state",
            ) from None
        return cls._of(path, data)

    @classmethod
    def _of(cls, path: Path, data: _StateFile) -> RunState:
        run = data.run
        return cls(
            path=path,
            fingerprint=run.fingerprint,
            status=run.status,
            queries={
                key: QueryProgress(
                    spec=dict(q.spec),
                    done=_unranges(q.done),
                    end=q.end,
                    total_pages=q.total_pages,
                    total_items=q.total_items,
                    records=q.records,
                    rows=q.rows,
                    written=set(q.written_users),
                    # Version 1 checkpointed whole queries only: a done query was complete.
                    complete=q.complete or (data.version == 1 and bool(q.done)),
                )
                for key, q in run.queries.items()
            },
            sink=run.sink,
            users=run.users,
            ledger=data.ledger,
            shape=data.shape,
            started_at=run.started_at,
            updated_at=run.updated_at,
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


@dataclass(frozen=True, slots=True)
class _Written:
    """A page handed to the sink since the last checkpoint, as the checkpoint records it."""

    key: str
    page: int | None  # None: a repair read (its number is not one of the query's pages)
    records: int
    rows: int
    users: list[str]


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="ignore", frozen=True)


class _QueryFile(_Strict):
    spec: dict[str, Any]
    done: list[tuple[pydantic.NonNegativeInt, pydantic.NonNegativeInt]] = []
    end: pydantic.PositiveInt | None = None
    total_pages: pydantic.NonNegativeInt | None = None
    total_items: pydantic.NonNegativeInt | None = None
    records: pydantic.NonNegativeInt = 0
    rows: pydantic.NonNegativeInt = 0
    complete: bool = False
    written_users: list[str] = []


class _RunFile(_Strict):
    fingerprint: str = ""
    status: StateStatus = "running"
    started_at: str = ""
    updated_at: str = ""
    sink: dict[str, Any] | None = None
    users: dict[str, list[str]] = {}
    queries: dict[str, _QueryFile] = {}


class _StateFile(_Strict):
    """The state file as it must be on disk: read and checked in one go, before any use."""

    version: Literal[1, 2]
    run: _RunFile = _RunFile()
    ledger: dict[str, str] = {}
    shape: dict[str, Any] = {}


def _first_problem(exc: pydantic.ValidationError) -> str:
    """``run.queries.<key>.end: Input should be a valid integer``, from pydantic's errors."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "the file"
    return f"{where}: {error['msg']}"


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

    def __init__(
        self,
        state: RunState,
        *,
        interval_s: float = defaults.CHECKPOINT_INTERVAL_S,
        resumed: bool = False,
    ) -> None:
        self.state = state
        self.interval_s = interval_s
        self.resumed = resumed
        self.resumed_pages = sum(len(q.done) for q in state.queries.values()) if resumed else 0
        self.resumed_records = sum(q.records for q in state.queries.values()) if resumed else 0
        # What the pages written since the last checkpoint hold: not the pages
        # themselves, which would keep a second's worth of records alive after
        # the sink has them.
        self._pending: list[_Written] = []
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
        try:
            previous = RunState.load(path)
        except ConfigError as exc:
            if not fresh:
                raise
            # Asked to start over: an unreadable file is replaced (its ledger with it).
            log.warning("run.state_unreadable_replaced", state=str(path), error=str(exc))
            previous = None
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
            # No workspace: described as before workspaces existed.
            unsaid = {"user_ids"} if spec.workspace is not None else {"user_ids", "workspace"}
            described = spec.model_dump(mode="json", exclude=unsaid)
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
            progress.written.clear()
            progress.records = progress.rows = 0
            progress.complete = False
            progress.end = progress.total_pages = progress.total_items = None

    async def start(self) -> None:
        """Record that the run has started (before anything is fetched)."""
        self.state.status = "running"
        await anyio.to_thread.run_sync(self.state.save)

    def resume(self) -> dict[str, Resume]:
        """Per query key, what the interrupted run durably did (nothing for a new run)."""
        if not self.resumed:
            return {}
        return {key: q.resume() for key, q in self.state.queries.items()}

    def written(self, page: Page, *, user_id_field: str = "userId") -> None:
        """A page was handed to the sink; it is done at the next checkpoint."""
        self._pending.append(
            _Written(
                key=page.query.key,
                page=None if page.repair else page.number,
                records=len(page.records),
                rows=0 if page.repair else len(page.records) + page.dropped,
                users=[str(record[user_id_field]) for record in page.records],
            )
        )

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
        for written in self._pending:
            progress = state.queries.get(written.key)
            if progress is not None and not progress.complete:
                if written.page is not None:
                    progress.done.add(written.page)
                progress.records += written.records
                progress.rows += written.rows
                progress.written.update(written.users)
        for plan in plans:
            progress = state.queries.get(plan.key)
            if progress is None:
                continue
            progress.end = plan.end if plan.end is not None else progress.end
            progress.total_pages = plan.total_pages or progress.total_pages
            progress.total_items = plan.total_items or progress.total_items
            if plan.finalized and not (plan.unwritten or plan.missing or plan.shortfall):
                # Every page and every user is in: the set is not needed any more.
                progress.complete = True
                progress.written.clear()
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
