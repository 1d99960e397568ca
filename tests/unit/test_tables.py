"""Tables on storage: a vector column is stored as bytes (fast to decode) and read back as the same float32
vectors, whatever wrote the file."""

import io

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.errors import StorageError
from pipeline.storage.tables import VECTOR_DIMS_KEY, parquet_bytes, table_of


def vectors_table(n: int, dims: int = 8) -> pl.DataFrame:
    values = np.random.default_rng(n).standard_normal((n, dims)).astype(np.float32)
    return pl.DataFrame({"chunk_hash": [f"h{i}" for i in range(n)]}, schema={"chunk_hash": pl.String}).with_columns(
        pl.Series("vector", values, dtype=pl.Array(pl.Float32, dims)))


@pytest.mark.parametrize("rows", [0, 1, 500])
def test_vectors_are_stored_as_bytes_and_read_back_exactly(rows):
    table = vectors_table(rows)
    data = parquet_bytes(table, {"embedpipe.model_card": "{}"})
    stored = pq.ParquetFile(io.BytesIO(data))
    assert "binary" in str(stored.schema_arrow.field("vector").type)
    assert stored.metadata.metadata[VECTOR_DIMS_KEY.encode()] == b"8"
    assert all(stored.metadata.row_group(g).column(1).compression.startswith("LZ4")
               for g in range(stored.metadata.num_row_groups))
    assert stored.metadata.metadata[b"embedpipe.model_card"] == b"{}"  # the caller's footer kept beside it
    back = table_of(data)
    assert back.schema == table.schema and back.equals(table)
    assert table_of(data, ["chunk_hash"]).columns == ["chunk_hash"]


def test_a_table_written_with_vectors_as_arrays_still_reads():
    table, old = vectors_table(20), io.BytesIO()
    table.write_parquet(old, compression="zstd")  # as every file was written before vectors went as bytes
    assert table_of(old.getvalue()).equals(table)


def test_a_vector_of_the_wrong_length_is_a_damaged_file_not_a_silent_null():
    data = parquet_bytes(vectors_table(3))
    stored = pl.read_parquet(io.BytesIO(data))
    cut = stored.with_columns(pl.Series("vector", [v[:-4] if i == 1 else v for i, v in enumerate(stored["vector"])]))
    buf = io.BytesIO()
    cut.write_parquet(buf, metadata={VECTOR_DIMS_KEY: "8"})
    with pytest.raises(StorageError, match=r"cache/b0-4/x.parquet: 1 of its 3 vectors are not 8 float32 \(32 bytes\)"):
        table_of(buf.getvalue(), name="cache/b0-4/x.parquet")
