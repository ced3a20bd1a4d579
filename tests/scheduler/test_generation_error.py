"""What a client reads when its shard call failed: TGI's "Server error: " + the shard's own message, never the
transport's words or a path on the router's machine (issue 16, finding 4)."""

from __future__ import annotations

import grpc
import pytest

from tgi_async.api.errors import error_message
from tgi_async.client.shard_client import ShardError
from tgi_async.scheduler.steps import generation_error

SOCKET = "unix:/tmp/tgia-x1y2/shard-0"


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (
            grpc.StatusCode.INTERNAL,
            "request 4: temperature must be > 0, got inf",
            "Request failed during generation: Server error: request 4: temperature must be > 0, got inf",
        ),
        (
            grpc.StatusCode.INTERNAL,
            "FileNotFoundError: /root/.cache/hub/model/weights.safetensors (3/4 shards)",
            "Request failed during generation: Server error: FileNotFoundError: <path> (3/4 shards)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            f"failed to connect to all addresses; last error: UNKNOWN: {SOCKET}: connect failed",
            "Request failed during generation: Server error: the model shard is unavailable",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "Socket closed",
            "Request failed during generation: Server error: the model shard is unavailable",
        ),
        (
            grpc.StatusCode.UNKNOWN,
            "Stream removed (recvmsg:Connection reset by peer (104))",
            "Request failed during generation: Server error: the model shard failed",
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            "Request failed during generation: Server error: the model shard did not answer in time",
        ),
    ],
)
def test_the_client_reads_the_shards_message_without_paths(
    code: grpc.StatusCode, details: str, expected: str
) -> None:
    error = generation_error(ShardError("Decode", code, details))
    assert error.error_type == "generation"
    assert error_message(error) == expected
