import polars as pl
import pytest

from pipeline.chunking import Chunker, document_text
from pipeline.config import ChunkingConfig
from pipeline.errors import ConfigError


def make(tokenizer, **kw) -> Chunker:
    return Chunker(tokenizer, ChunkingConfig(**kw), model_max_tokens=256)


def test_offsets_give_back_each_chunk_and_windows_fit_the_model(tokenizer, sample_docs):
    chunker = make(tokenizer, max_tokens=64, overlap=16)
    docs = pl.DataFrame([{k: d[k] for k in ("_id", "title", "text")} for d in sample_docs[:40]]).rename(
        {"_id": "doc_id"})
    chunks = chunker.chunk(docs)
    full = {d: document_text(t, x) for d, t, x in docs.iter_rows()}
    assert chunks.height > docs.height  # 64-token windows split most abstracts
    for row in chunks.iter_rows(named=True):
        assert full[row["doc_id"]][row["start"]:row["end"]] == row["text"]
        assert len(tokenizer(row["text"])["input_ids"]) <= 64  # special tokens included
    # every document is covered from its first to its last character
    for doc_id, part in chunks.group_by("doc_id"):
        assert part["start"].min() == 0 and part["end"].max() == len(full[doc_id[0]].rstrip())


def test_consecutive_chunks_overlap_and_do_not_split_words(tokenizer, sample_docs):
    text = document_text(sample_docs[0]["title"], sample_docs[0]["text"])
    spans = make(tokenizer, max_tokens=48, overlap=12).spans(text)
    assert len(spans) >= 3
    for (_s1, e1, _), (s2, _e2, _) in zip(spans, spans[1:], strict=False):
        assert s2 < e1  # overlap
        assert not (text[s2 - 1].isalnum() and text[s2].isalnum())  # never starts inside a word


def test_none_mode_keeps_whole_document(tokenizer):
    text = "word " * 400
    chunker = make(tokenizer, mode="none")
    (start, end, n_tokens), = chunker.spans(text)
    assert (start, end) == (0, len(text)) and n_tokens == 400 and n_tokens > chunker.token_budget()


def test_chunk_hash_depends_on_text_and_params(tokenizer):
    a, b = make(tokenizer, max_tokens=64, overlap=16), make(tokenizer, max_tokens=64, overlap=8)
    assert a.chunk_hash("x") == make(tokenizer, max_tokens=64, overlap=16).chunk_hash("x")
    assert a.chunk_hash("x") != a.chunk_hash("y") and a.chunk_hash("x") != b.chunk_hash("x")


def test_window_larger_than_model_fails(tokenizer):
    with pytest.raises(ConfigError, match=r"chunking.max_tokens \(512\) exceeds the model's limit \(256\)"):
        make(tokenizer, max_tokens=512, overlap=0)


def test_sentencepiece_tokenizer_without_word_ids_still_gets_full_windows_at_word_starts(sample_docs):
    """wordllama's tokenizer gives every token the same word id; windows must still advance by about
    max_tokens - overlap (they once advanced one token at a time: 84,420 chunks from 500 abstracts)."""
    from pipeline.config import ModelConfig
    from pipeline.encoder import tokenizer_for

    tokenizer, limit = tokenizer_for(ModelConfig(name="wordllama-l2-supercat", package="wordllama"))
    chunker = Chunker(tokenizer, ChunkingConfig(max_tokens=64, overlap=8), model_max_tokens=limit)
    text = document_text(sample_docs[0]["title"], sample_docs[0]["text"])
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    spans = chunker.spans(text)
    window = chunker.token_budget()
    assert len(spans) <= -(-(n - 8) // (window // 2 - 8)) and len(spans) >= -(-(n - 8) // (window - 8))
    for (_, b, _), (c, _, _) in zip(spans, spans[1:], strict=False):
        assert c < b  # consecutive windows overlap, and each starts at a word (its piece carries the space)
        assert text[c].isspace() or text[c - 1].isspace()
