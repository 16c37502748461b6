"""The command line and the nightly job: settings in, a run, an exit code out.

Settings from flags, environment and TOML (:mod:`~fetcher.app.settings`), opening
the configured API (:mod:`~fetcher.app.connect`), the commands (``export`` and the
nightly job in :mod:`~fetcher.app.job`, ``plan`` in :mod:`~fetcher.app.plan`,
``check`` in :mod:`~fetcher.app.check`, ``demo`` in :mod:`~fetcher.app.demo`),
progress, logs, and :mod:`~fetcher.app.cli` (argv -> settings -> run -> exit code).
The top layer: nothing below imports it.
"""
