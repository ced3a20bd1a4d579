"""Process-wide logging on stdout, in the shape of the TGI process each of ours stands for.

- "router" (TGI's router: tracing_subscriber's fmt layer with file and line; `.json().flatten_event(true)`):
  text `2024-01-01T00:00:00.000000Z  INFO generate{a="1"}: target: file.py:12: message k=v`
  JSON `{"timestamp","level","message",...fields,"target","filename","line_number","span","spans"}`
- "launcher" (TGI's launcher: `fmt().compact()`; `fmt().json()`):
  text `2024-01-01T00:00:00.000000Z  INFO target: message k=v`
  JSON `{"timestamp","level","fields":{"message",...},"target","span","spans"}`
- "shard" (TGI's Python shard: loguru; `serialize=True` with --json-output): JSON `{"text","record":{...}}`,
  which the launcher reads and logs again as its own lines, as TGI's launcher does; text as "router".

Spans: a record logged with `extra={"spans": [LogSpan, ...]}` (root first) carries them as tracing does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone

# LogRecord attributes that are not user fields
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message", "spans"}
_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}  # tracing's names
_LOGURU_ICONS = {"DEBUG": "🐞", "INFO": "ℹ️", "WARNING": "⚠️", "ERROR": "❌", "CRITICAL": "☠️"}
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STARTED = datetime.now(timezone.utc)


class Debug(str):
    """A span field value recorded with Rust's `?` (printed bare in text); plain str values are quoted."""


@dataclass(slots=True)
class LogSpan:
    """A tracing span as logs show it: a name and its recorded fields (in recording order)."""

    name: str
    fields: dict[str, str] = field(default_factory=dict)

    def record(self, **values: str) -> None:
        self.fields.update(values)

    def as_json(self) -> dict[str, str]:
        # NOTE: tracing-subscriber keeps span fields in a serde_json map: sorted keys, then the name
        return {**dict(sorted(self.fields.items())), "name": self.name}

    def as_text(self) -> str:
        inner = " ".join(
            f"{k}={v if isinstance(v, Debug) else json.dumps(v, ensure_ascii=False)}"
            for k, v in self.fields.items()
        )
        return f"{self.name}{{{inner}}}" if inner else self.name


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _level(record: logging.LogRecord) -> str:
    return _LEVELS.get(record.levelname, record.levelname)


def _filename(record: logging.LogRecord) -> str:
    """The source path as tracing shows it: relative to the package root or to site-packages."""
    path = record.pathname
    if "site-packages" + os.sep in path:
        return path.rsplit("site-packages" + os.sep, 1)[1]
    return os.path.relpath(path, _PACKAGE_ROOT) if path.startswith(_PACKAGE_ROOT) else path


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


def _spans(record: logging.LogRecord) -> list[LogSpan]:
    return list(getattr(record, "spans", None) or ())


def _text_value(value: object) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


class TracingFormatter(logging.Formatter):
    """tracing_subscriber's fmt output; `style` "router" (full, file:line, flat JSON) or "launcher"
    (compact, JSON fields nested under "fields")."""

    def __init__(self, json_output: bool, style: str) -> None:
        super().__init__()
        self.json_output = json_output
        self.router = style != "launcher"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return self._json(record, message) if self.json_output else self._text(record, message)

    def _json(self, record: logging.LogRecord, message: str) -> str:
        line: dict[str, object] = {"timestamp": _timestamp(record), "level": _level(record)}
        event = {"message": message, **_fields(record)}
        if self.router:
            line.update(event)
        else:
            line["fields"] = event
        line["target"] = record.name
        if self.router:
            line["filename"] = _filename(record)
            line["line_number"] = record.lineno
        spans = _spans(record)
        if spans:
            line["span"] = spans[-1].as_json()
            line["spans"] = [span.as_json() for span in spans]
        return json.dumps(line, default=str, ensure_ascii=False)

    def _text(self, record: logging.LogRecord, message: str) -> str:
        spans = _spans(record)
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        text = f"{_timestamp(record)} {_level(record):>5} "
        if self.router:
            if spans:
                text += ":".join(span.as_text() for span in spans) + ": "
            text += f"{record.name}: {_filename(record)}:{record.lineno}: {message}"
            return text + (f" {fields}" if fields else "")
        if spans:
            text += ":".join(span.name for span in spans) + ": "
        text += f"{record.name}: {message}" + (f" {fields}" if fields else "")
        span_fields = [" ".join(f"{k}={v}" for k, v in s.fields.items()) for s in spans if s.fields]
        return text + "".join(f" {f}" for f in span_fields)


class LoguruJsonFormatter(logging.Formatter):
    """loguru's `serialize=True` line, as TGI's shard prints it with --json-output (format "{message}")."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        text = message + ("\n" + self.formatException(record.exc_info) if record.exc_info else "") + "\n"
        created = datetime.fromtimestamp(record.created, timezone.utc)
        elapsed = created - _STARTED
        loguru = {
            "elapsed": {"repr": str(elapsed), "seconds": elapsed.total_seconds()},
            "exception": None,
            "extra": _fields(record),
            "file": {"name": record.filename, "path": record.pathname},
            "function": record.funcName,
            "level": {
                "icon": _LOGURU_ICONS.get(record.levelname, ""),
                "name": record.levelname,
                "no": record.levelno,
            },
            "line": record.lineno,
            "message": message,
            "module": record.module,
            "name": record.name,
            "process": {"id": record.process, "name": record.processName},
            "thread": {"id": record.thread, "name": record.threadName},
            "time": {"repr": str(created), "timestamp": record.created},
        }
        return json.dumps({"text": text, "record": loguru}, default=str, ensure_ascii=False)


class _StdoutHandler(logging.StreamHandler):
    """Lines to stdout; a closed stdout (terminal gone, reader gone) drops lines instead of raising."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def setup_logging(json_output: bool = False, level: str = "INFO", style: str = "router") -> None:
    """Configure the root logger for this process (idempotent): `style` is "router", "launcher" or "shard".
    Use `extra={...}` for structured fields and `extra={"spans": [...]}` for spans."""
    handler = _StdoutHandler()
    if style == "shard" and json_output:
        handler.setFormatter(LoguruJsonFormatter())
    else:
        handler.setFormatter(TracingFormatter(json_output, "launcher" if style == "launcher" else "router"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
