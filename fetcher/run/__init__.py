"""A run: which pages, fetched by a pool of workers, written by one writer.

The layer over :mod:`fetcher.http` and :mod:`fetcher.sinks`: the pure paging plan
with one row per user per query (:mod:`~fetcher.run.paging`), the worker pool, ``export()`` and
the run summary (:mod:`~fetcher.run.pool`), checkpoints for resuming
(:mod:`~fetcher.run.checkpoint`), and the library's :class:`~fetcher.run.client.Client`
(the page client plus ``pages()``). It knows nothing of settings or the command line.
"""
