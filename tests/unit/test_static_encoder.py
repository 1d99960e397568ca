"""The static (wordllama) family behind the same encoder interface as the transformer."""

import pathlib

import numpy as np
import pytest

from pipeline.config import ChunkingConfig, ModelConfig
from pipeline.corpus.chunking import Chunker
from pipeline.index.representations import matryoshka
from pipeline.models.encoder import encoder_for_card, load_encoder, tokenizer_for

WORDLLAMA = ModelConfig(name="wordllama-l2-supercat", package="wordllama")
PAIR = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]


@pytest.fixture(scope="module")
def static():
    return load_encoder(WORDLLAMA)


def test_loads_offline_with_a_model_card(static):
    card = static.card
    assert (card.dims, card.pooling, card.source) == (256, "mean", {"package": "wordllama"})
    assert len(card.weights_sha256) == 64 and encoder_for_card(card).card == card


def test_sanity_pair(static):
    v = static.encode(PAIR)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] == pytest.approx(0.7070, abs=1e-3) and abs(v[0] @ v[2]) < 0.1


def test_matryoshka_prefix_equals_wordllamas_own_truncated_model(static):
    import wordllama
    from wordllama import WordLlama

    pkg = pathlib.Path(wordllama.__file__).parent
    wl64 = WordLlama.load(cache_dir=pkg, trunc_dim=64, disable_download=True)
    assert np.allclose(matryoshka(static.encode(PAIR), 64), wl64.embed(PAIR, norm=True), atol=1e-5)


def test_chunking_works_with_its_tokenizer(sample_docs):
    tokenizer, limit = tokenizer_for(WORDLLAMA)
    text = sample_docs[0]["title"] + " " + sample_docs[0]["text"]
    chunker = Chunker(tokenizer, ChunkingConfig(max_tokens=64, overlap=8), limit)
    spans = chunker.spans(text)
    assert len(spans) > 2 and spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(n <= chunker.token_budget() for _, _, n in spans)


def test_long_texts_are_truncated_at_max_tokens():
    enc = load_encoder(ModelConfig(package="wordllama", max_tokens=8))
    head = "alpha beta gamma delta epsilon zeta eta theta"
    assert np.allclose(enc.encode([head + " iota kappa lambda mu"]), enc.encode([head]), atol=1e-6)


def test_loading_wordllama_leaves_the_processes_logging_alone():
    """wordllama's import calls logging.basicConfig(level=INFO); a CLI run that loads it must not start printing
    every library's INFO records (httpx's requests, Prefect's) on stderr. In a fresh process: the import runs once."""
    import subprocess
    import sys

    code = ("import logging\nfrom pipeline.config import ModelConfig\n"
            "from pipeline.models.encoder import load_encoder\n"
            "load_encoder(ModelConfig(name='wordllama-l2-supercat', package='wordllama'))\n"
            "logging.getLogger('httpx').info('an INFO record')\n"
            "print(len(logging.getLogger().handlers), logging.getLogger().level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=pathlib.Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", str(30)] and "an INFO record" not in out.stderr  # WARNING, no handler


def test_a_text_of_no_tokens_is_a_zero_vector_not_nan(static):
    """wordllama divides by the norm: a text with no tokens ("", punctuation alone) averaged to zero became NaN,
    which FAISS finds nothing for. The others are normalised bit for bit as wordllama does it."""
    texts = ["", "heart disease and statins", "x"]
    vectors = static.encode(texts, kind="query")
    assert np.isfinite(vectors).all() and not vectors[0].any()
    assert np.array_equal(vectors[1:], np.asarray(static.model.embed(texts[1:], norm=True), dtype=np.float32))
