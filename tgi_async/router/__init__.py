"""The router process: flags like TGI's `text-generation-router`, start-up (shards, warmup), HTTP serving."""
