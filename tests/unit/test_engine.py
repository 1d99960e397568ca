"""Where a build's embedding runs: in the flow's process for a small delta, on Ray actors otherwise, and always on
the actors when they hold GPUs this process lacks."""

import torch

from flows.engine import embedder_for, gpus_elsewhere
from operators.embedding import RayEmbedder
from pipeline.config import PipelineConfig
from pipeline.jobs.embedder import LocalEmbedder
from pipeline.storage.backend import Storage
from tests.conftest import SAMPLE


def test_a_small_delta_stays_here_unless_the_actors_have_gpus_this_process_lacks(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    cfg = PipelineConfig.model_validate({"index_name": "x", "corpus": {"source": str(SAMPLE)},
                                         "model": {"name": "wordllama-l2-supercat", "package": "wordllama"},
                                         "run": {"local_embed_max_chunks": 256}})
    assert isinstance(embedder_for(cfg, storage, 10, None), LocalEmbedder)
    assert isinstance(embedder_for(cfg, storage, 257, None), RayEmbedder)
    gpu_actors = cfg.model_copy(update={"run": cfg.run.model_copy(update={"gpus_per_actor": 1})})
    # a GPU's half precision would run here under CPU autocast, several times slower than fp32
    assert gpus_elsewhere(gpu_actors) == (not torch.cuda.is_available())
    expected = LocalEmbedder if torch.cuda.is_available() else RayEmbedder
    assert isinstance(embedder_for(gpu_actors, storage, 10, None), expected)
