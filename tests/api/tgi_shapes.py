"""JSON shapes of TGI's responses that several tests pin."""

# /info's keys in TGI's order (serde serializes struct fields in declaration order)
INFO_KEYS = [
    "model_id",
    "model_sha",
    "model_pipeline_tag",
    "max_concurrent_requests",
    "max_best_of",
    "max_stop_sequences",
    "max_input_tokens",
    "max_total_tokens",
    "validation_workers",
    "max_client_batch_size",
    "router",
    "version",
    "sha",
    "docker_label",
]
