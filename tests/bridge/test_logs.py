"""bridge/logs.py: text from outside never forges a log line or repaints a terminal."""
from __future__ import annotations

import importlib
import logging
import pkgutil

import bridge
from bridge import logs


def test_control_characters_in_a_message_are_escaped(caplog):
    log = logs.get("bridge.test-logs")
    call_id = "123\n2026-12-08 00:00:00 INFO bridge: agent 1001 signed out"
    with caplog.at_level(logging.INFO, logger="bridge.test-logs"):
        log.info("call %s from %s", call_id, "\x1b[2J\u2028\x85")
    (record,) = caplog.records
    assert record.getMessage() == ("call 123\\x0a2026-12-08 00:00:00 INFO bridge: agent 1001 signed out "
                                   "from \\x1b[2J\\u2028\\x85")
    assert "\n" not in caplog.text.rstrip("\n")


def test_plain_messages_pass_unchanged(caplog):
    log = logs.get("bridge.test-logs")
    with caplog.at_level(logging.INFO, logger="bridge.test-logs"):
        log.info("agent %s signed in on extension %s", "1001", "71001")
    assert caplog.records[0].getMessage() == "agent 1001 signed in on extension 71001"
    assert caplog.records[0].args == ("1001", "71001")  # untouched


def test_every_logger_of_the_bridge_escapes():
    for module in pkgutil.walk_packages(bridge.__path__, "bridge."):
        importlib.import_module(module.name)
    loggers = {name: logger for name, logger in logging.Logger.manager.loggerDict.items()
               if (name == "bridge" or name.startswith("bridge.")) and name != "bridge.client"
               and isinstance(logger, logging.Logger) and not name.startswith("bridge.test")}
    assert {"bridge", "bridge.rpc", "bridge.ws", "bridge.sessions", "bridge.records"} <= set(loggers)
    assert [name for name, logger in loggers.items() if logs.ESCAPE_CONTROLS not in logger.filters] == []
