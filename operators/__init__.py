"""Ray adapters around `pipeline`: actors that hold a model, resource requests, failure mapping."""
