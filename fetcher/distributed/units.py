"""A job split into units: one per (workspace, slice, report type, user batch).

A unit is one query (:class:`~fetcher.spec.QuerySpec`): the job's settings cut
the window into slices, times report types, times user batches
(``user_batch_size``), for each workspace. Its id is the query's key, which
hashes the whole query (users included) and starts with the workspace's name,
so splitting the same job twice gives the same ids: that is what lets a second
``fetcher enqueue`` send only what is not done.

A message carries the job id and the unit id, nothing else: not the query
(the ledger has it), and never a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fetcher.errors import ConfigError
from fetcher.spec import QuerySpec

__all__ = ["JOB_ID", "Unit", "check_job_id", "message_args", "split"]

#: What a job id may look like: it is shown, typed and used in SQL parameters.
JOB_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


def check_job_id(job_id: str) -> str:
    """Check a job id given with ``--job-id``.

    Raises:
        ConfigError: naming ``--job-id``.
    """
    if not JOB_ID.fullmatch(job_id):
        raise ConfigError(
            f"job id {job_id!r}: use letters, digits, '_', '.', ':' or '-', starting with a "
            "letter or digit, at most 100 characters (e.g. nightly-2024-06-01)",
            field="--job-id",
        )
    return job_id


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of a job: a query, named by its key.

    Attributes:
        unit_id: the query's key.
        spec: the query.
        user_batch: the index of its user batch in the job (0 for the first).
    """

    unit_id: str
    spec: QuerySpec
    user_batch: int = 0

    @property
    def workspace(self) -> str | None:
        """The workspace whose key asks for it (``None`` without workspaces)."""
        return self.spec.workspace

    def spec_json(self) -> dict[str, Any]:
        """The query as JSON data, for the ledger (user ids are not secrets; keys never)."""
        return self.spec.model_dump(mode="json")

    @classmethod
    def from_json(cls, unit_id: str, spec: Mapping[str, Any], user_batch: int = 0) -> Unit:
        """The unit the ledger recorded.

        Raises:
            ConfigError: the recorded query no longer has the recorded key (a
                ledger written by another version of fetcher, or edited).
        """
        query = QuerySpec.model_validate(dict(spec))
        if query.key != unit_id:
            raise ConfigError(
                f"the ledger's unit {unit_id} holds a query whose key is {query.key}; it was "
                "written by another version of fetcher or edited: enqueue under a new --job-id",
                field="unit",
            )
        return cls(unit_id, query, user_batch)


def split(specs: Iterable[QuerySpec]) -> list[Unit]:
    """The units of a job's queries, in order, one per distinct query.

    Raises:
        ConfigError: two queries with the same key (the same query twice).
    """
    units: dict[str, Unit] = {}
    batches: dict[tuple[str | None, tuple[str, ...]], int] = {}
    for spec in specs:
        batch = batches.setdefault(
            (spec.workspace, spec.user_ids),
            sum(1 for workspace, _ in batches if workspace == spec.workspace),
        )
        if spec.key in units:
            raise ConfigError(
                f"the job asks for query {spec.key} twice; check the users for repeats",
                field="users",
            )
        units[spec.key] = Unit(spec.key, spec, batch)
    return list(units.values())


def message_args(job_id: str, unit: Unit | str) -> tuple[str, str]:
    """What a unit's message carries: the job id and the unit id."""
    return job_id, unit if isinstance(unit, str) else unit.unit_id
