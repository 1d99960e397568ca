"""`embedpipe serve`: the live alias behind HTTP (FastAPI on uvicorn). The logic that follows the alias, loads,
checks, swaps and releases versions is engine-free and HTTP-free, in pipeline/serving/; this package adds the
endpoints, the page, the metrics, authentication and limits."""
