"""Process-wide logging: one line per event; JSON lines with `--json-output`, shaped like TGI's."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

# LogRecord attributes that are not user fields
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """{"timestamp", "level", "message", "target", "fields": {...extra}} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        line = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "message": record.getMessage(),
            "target": record.name,
            "filename": record.filename,
            "line_number": record.lineno,
        }
        if fields:
            line["fields"] = fields
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL target: message key=value ...` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED)
        stamp = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = f"{stamp} {record.levelname:>5} {record.name}: {record.getMessage()}"
        if fields:
            text += f" {fields}"
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return text


def setup_logging(json_output: bool = False, level: str = "INFO") -> None:
    """Configure the root logger for this process (idempotent). Use `extra={...}` for structured fields."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
