"""Log lines: JSON objects with the event's fields as keys, or text with ``key=value`` pairs."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.logs import JsonFormatter, TextFormatter, configure_logging, fields, json_fields


def record(message: str, *args: object, extra: dict[str, Any] | None = None) -> logging.LogRecord:
    """A record as ``logger.warning(message, *args, extra=extra)`` makes it."""
    logger = logging.getLogger("agent.x")
    return logger.makeRecord(
        "agent.x", logging.WARNING, __file__, 1, message, args, None, extra=extra
    )


def test_json_logs_are_one_object_per_line() -> None:
    entry = json.loads(JsonFormatter().format(record("a %s", "b")))
    assert entry["level"] == "warning" and entry["message"] == "a b"
    assert entry["logger"] == "agent.x" and entry["time"].endswith("Z")
    assert set(entry) == {"time", "level", "logger", "message"}


def test_fields_are_top_level_keys() -> None:
    line = JsonFormatter().format(
        record("tables in force", extra=fields(generation=4, source_version="17", took=0.25))
    )
    entry = json.loads(line)
    assert entry["message"] == "tables in force"
    assert (entry["generation"], entry["source_version"], entry["took"]) == (4, "17", 0.25)


def test_a_field_never_hides_the_line_s_own_keys() -> None:
    entry = json.loads(
        JsonFormatter().format(record("x", extra=fields(time="then", message="m", level=1)))
    )
    assert entry["message"] == "x" and entry["level"] == "warning" and entry["time"] != "then"
    assert (entry["field_time"], entry["field_message"], entry["field_level"]) == ("then", "m", 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(("a", 1), ["a", 1], id="tuple-as-list"),
        pytest.param({"k": (1, 2)}, {"k": [1, 2]}, id="nested"),
        pytest.param(Path("/run/x"), "/run/x", id="other-as-text"),
        pytest.param(None, None, id="null"),
    ],
)
def test_field_values_become_json(value: object, expected: object) -> None:
    entry = json.loads(JsonFormatter().format(record("x", extra=fields(value=value))))
    assert entry["value"] == expected


def test_an_exception_is_kept() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger = logging.getLogger("agent.x")
        made = logger.makeRecord(
            "agent.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(), extra=fields(q=1)
        )
    entry = json.loads(JsonFormatter().format(made))
    assert "RuntimeError: boom" in entry["exception"] and entry["q"] == 1


@pytest.mark.parametrize(
    ("values", "suffix"),
    [
        pytest.param({"queue": 1000, "restart": 2}, " queue=1000 restart=2", id="numbers"),
        pytest.param({"reason": "killed by SIGKILL"}, ' reason="killed by SIGKILL"', id="spaces"),
        pytest.param({"cidrs": ["10.0.0.0/8"]}, ' cidrs=["10.0.0.0/8"]', id="list-as-json"),
        pytest.param({"a": "x=y"}, ' a="x=y"', id="equals-quoted"),
        pytest.param({"a": ""}, ' a=""', id="empty-quoted"),
        pytest.param({"ok": True, "none": None}, " ok=true none=null", id="json-words"),
        pytest.param({}, "", id="no-fields"),
    ],
)
def test_text_lines_append_key_value_pairs(values: dict[str, Any], suffix: str) -> None:
    line = TextFormatter().format(record("restarting the queue worker", extra=fields(**values)))
    assert line.endswith("WARNING agent.x: restarting the queue worker" + suffix)


def test_fields_the_message_already_says_stay_out_of_text_lines() -> None:
    made = record("accept x/a -> x/b", extra=json_fields({"verdict": "allowed"}))
    assert TextFormatter().format(made).endswith("agent.x: accept x/a -> x/b")
    assert json.loads(JsonFormatter().format(made))["verdict"] == "allowed"


@pytest.mark.parametrize("json_format", [False, True], ids=["text", "json"])
def test_configured_handler_writes_fields(
    json_format: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(json_format=json_format)
        logging.getLogger("agent.runner").info("enforcing", extra=fields(node="node-1"))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = capsys.readouterr().err.strip()
    if json_format:
        assert json.loads(line)["node"] == "node-1"
    else:
        assert line.endswith("INFO agent.runner: enforcing node=node-1")
