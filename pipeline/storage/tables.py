"""Parquet tables as bytes on any storage: the one place tables are (de)serialised."""

from __future__ import annotations

import io

import polars as pl

from pipeline.storage.backend import Storage


def parquet_bytes(df: pl.DataFrame, metadata: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False, metadata=metadata)
    return buf.getvalue()


def read_parquet(storage: Storage, key: str, columns: list[str] | None = None) -> pl.DataFrame:
    """The table at `key`; only `columns` are decoded where given (a vector column costs most of a part's reading)."""
    return pl.read_parquet(io.BytesIO(storage.read_bytes(key)), columns=columns)


def write_parquet(storage: Storage, key: str, df: pl.DataFrame, metadata: dict[str, str] | None = None) -> None:
    storage.write_bytes(key, parquet_bytes(df, metadata))
