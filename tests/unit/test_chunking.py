import polars as pl
import pytest

from pipeline.config import ChunkingConfig
from pipeline.corpus.chunking import Chunker, document_text
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
        assert tokenizer.count(row["text"]) <= 64  # special tokens included
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


def _wordllama() -> tuple[object, int]:
    from pipeline.config import ModelConfig
    from pipeline.models.encoder import tokenizer_for

    return tokenizer_for(ModelConfig(name="wordllama-l2-supercat", package="wordllama"))


def _expected_chunks(n_tokens: int, window: int, overlap: int) -> int:
    return 1 if n_tokens <= window else -(-(n_tokens - overlap) // (window - overlap))


def test_sentencepiece_tokenizer_without_word_ids_gets_full_windows_at_word_starts(sample_docs):
    """wordllama's tokenizer gives every token the same word id; windows must still advance by about
    max_tokens - overlap (they once advanced one token at a time: 84,420 chunks from 500 abstracts)."""
    from pipeline.config import ModelConfig
    from pipeline.models.encoder import tokenizer_for

    tokenizer, limit = _wordllama()
    chunker = Chunker(tokenizer, ChunkingConfig(max_tokens=64, overlap=16), model_max_tokens=limit)
    window = chunker.token_budget()
    step = window - 16
    docs = pl.DataFrame([{k: d[k] for k in ("_id", "title", "text")} for d in sample_docs]).rename({"_id": "doc_id"})
    expected, advances = 0, []
    for doc_id, title, body in docs.iter_rows():
        text = document_text(title, body)
        enc = tokenizer.encoding(text)
        expected += _expected_chunks(len(enc.ids), window, 16)
        spans = chunker.spans(text)
        for i, (a, b, n_tok) in enumerate(spans):
            # a chunk fits the model as its own text, and starts at a word, not on the space before it
            assert tokenizer.count(text[a:b]) <= 64 and not text[a].isspace(), doc_id
            assert i == len(spans) - 1 or n_tok > window // 2  # cuts move back to a word start by less than half
        starts = [enc.char_to_token(a) for a, _, _ in spans]
        advances += [y - x for x, y in zip(starts, starts[1:], strict=False)]
        for (_, b, _), (c, _, _) in zip(spans, spans[1:], strict=False):
            assert c < b and text[c - 1].isspace()  # consecutive windows overlap; each starts at a word
    chunks = chunker.chunk(docs).height
    assert expected <= chunks <= 1.1 * expected  # 500 abstracts: ~4,650 chunks for ~4,480 plain windows
    assert 0.9 * step <= sum(advances) / len(advances) <= step
    # about as many chunks as MiniLM's tokenizer gives (wordllama's splits text into ~10% more tokens)
    minilm, _ = tokenizer_for(ModelConfig())
    assert chunks <= 1.3 * Chunker(minilm, ChunkingConfig(max_tokens=64, overlap=16), model_max_tokens=256).chunk(
        docs).height


def test_text_without_word_starts_still_advances_by_full_steps():
    """A long run without spaces (a DNA sequence) gives no word start to snap to: plain token windows."""
    import random

    tokenizer, limit = _wordllama()
    rng = random.Random(0)
    text = "The sequence " + "".join(rng.choice("ACGT") for _ in range(3000)) + " was cloned."
    chunker = Chunker(tokenizer, ChunkingConfig(max_tokens=64, overlap=16), model_max_tokens=limit)
    window, n = chunker.token_budget(), tokenizer.count(text, specials=False)
    spans = chunker.spans(text)
    assert len(spans) == _expected_chunks(n, window, 16) > 30
    assert all(n_tok == window for _, _, n_tok in spans[:-1])


def test_a_window_begun_inside_a_long_word_still_fits_and_counts_its_tokens(tokenizer):
    """Words longer than half a step (base64, hex, DNA) leave no word start to begin the next window at: begun
    inside one, the chunk's text re-tokenizes into more pieces than it had there. It is cut to fit, and its count
    is that of its own text."""
    import random

    rng = random.Random(0)
    text = " ".join("".join(rng.choice("ACGTacgt0123456789+/") for _ in range(95)) for _ in range(30))
    for max_tokens, overlap in ((64, 16), (32, 8), (16, 4)):
        spans = make(tokenizer, max_tokens=max_tokens, overlap=overlap).spans(text)
        assert any(text[a - 1] != " " for a, _, _ in spans[1:])  # some begin inside a word
        for a, b, n_tokens in spans:
            assert tokenizer.count(text[a:b]) <= max_tokens
            assert tokenizer.count(text[a:b], specials=False) == n_tokens
        assert spans[-1][1] == len(text)


@pytest.mark.parametrize("text", [
    "Intro paragraph here." + "\n" * 60 + "Second paragraph text.",
    "Header\r\n" + "\r\n" * 40 + "body text follows here and goes on for a while",
    "a" + "\t" * 200 + "b",
    "one two three four five six  seven eight nine ten eleven  twelve thirteen   fourteen fifteen sixteen",
    "xxx😀😀😀😀 k l m n 😀😀😀 and more words 😀 after the emoji 😀😀",
], ids=["newlines", "crlf", "tabs", "double-spaces", "emoji"])
def test_sentencepiece_chunks_are_text_that_fits_and_counts_its_tokens(text):
    """wordllama's SentencePiece has tokens of bare whitespace (a newline, a second space) and cuts an emoji into
    byte tokens sharing its offsets: windows began on whitespace (empty chunks, counting tokens their text does
    not have) and ended inside a character (a chunk over the window)."""
    tokenizer, limit = _wordllama()
    for max_tokens, overlap in ((16, 4), (9, 2), (64, 16)):
        spans = Chunker(tokenizer, ChunkingConfig(max_tokens=max_tokens, overlap=overlap), limit).spans(text)
        for a, b, n_tokens in spans:
            assert text[a:b].strip() and not text[a].isspace(), (max_tokens, text[a:b])
            assert tokenizer.count(text[a:b]) <= max_tokens, (max_tokens, text[a:b])
            assert tokenizer.count(text[a:b], specials=False) == n_tokens, (max_tokens, text[a:b])
        covered = {i for a, b, _ in spans for i in range(a, b)}
        assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())  # nothing left out
