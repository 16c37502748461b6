"""fetcher inside other tools: the top layer, above :mod:`fetcher.app`.

- :mod:`fetcher.integrations.dlt`: ``team_stats_source``, fetcher as a dlt source
  (``pip install 'fetcher[dlt]'``).

Nothing here is imported by ``import fetcher``, and nothing below imports this
package (an import-linter contract in ``pyproject.toml`` says so): a tool's
library is loaded only by the code that asks for its integration.
"""
