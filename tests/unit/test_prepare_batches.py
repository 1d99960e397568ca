"""A shard takes its documents parts (a part per read piece and batch) in input order, consecutive small ones
together (pipeline/jobs/prepare.py): a corpus of many small files must not cost a round of work per file."""

import polars as pl

from pipeline.jobs.prepare import _docs_batches
from pipeline.storage.backend import Storage
from pipeline.storage.layout import shard_key
from pipeline.storage.tables import write_parquet


def test_consecutive_parts_are_taken_together_up_to_the_batch_size_in_input_order(tmp_path):
    storage = Storage(str(tmp_path))
    sizes = {"000000-00000.parquet": 3, "000001-00000.parquet": 4, "000002-00000.parquet": 5, "000003-00000.parquet": 9}
    start = 0
    for name, n in sizes.items():
        write_parquet(storage, shard_key("r", 0, f"docs/{name}"),
                      pl.DataFrame({"doc_id": [f"d{i}" for i in range(start, start + n)]}))
        start += n
    batches = list(_docs_batches(storage, "r", 0, rows=8))
    assert [(name, docs.height) for name, docs in batches] == [
        ("000000-00000.parquet", 7), ("000002-00000.parquet", 5), ("000003-00000.parquet", 9)]  # one part may exceed
    assert pl.concat([docs for _, docs in batches])["doc_id"].to_list() == [f"d{i}" for i in range(start)]
