"""One request in, one :class:`~fetcher.models.Page` out.

The layer under the run: the transport (the only module that imports aiohttp),
status and error mapping, response parsing, the rate limiter (the server's
window, a configured rate, the adaptive pace; local or shared through Redis),
the retry policy and adaptive timeouts. It knows nothing of runs, sinks or
settings.

Modules: :mod:`~fetcher.http.client` (the page client), :mod:`~fetcher.http.transport`,
:mod:`~fetcher.http.limiter`, :mod:`~fetcher.http.quota` (the server's rate-limit
window, learned), :mod:`~fetcher.http.shared` (one window for many processes),
:mod:`~fetcher.http.retry`, :mod:`~fetcher.http.timeouts`.
"""
