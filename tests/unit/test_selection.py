"""A backfill's --where filter over the corpus' metadata, batch by batch: the answer may not depend on how the
documents fell into batches."""

import polars as pl
import pytest

from pipeline.corpus.delta import Selection
from pipeline.errors import SelectionError


def batch(**columns) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    return pl.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "shard": [0] * n, **columns})


@pytest.mark.parametrize("where", ["published LIKE '2024%'", "published >= '2024-01-01'", "year >= 2021",
                                   "published IS NULL"])
def test_a_batch_where_no_document_has_the_field_is_filtered_as_the_others(where):
    """Such a batch holds the field as Null, which LIKE refused: the backfill failed or not by how the corpus
    was batched."""
    selection = Selection(where=where)
    empty = batch(published=[None, None], year=[None, None])
    assert empty.schema["published"] == pl.Null
    assert selection.mask(empty).to_list() == [where.endswith("IS NULL")] * 2
    full = batch(published=["2024-02-01", "2023-05-01"], year=[2024, 2020])
    assert selection.mask(full).to_list() == {"published LIKE '2024%'": [True, False],
                                              "published >= '2024-01-01'": [True, False],
                                              "year >= 2021": [True, False], "published IS NULL": [False, False]}[where]


def test_a_field_of_another_type_in_some_batch_is_named_with_its_type():
    with pytest.raises(SelectionError, match=r"filter 'year >= 2021' does not apply to the corpus \(its metadata "
                                             r"fields: year \(String\); add .*each of one type\)"):
        Selection(where="year >= 2021").mask(batch(year=["2020", "2022"]))
    # the pipeline's own columns are not the filter's: named as unknown, not offered
    with pytest.raises(SelectionError, match=r"\(its metadata fields: year \(Int64\); add") as refused:
        Selection(where="title LIKE '%statin%'").mask(batch(year=[2020], title=["Statins"]))
    assert "title" not in str(refused.value).partition("its metadata fields:")[2].partition("; add")[0]
