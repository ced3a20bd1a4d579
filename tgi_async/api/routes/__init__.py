"""HTTP routes: thin handlers over `tgi_async.api.generation` / `serving` (one router per module)."""
