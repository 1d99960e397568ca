"""A document's content hash decides whether an incremental run redoes it: it must change with any edit of its
id, title or text, and stay what earlier versions recorded."""

import polars as pl

from pipeline.corpus.delta import CorpusFingerprint, content_hash, content_hashes


def test_hashes_recorded_by_earlier_versions_stay_valid():
    # sha256 of "d1\0T\0body", as every version so far recorded it: a changed scheme would redo every document
    assert content_hash("d1", "T", "body") == "bd288834aa6251a5c8b4f2d2b73387538a93823f936fecb9a90e79e52d9c0627"


def test_a_nul_moved_between_title_and_text_is_a_change():
    """Joined by NULs, ("T\\0x", "body") and ("T", "x\\0body") were one hash: the edit was taken as unchanged, and
    the kept chunks held the old text."""
    docs = pl.DataFrame({"doc_id": ["d", "d", "d\x00T", "d"], "title": ["T\x00x", "T", "", "T"],
                         "text": ["body", "x\x00body", "body", "\x00body"]})
    hashes = content_hashes(docs).to_list()
    assert len(set(hashes)) == 4  # the last two: the id holding the NUL, or the text
    first, second = CorpusFingerprint(), CorpusFingerprint()
    first.update(pl.Series(hashes[:1]))
    second.update(pl.Series(hashes[1:2]))
    assert first.hexdigest() != second.hexdigest()
