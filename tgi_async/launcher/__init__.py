"""Process management: spawn shards and the router, wait for readiness, stop them cleanly."""
