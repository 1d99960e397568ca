"""A worker's start with the garbage collector paused (pipeline/startup.py): the collector is back afterwards, as the
caller had it, even when the block fails, and what the block loaded is kept out of later collections."""

from __future__ import annotations

import gc

import pytest

from pipeline.startup import collector_paused


@pytest.fixture(autouse=True)
def _unfrozen():
    yield
    gc.unfreeze()  # the rest of the suite collects as before
    gc.enable()


def test_the_collector_is_off_inside_and_back_after_with_what_was_loaded_frozen() -> None:
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
        loaded = [{"n": i} for i in range(1000)]  # stands in for a module's objects
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(loaded)


def test_a_failing_block_restores_the_collector_and_a_disabled_one_stays_off() -> None:
    gc.enable()
    with pytest.raises(ImportError), collector_paused():
        import pipeline_no_such_module  # noqa: F401
    assert gc.isenabled()
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()
