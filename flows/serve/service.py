"""One service: the holder of the current version, the follower that swaps versions in, and its metrics."""

from __future__ import annotations

import threading
from functools import partial

from flows.serve.metrics import ServeMetrics
from flows.serve.settings import ServeSettings
from pipeline.serving.follower import AliasFollower
from pipeline.serving.holder import VersionHolder
from pipeline.serving.loading import load_version
from pipeline.storage import layout
from pipeline.storage.backend import Storage


class SearchService:
    def __init__(self, settings: ServeSettings) -> None:
        layout.alias_key(settings.index, settings.alias)  # refuses unsafe names before anything starts
        self.settings = settings
        self.storage = Storage(settings.root)
        self.holder = VersionHolder()
        self.metrics = ServeMetrics(settings.index, settings.alias)
        self.search_lock = threading.Lock()
        loader = partial(load_version, self.storage, settings.index, search_lock=self.search_lock,
                         settings=settings.load, on_pass=self.metrics.queries_per_pass.observe)
        self.follower = AliasFollower(self.storage, settings.index, settings.alias, self.holder, loader,
                                      self.metrics, settings.poll_interval_s,
                                      release_warn_s=max(60.0, 3 * settings.request_timeout_s))

    def start(self) -> None:
        """Follow the alias in the background: the first version loads while the server already answers
        /health (and /ready says not yet)."""
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
