"""The text a streaming client reads, and the invariant it relies on: joined, it is the final text.

TGI's `text_generation` client README builds the text as `text += token.text` for every token where
`not token.special`; OpenAI clients join `delta.content` (chat) or `text` (completions). Either way the result
must be the `generated_text` / message content / completion text of the same request without streaming.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any


def sse_data(body: str) -> list[Any]:
    """The JSON payloads of a server-sent-events body, in order (`[DONE]` left out)."""
    payloads = []
    for event in body.split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                payloads.append(json.loads(line[5:]))
    return payloads


def joined_tokens(tokens: Iterable[Mapping[str, Any]]) -> str:
    """What TGI's clients join from /generate_stream events (or /generate details): non-special texts."""
    return "".join(token["text"] for token in tokens if not token["special"])


def joined_chat(chunks: Iterable[Mapping[str, Any]]) -> str:
    """What OpenAI clients join from a chat stream: every chunk's `delta.content` (TGI blanks specials)."""
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])


def joined_completion(chunks: Iterable[Mapping[str, Any]], special_texts: Collection[str]) -> str:
    """A completions stream joined, less the chunks that are a special token's text.

    NOTE: TGI's /v1/completions stream carries every token's text, special ones included (an EOS chunk
    reads "</s>"), and has no `special` flag; so a chunk that is exactly a special token's text is one."""
    texts = (choice["text"] for chunk in chunks for choice in chunk["choices"])
    return "".join(text for text in texts if text not in special_texts)
