"""TGI's HTTP API (FastAPI): request models, validation, admission, SSE, routes. Knows nothing of batches."""
