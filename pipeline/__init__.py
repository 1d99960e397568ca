"""Engine-free core of embedpipe: everything here runs the same in a test, a Ray actor or a Prefect task.

This package must never import ray or prefect (tests/unit/test_layers.py keeps that true).
"""
