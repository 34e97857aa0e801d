"""The rendered log chain (what journald gets), not captured event dicts."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from agent.core import logging as logmod
from agent.core.config import Secret


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def _fail_with_a_password_in_a_local() -> None:
    password = "hunter2-in-a-local"
    raise ConnectionError(f"refused ({len(password)} characters sent)")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_carry_no_local_variables(fmt: str) -> None:
    out = io.StringIO()
    logmod.setup("info", fmt, out)
    try:
        _fail_with_a_password_in_a_local()
    except ConnectionError:
        structlog.get_logger("supervisor").exception("component_failed")
    text = out.getvalue()
    assert "_fail_with_a_password_in_a_local" in text and "ConnectionError" in text  # the traceback is there
    assert "hunter2-in-a-local" not in text


def test_secret_shows_in_no_rendering() -> None:
    s = Secret("t0ken-value")
    held = {"password": s, "nested": [s]}
    for shown in (repr(s), str(s), f"{s}", "%s" % (s,), repr(held), str(held)):
        assert "t0ken-value" not in shown
    assert s.reveal() == "t0ken-value"
    out = io.StringIO()
    logmod.setup("info", "json", out)
    structlog.get_logger("x").info("connecting", password=s, kwargs=held)
    assert "t0ken-value" not in out.getvalue()


def test_every_line_names_its_component() -> None:
    out = io.StringIO()
    logmod.setup("info", "json", out)
    structlog.get_logger("repack").info("repack_started")
    structlog.get_logger("supervisor").bind(component="sampler").warning("component_failed")
    structlog.get_logger("sampler").info("sampler_started", component="sampler")
    assert [(e["event"], e["component"]) for e in _lines(out)] == [
        ("repack_started", "repack"),
        ("component_failed", "sampler"),  # a bound component wins over the logger's name
        ("sampler_started", "sampler"),
    ]
