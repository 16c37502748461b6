"""Many workers on one job: units, the PostgreSQL ledger, and Dramatiq on Redis.

A job (the settings of ``fetcher export``, ``[[workspaces]]`` and all) splits
into **units**, one per query: (workspace, slice, report type, user batch)
(:mod:`~fetcher.distributed.units`). The **ledger** (:mod:`~fetcher.distributed.ledger`)
records the job and its units in PostgreSQL, in a schema of its own
(``fetcher``), beside the results table; a unit's pages are upserted into the
results and checkpointed **in the same transaction**, so a unit delivered twice
or resumed after a crash neither duplicates nor loses a row
(:mod:`~fetcher.distributed.runner`). Messages on the queue name a job and a
unit, never a key (:mod:`~fetcher.distributed.broker`).

The ledger, not the queue, is the truth: Redis may lose every message and the
next ``fetcher enqueue`` sends exactly the units not done.

This layer sits between the command line (:mod:`fetcher.app`, which holds the
commands and resolves settings and keys) and the run (:mod:`fetcher.run`);
nothing below imports it. Dramatiq and asyncpg are imported by the modules that
need them (``pip install 'fetcher[distributed]'``).
"""
