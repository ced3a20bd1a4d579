"""The bundled shard: generate.v3 over gRPC, a transformers model driven step by step on a paged KV cache.

cli.py             `tgi-async shard serve MODEL_ID`: flags and entry point
server.py          the grpc.aio service (one model worker thread, batches cached by id)
call_order.py      starts a router's numbered calls in the order it sent them
batch.py           per-request state and batch operations (from_pb, concatenate, filter, to_cached_batch)
engine.py          model loading, warmup and one step (forward, sample, stop, detokenize)
generations.py     pb.Generation messages from a step's results
attention.py       packed-batch paged attention registered with transformers' AttentionInterface
decode_context.py  decoding requests' dense context, kept between CPU decode steps
kv_cache.py        the slot-addressed KV tensors and their sizing
sampling.py        token choice with TGI's next-token-chooser semantics (logits_process.py: the transforms)
stopping.py        when a request stops, and why
detokenize.py      incremental text, never half a character
"""
