"""Ray Serve: ModelServer (/v1/predict, in-place swaps) and Gateway (ingest, ops API, metrics)."""
