"""Log lines: JSON by default with bound context, readable text with DAPI_LOG_FORMAT=console."""

from __future__ import annotations

import io
import json
import logging

import structlog

from dapi.logs import bind_context, configure_logging, get_logger, unbind_context


def teardown_function() -> None:
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_json_lines_carry_bound_context() -> None:
    stream = io.StringIO()
    configure_logging({}, stream=stream)
    bind_context(node_id="node-7", height=120, epoch=3)
    get_logger("dapi.test").info("phase changed", phase="PoCGenerate")
    unbind_context("node_id")
    get_logger("dapi.test").warning("second")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "phase changed" and first["phase"] == "PoCGenerate"
    assert (first["node_id"], first["height"], first["epoch"]) == ("node-7", 120, 3)
    assert first["level"] == "info" and "timestamp" in first
    assert "node_id" not in second and second["height"] == 120


def test_stdlib_loggers_are_rendered_the_same_way() -> None:
    stream = io.StringIO()
    configure_logging({}, stream=stream)
    logging.getLogger("uvicorn.error").error("port in use")
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "port in use" and line["level"] == "error"


def test_console_format_is_not_json() -> None:
    stream = io.StringIO()
    configure_logging({"DAPI_LOG_FORMAT": "console"}, stream=stream)
    get_logger("dapi.test").info("hello", height=5)
    text = stream.getvalue()
    assert "hello" in text and "height=5" in text
    assert not text.lstrip().startswith("{")
