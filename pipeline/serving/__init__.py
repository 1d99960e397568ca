"""Serving an alias: load a version in the background, check it, warm it up, swap it in by one reference
assignment, release the old one; answer searches with whatever version is current when a request starts.
Engine-free and HTTP-free: flows/serve/ puts these behind FastAPI."""
