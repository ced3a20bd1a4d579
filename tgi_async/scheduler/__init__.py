"""Batching: admission queue, KV block accounting, policies (`sync` = TGI's loop, `async` = ours), loops."""
