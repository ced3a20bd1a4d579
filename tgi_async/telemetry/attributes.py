"""Span and attribute names: the one documented namespace (`tgi_async.*`), listed in docs/tracing.md.

Span names follow TGI's where TGI has the span (route spans, `validate`, `queued`, `infer`, `batch`,
`prefill`, `decode`, `filter_batch`, the shard's `/generate.v3.TextGenerationService/<Method>`); the
scheduler's own decisions add `admit` and the events `defer`, `chunk`, `merge`, `reject`, `drain`, `isolate`.
"""

from __future__ import annotations

# -- span names --------------------------------------------------------------------------------------------
SPAN_VALIDATE = "validate"
SPAN_QUEUED = "queued"
SPAN_INFER = "infer"
SPAN_BATCH = "batch"
SPAN_ADMIT = "admit"
SPAN_FILTER = "filter_batch"
SPAN_GENERATE_TOKEN = "generate_token"  # shard: one model step (TGI's shard has the same name)
SPAN_CONCATENATE = "concatenate"  # shard: batches merged before the step

# -- event names -------------------------------------------------------------------------------------------
EVENT_DEFER = "defer"
EVENT_CHUNK = "chunk"
EVENT_MERGE = "merge"
EVENT_REJECT = "reject"
EVENT_DRAIN = "drain"
EVENT_FIRST_TOKEN = "first_token"
EVENT_ISOLATE = "isolate"  # a failed Prefill's requests tried again apart, or the one found failing alone
# on a request's `infer`, one per link to a step / filter span, so a backend that ignores links (Phoenix)
# still shows, in the request's own trace, what decided its fate and where that span is (linked.*_id)
EVENT_ADMITTED = "admitted"  # the admission decision's attributes (those of `admit`)
EVENT_MERGED = "merged"  # its batch joined another at this step
EVENT_FINISHED = "finished"  # the step that gave its last token
EVENT_FILTERED = "filtered"  # taken out of its batch while it was still running (client left, length limit)

# -- attributes --------------------------------------------------------------------------------------------
NS = "tgi_async."

# a request (queued / infer spans)
REQUEST_ID = NS + "request.id"  # the scheduler's request id (also in batch.request_ids)
REQUEST_INPUT_TOKENS = NS + "request.input_tokens"
REQUEST_MAX_NEW_TOKENS = NS + "request.max_new_tokens"
REQUEST_GENERATED_TOKENS = NS + "request.generated_tokens"
REQUEST_FINISH_REASON = NS + "request.finish_reason"
REQUEST_OUTCOME = NS + "request.outcome"  # finished | failed | cancelled | dropped
REQUEST_BATCH_ID = NS + "request.batch_id"  # the batch it was admitted in
REQUEST_CACHED_TOKENS = NS + "request.cached_tokens"  # prompt tokens a cached prefix held (not computed)

# isolation of a failed Prefill's requests (`isolate` event on each request's infer span)
ISOLATE_ACTION = NS + "isolate.action"  # retry (prefilled again in a smaller batch) | fail (it failed alone)
ISOLATE_LEVEL = NS + "isolate.level"  # bisection depth of the retry (1: halves of the batch that failed)
ISOLATE_FAILED_BATCH_ID = NS + "isolate.failed_batch_id"  # the batch whose Prefill failed
QUEUE_SIZE = NS + "queue.size"  # requests waiting, after this decision

# admission (admit span) and deferral (defer events on the waiting request's queued span)
ADMIT_REQUEST_IDS = NS + "admit.request_ids"
ADMIT_COUNT = NS + "admit.count"
ADMIT_DROPPED_IDS = NS + "admit.dropped_ids"  # cancelled while queued: left without a prefill
ADMIT_PREFILL_TOKENS = NS + "admit.prefill_tokens"
ADMIT_DECODE_TOKENS = NS + "admit.decode_tokens"
ADMIT_MAX_BLOCKS = NS + "admit.max_blocks"
ADMIT_CACHED_TOKENS = NS + "admit.cached_tokens"  # prompt tokens reused from the prefix cache, all requests
DEFER_REASON = NS + "defer.reason"  # prefill_budget | token_budget | blocks | max_size | min_size
DEFER_COUNT = NS + "defer.count"  # admission rounds that left this request waiting
BUDGET_PREFILL_TOKENS = NS + "budget.prefill_tokens"
BUDGET_TOTAL_TOKENS = NS + "budget.total_tokens"
BUDGET_MIN_SIZE = NS + "budget.min_size"  # -1: none
BUDGET_MAX_SIZE = NS + "budget.max_size"  # -1: none
BUDGET_PREFILL_TOKENS_LEFT = NS + "budget.prefill_tokens_left"
BUDGET_TOTAL_TOKENS_LEFT = NS + "budget.total_tokens_left"
BLOCKS_FREE_BEFORE = NS + "blocks.free_before"
BLOCKS_FREE_AFTER = NS + "blocks.free_after"
CHUNK_REQUEST_ID = NS + "chunk.request_id"
LINKED_TRACE_ID = NS + "linked.trace_id"  # on infer's events: the trace of the step / filter span (hex)
LINKED_SPAN_ID = NS + "linked.span_id"  # ...and that span's id (hex)
CHUNK_TOKENS = NS + "chunk.tokens"  # prompt tokens computed at this step
CHUNK_TOKENS_LEFT = NS + "chunk.tokens_left"  # prompt tokens still to compute after it

# a shard step (batch span and its prefill / decode child)
STEP_METHOD = NS + "step.method"  # prefill | decode
STEP_SEQ = NS + "step.seq"  # step number in this router, from 0
STEP_PREFILL_TOKENS = NS + "step.prefill_tokens"
STEP_DECODE_TOKENS = NS + "step.decode_tokens"
STEP_CALLS_IN_FLIGHT = NS + "step.calls_in_flight"  # shard steps sent and unanswered, this one included
STEP_GENERATIONS = NS + "step.generations"
STEP_FINISHED_IDS = NS + "step.finished_ids"
STEP_WALL_NS = NS + "step.wall_ns"  # router: call sent -> answer received
BATCH_ID = NS + "batch.id"
BATCH_IDS = NS + "batch.ids"  # every batch in the call (Decode([a, b]) merges into a)
BATCH_SIZE = NS + "batch.size"
BATCH_REQUEST_IDS = NS + "batch.request_ids"
BATCH_MAX_TOKENS = NS + "batch.max_tokens"
TGI_BATCH_SIZE = "batch_size"  # TGI's field on its `batch` span, kept for existing queries
SHARD_FORWARD_NS = NS + "shard.forward_ns"
SHARD_DECODE_NS = NS + "shard.decode_ns"
SHARD_TOTAL_NS = NS + "shard.total_ns"
SHARD_CONCAT_NS = NS + "shard.concat_ns"
SHARD_WAIT_NS = NS + "shard.wait_ns"  # shard: the call waited this long behind other calls
# bundled shard, measured on its model thread (every call run there): waited for it, then ran this long
SHARD_MODEL_WAIT_NS = NS + "shard.model_thread.wait_ns"
SHARD_MODEL_RUN_NS = NS + "shard.model_thread.run_ns"
MERGE_BATCH_IDS = NS + "merge.batch_ids"
MERGE_REQUEST_COUNT = NS + "merge.request_count"

# filtering (filter_batch span, drain events)
FILTER_KEPT = NS + "filter.kept"
FILTER_REMOVED_IDS = NS + "filter.removed_ids"
FILTER_FINISHED_IDS = NS + "filter.finished_ids"
FILTER_DISCONNECTED_IDS = NS + "filter.disconnected_ids"
FILTER_LENGTH_LIMIT_IDS = NS + "filter.length_limit_ids"  # reached max_new_tokens with no end reported
FILTER_FAILED_IDS = NS + "filter.failed_ids"
FILTER_REASON = NS + "filter.reason"  # async decode plan: length_limit | finished | all_finished
FILTER_CLEARED = NS + "filter.cleared"  # nothing kept: ClearCache instead of FilterBatch
FILTER_DRAINED_CALLS = NS + "filter.drained_calls"  # in-flight calls awaited before filtering

# on the route span's link to the client's span (--otlp-client-context link)
LINK_KIND = NS + "link.kind"

# rejection (reject event on the route span)
REJECT_REASON = NS + "reject.reason"
REJECT_IN_FLIGHT = NS + "reject.in_flight"
REJECT_LIMIT = NS + "reject.max_concurrent_requests"

# route spans (from TGI's x-* response headers)
HTTP_TIMINGS = {
    "x-total-time": NS + "request.total_time_ms",
    "x-validation-time": NS + "request.validation_time_ms",
    "x-queue-time": NS + "request.queue_time_ms",
    "x-inference-time": NS + "request.inference_time_ms",
    "x-time-per-token": NS + "request.time_per_token_ms",
    "x-prompt-tokens": NS + "request.prompt_tokens",
    "x-generated-tokens": NS + "request.generated_tokens",
}
