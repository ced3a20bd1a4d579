"""The strict shard's token stream: a function of the prompt and the position alone.

So a request gets the same tokens alone or in any batch, in any order of calls (batch == solo holds exactly),
and a token given to the wrong request or out of order shows: the g-th generated token has id
`TOKEN_ID_BASE + g` and text ` <tag>:<g>` (the tag names the prompt). EOS and speculative acceptance are
seeded draws of the same inputs.
"""

from __future__ import annotations

import hashlib
import struct

TOKEN_ID_BASE = 10_000  # generated ids never collide with a tokenizer's special ids
_MOD = (1 << 61) - 1  # rolling hash of KV contents (kv.py)


def prompt_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def tag(key: bytes) -> str:
    return key.hex()[:4]


def token_id(g: int) -> int:
    """The id of the g-th generated token (1-based)."""
    return TOKEN_ID_BASE + g


def token_text(key: bytes, g: int) -> str:
    return f" {tag(key)}:{g}"


def _draw(key: bytes, g: int, seed: int, salt: bytes) -> float:
    digest = hashlib.blake2b(key + struct.pack("<qq", g, seed) + salt, digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def is_eos(key: bytes, g: int, seed: int, rate: float) -> bool:
    """Whether the g-th generated token is EOS."""
    return rate > 0 and _draw(key, g, seed, b"eos") < rate


def accepted(key: bytes, g: int, seed: int, speculate: int, rate: float) -> int:
    """Tokens a speculative decode step starting after the g-th token returns: 1 + accepted guesses."""
    n = 1
    while n <= speculate and _draw(key, g + n, seed, b"accept") < rate:
        n += 1
    return n


def extend_hash(previous: int, token: int) -> int:
    """The KV content hash at a position: all tokens up to it, in order (a rolling hash)."""
    return (previous * 1_000_003 + token + 1) % _MOD


def prefix_hashes(ids: list[int]) -> list[int]:
    hashes, h = [], 0
    for token in ids:
        h = extend_hash(h, token)
        hashes.append(h)
    return hashes
