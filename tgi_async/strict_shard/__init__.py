"""A strict TGI-semantics shard without a model: `tgi-async shard serve MODEL_ID --simulate PROFILE`.

It speaks generate.v3 like TGI v3.3.7's `text-generation-server` and reproduces what a router can observe of
it (docs/strict-shard.md lists each behaviour with the TGI source it follows), checks what TGI's shards leave
unchecked, and fails like they do when a router gets it wrong. Tokens come from a deterministic stream per
prompt; step durations from a cost profile. Every figure measured on it is SIMULATED.

profile.py   cost and memory profiles (profiles/*.json, each citing its sources)
tokens.py    the token stream: ids, texts, EOS and speculative acceptance, a function of the prompt alone
kv.py        the KV ledger: every write checked against the slots the router allocated; prefix contents
batch.py     requests and batches with flash (blocks, slots, chunking, speculation) or padded semantics
shard.py     the RPCs' semantics on those batches (Warmup, Prefill, Decode, FilterBatch, ClearCache, ...)
executor.py  one call at a time, in arrival order (or shuffled), timed by the profile; injected faults
server.py    the grpc.aio service around them
"""
