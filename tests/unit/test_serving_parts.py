"""The serving parts that need no model, storage or server: the holder's swap and timeline, settings, the page."""

from __future__ import annotations

import gc
import platform
import time

from flows.serve.page import render_page
from flows.serve.settings import ServeSettings
from pipeline.serving.holder import VersionHolder
from pipeline.serving.memory import return_freed_memory
from pipeline.serving.query import Limits


class Version:  # what the holder needs of a ServingVersion
    def __init__(self, version: str) -> None:
        self.version = version


def test_a_swap_is_one_assignment_and_the_holder_keeps_no_old_version():
    holder = VersionHolder()
    assert holder.current is None and holder.swap(Version("a")) is None
    held = holder.current  # a request in flight
    released = holder.swap(Version("b"))
    assert holder.current.version == "b" and released() is held  # alive while the request holds it
    del held
    gc.collect()
    assert released() is None
    spans = holder.timeline()
    assert [s["version"] for s in spans] == ["a", "b"] and spans[1]["until"] is None
    assert spans[0]["since"] <= spans[0]["until"] and spans[1]["since"] <= spans[0]["until"] <= time.time()


def test_settings_keep_the_token_out_of_their_repr_and_know_loopback():
    settings = ServeSettings(root="r", index="i", token="secret-token-1")
    assert "secret-token-1" not in repr(settings) and settings.loopback
    assert ServeSettings(root="r", index="i", host="::1").loopback
    assert ServeSettings(root="r", index="i", host="localhost").loopback
    assert not ServeSettings(root="r", index="i", host="0.0.0.0").loopback


def test_the_page_escapes_what_it_shows():
    page = render_page('<i>dx</i>', "live", 'v"1', ["exact", "<b>m</b>"], "exact",
                       Limits(max_k=50, max_query_chars=900), True, "n0nce")
    assert "<i>dx</i>" not in page and "&lt;i&gt;dx&lt;/i&gt;" in page and "&lt;b&gt;m&lt;/b&gt;" in page
    assert '<code id="version">v&quot;1</code>' in page and '<option value="exact" selected>' in page
    assert 'id="token"' in page and 'max="50"' in page and 'maxlength="900"' in page
    assert '<script nonce="n0nce">' in page and "const $ = (id)" in page
    assert "none yet" in render_page("i", "live", None, [], None, Limits(max_k=10, max_query_chars=10), False, "n")


def test_freed_memory_goes_back_on_glibc():
    assert return_freed_memory() is (platform.libc_ver()[0] == "glibc")
