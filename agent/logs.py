"""Logging set-up: readable text for people, or one JSON object per line for log collectors.

A structured event carries its values as fields, not formatted into its message, so that a log
collector can filter on them (``jq 'select(.generation > 3)'``) and the message stays one
constant string per event (countable, greppable)::

    log.info("tables in force", extra=fields(generation=4, isolated_addresses=12))

The JSON formatter puts the fields beside ``time``, ``level``, ``logger`` and ``message`` as
top-level keys; the text formatter appends them to the message as ``key=value``. A field named
like one of those four keys is prefixed with ``field_`` so it never hides them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

FIELDS = "fields"
"""The ``extra`` key under which a record carries its fields (see :func:`fields`)."""
IN_TEXT = "fields_in_text"
"""The ``extra`` key that, False, keeps the fields out of text lines (see :func:`json_fields`)."""
RESERVED = frozenset({"time", "level", "logger", "message", "exception"})
"""Keys of every JSON line; a field of the same name is written as ``field_NAME``."""


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra`` argument of a log call carrying ``values`` as fields."""
    return {FIELDS: values}


def json_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra`` argument of a log call whose message already says ``values`` for people
    (a trace line): JSON lines carry them as keys, text lines do not repeat them."""
    return {FIELDS: dict(values), IN_TEXT: False}


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """The fields of ``record`` (empty when it has none, or something else under the key)."""
    values = getattr(record, FIELDS, None)
    return values if isinstance(values, Mapping) else {}


def _plain(value: Any) -> Any:
    """A value JSON can hold: containers kept, anything else as its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message, the record's
    fields as top-level keys, and exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            name = f"field_{key}" if key in RESERVED else str(key)
            entry[name] = _plain(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _text(value: Any) -> str:
    """A field's value in a text line: quoted (JSON) when it holds a space, a quote or ``=``,
    so that ``key=value`` pairs split unambiguously."""
    if isinstance(value, str):
        if value and not any(c in value for c in ' ="\n\t'):
            return value
        return json.dumps(value)
    return json.dumps(_plain(value))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message key=value ...``, for people."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        if getattr(record, IN_TEXT, True) is False:
            return line
        pairs = " ".join(f"{key}={_text(value)}" for key, value in record_fields(record).items())
        return f"{line} {pairs}" if pairs else line


def configure_logging(*, json_format: bool = False, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
