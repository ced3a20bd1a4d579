"""A stand-in for TGI's `text-generation-server` and helpers to run `tgi-async launch` as a real process.

The stand-in (a shell script, via TGI_SHARD_BIN) records what the launcher gives it, so the TGI-shard path
runs without TGI and starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

FAKE_SHARD = """#!/bin/bash
echo "$*" >> "$FAKE_RECORD/argv"
if [ "$1" = "download-weights" ]; then
  echo '{"text": "weights ready", "record": {"level": {"name": "INFO"}}}'
  exit 0
fi
env > "$FAKE_RECORD/env-$RANK"
echo $$ > "$FAKE_RECORD/pid-$RANK"
echo "fake shard $RANK starting"
if [ -n "$FAKE_FAIL" ]; then echo "fake shard boom"; exit 3; fi
trap 'echo "fake shard $RANK got TERM"; exit 0' TERM
while true; do sleep 0.05; done
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tgi_async.cli", "launch", *args]


def fake_tgi_env(tmp_path: Path) -> dict[str, str]:
    """Env making `--shard tgi` run the stand-in, with a local model dir (no Hub access)."""
    script = tmp_path / "text-generation-server"
    script.write_text(FAKE_SHARD)
    script.chmod(0o755)
    record = tmp_path / "record"
    record.mkdir()
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 2048}))
    env = {**os.environ, "TGI_SHARD_BIN": str(script), "FAKE_RECORD": str(record), "MODEL_ID": str(model)}
    for name in ("LOG_LEVEL", "ATTENTION", "PREFIX_CACHING", "PORT", "HOSTNAME", "NUM_SHARD"):
        env.pop(name, None)
    return env


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # NOTE: the command name (2nd field) may hold spaces; the fields after its ')' are fixed
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
