import io
import json

import structlog

from fetcher.app.logs import REDACTED, RedactSecrets, configure_logging

KEY = "sk_live_0123456789abcdef"


def test_redacts_the_key_anywhere_in_an_event() -> None:
    """The key is replaced in strings, nested values and exception text."""
    redact = RedactSecrets([KEY])
    event = {
        "event": f"sent {KEY}",
        "nested": {"deep": [f"a{KEY}b", 3]},
        "error": ValueError(f"bad key {KEY}"),
        "count": 4,
    }
    out = redact(None, "info", event)
    text = json.dumps(out, default=str)
    assert KEY not in text
    assert out["count"] == 4
    assert out["event"] == f"sent {REDACTED}"


def test_secret_keys_are_redacted_whatever_they_hold() -> None:
    """x-api-key / authorization / dsn values are hidden even when not a known secret."""
    out = RedactSecrets()(
        None, "info", {"x-api-key": "abc", "headers": {"Authorization": "Bearer z"}}
    )
    assert out["x-api-key"] == REDACTED
    assert out["headers"]["Authorization"] == REDACTED


def test_configured_json_logs_never_show_the_key() -> None:
    """Through the CLI's configuration, JSON log lines are redacted, tracebacks included."""
    stream = io.StringIO()
    configure_logging(fmt="json", secrets=[KEY], stream=stream, debug=True)
    log = structlog.get_logger("t")
    log.info("hello", url=f"https://x/?k={KEY}")
    try:
        raise RuntimeError(f"leaky {KEY}")
    except RuntimeError:
        log.exception("failed")
    text = stream.getvalue()
    assert KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[1]["exception"].count(REDACTED) >= 1
