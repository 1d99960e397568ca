"""Models: the Encoder protocol and its families, model cards and offline sources, batching, the embedding cache."""
