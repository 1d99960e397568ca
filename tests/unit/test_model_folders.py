"""Local model folders of other shapes than the packaged ones: each loads as transformers would, or is refused with
its reason, and the card names the folder and its weights as they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import ModelError


@pytest.fixture
def minilm() -> Path:
    from pipeline.models.sources import resolve_model_dir

    return resolve_model_dir(ModelConfig())


def saved(folder: Path, model, minilm: Path, tokenizer_config: bool = True) -> Path:
    """A tiny model saved as transformers saves it, with MiniLM's tokenizer."""
    torch.manual_seed(0)
    model.save_pretrained(folder)
    shutil.copy(minilm / "tokenizer.json", folder)
    if tokenizer_config:
        shutil.copy(minilm / "tokenizer_config.json", folder)
    return folder


def encoder(folder: Path | str):
    from pipeline.models.transformer import TransformerEncoder

    return TransformerEncoder(ModelConfig(path=str(folder), kernel="fp32-torch"), device="cpu", threads=1)


def test_distilbert_roberta_and_a_bert_with_its_training_heads_load(tmp_path, minilm, monkeypatch):
    """DistilBERT names its width `dim` (a KeyError after loading); RoBERTa's 514 positions hold 512 tokens (a
    longer text failed inside transformers, mid-shard); a BERT saved with its masked-LM head was refused by the
    strict load, though transformers loads it."""
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    monkeypatch.setenv("EMBEDPIPE_DIGEST_CACHE", str(tmp_path / "digests"))
    distil = saved(tmp_path / "distil", DistilBertModel(DistilBertConfig(dim=32, hidden_dim=64, n_layers=1,
                                                                         n_heads=2)), minilm)
    roberta = saved(tmp_path / "roberta", RobertaModel(RobertaConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=514, pad_token_id=1)), minilm, tokenizer_config=False)
    headed = saved(tmp_path / "bert-mlm", BertForMaskedLM(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)), minilm)
    for folder, dims, max_tokens in ((distil, 32, 512), (roberta, 32, 512), (headed, 32, 512)):
        loaded = encoder(folder)
        assert (loaded.card.dims, loaded.card.max_tokens) == (dims, max_tokens), folder.name
        vectors = loaded.encode(["word " * 700, "short"], kind="passage")
        assert vectors.shape == (2, dims) and np.isfinite(vectors).all(), folder.name


def test_a_folder_whose_steps_this_encoder_does_not_apply_is_refused(tmp_path, minilm):
    """Max pooling taken as mean, or a Dense projection left out, would give other vectors than the model's."""
    from pipeline.models.transformer import _pooling_mode

    pooled = tmp_path / "max" / "1_Pooling"
    pooled.mkdir(parents=True)
    (pooled / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": False,
                                                    "pooling_mode_max_tokens": True}))
    with pytest.raises(ModelError, match="pools with max_tokens; this encoder computes mean or CLS pooling only"):
        _pooling_mode(tmp_path / "max", "mean")
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ModelError, match=r"steps this encoder does not apply \(sentence_transformers\.models\.Dense\)"):
        _pooling_mode(dense, "mean")
    assert _pooling_mode(minilm, "mean") == "mean"  # MiniLM's own folder: transformer, mean pooling, normalise


def test_a_relative_path_and_weights_written_again_are_named_as_they_are(tmp_path, minilm, monkeypatch):
    """The card records the folder as an absolute path (a run from another directory finds it, and the spelling
    does not change the fingerprint), and weights written again in place are hashed again in this process."""
    from transformers import BertConfig, BertModel

    from pipeline.models.card import weights_sha256

    monkeypatch.setenv("EMBEDPIPE_DIGEST_CACHE", str(tmp_path / "digests"))
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    folder = saved(tmp_path / "tiny", BertModel(config), minilm)
    monkeypatch.chdir(tmp_path)
    relative, absolute = encoder("tiny").card, encoder(folder).card
    assert relative.source == {"path": str(folder)} and relative.fingerprint == absolute.fingerprint
    before = weights_sha256(folder)
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)  # other weights, same path
    assert weights_sha256(folder) != before and encoder(folder).card.fingerprint != absolute.fingerprint


def test_a_folders_sentence_transformers_prompts_prefix_its_queries_and_passages(tmp_path, minilm):
    """An E5-style folder names "query: " and "passage: " in config_sentence_transformers.json; its vectors are
    the model's only with them (sentence-transformers' encode_query / encode_document apply them). A configured
    prefix wins."""
    from sentence_transformers import SentenceTransformer

    from pipeline.jobs.prepare import make_chunker
    from pipeline.models.encoder import passage_prefix

    folder = tmp_path / "e5-style"
    shutil.copytree(minilm, folder)
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    settings["prompts"] = {"query": "query: ", "passage": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    loaded = encoder(folder)
    assert (loaded.card.query_prefix, loaded.card.passage_prefix) == ("query: ", "passage: ")
    texts = ["statins and heart disease", "vitamin D in children"]
    st = SentenceTransformer(str(folder), device="cpu")
    assert np.abs(loaded.encode(texts, kind="query") - st.encode_query(texts)).max() < 1e-5
    # (sentence-transformers 6 adds an empty "document" prompt to every model, which its encode_document takes
    # before "passage": the model's own passage prompt is asked for by name)
    assert np.abs(loaded.encode(texts, kind="passage") - st.encode(texts, prompt_name="passage")).max() < 1e-5
    cfg = ModelConfig(path=str(folder), kernel="fp32-torch")
    assert passage_prefix(cfg) == "passage: "  # the chunker leaves room for it
    from pipeline.config import ChunkingConfig, PipelineConfig

    pipeline_cfg = PipelineConfig(index_name="t", corpus={"source": "x.jsonl"}, model=cfg,
                                  chunking=ChunkingConfig(max_tokens=64, overlap=8))
    assert make_chunker(pipeline_cfg).params["passage_prefix"] == "passage: "
    own = ModelConfig(path=str(folder), kernel="fp32-torch", query_prefix="search: ")
    from pipeline.models.transformer import TransformerEncoder

    assert TransformerEncoder(own, device="cpu", threads=1).card.query_prefix == "search: "
    plain = encoder(minilm)  # MiniLM names no prompts: as before
    assert (plain.card.query_prefix, plain.card.passage_prefix) == ("", "")


def test_a_folders_tokenizer_or_settings_edited_in_place_is_another_model(tmp_path, minilm, monkeypatch):
    """Vectors depend on the tokenizer and settings as on the weights: a folder edited in place kept its fingerprint,
    so its cached vectors were reused and its snapshots served with queries tokenized otherwise."""
    from dataclasses import replace

    from pipeline.models.card import ModelCard
    from pipeline.models.encoder import cached_encoder, encoder_for_card

    monkeypatch.setenv("EMBEDPIPE_DIGEST_CACHE", str(tmp_path / "digests"))
    folder = tmp_path / "local-minilm"
    shutil.copytree(minilm, folder)
    before = encoder(folder).card
    from pipeline.models.transformer import TransformerEncoder

    packaged = TransformerEncoder(ModelConfig(kernel="fp32-torch"), device="cpu", threads=1).card
    assert before.settings_sha256 and packaged.settings_sha256 is None  # a package's files: fixed by its release
    recorded_long_ago = ModelCard.from_dict({k: v for k, v in before.to_dict().items() if k != "settings_sha256"})
    assert before.same_model(recorded_long_ago) and before.same_model(before)  # old manifests still load
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False  # an uncased model's tokenizer made cased
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    after = encoder(folder).card
    assert after.weights_sha256 == before.weights_sha256 and after.fingerprint != before.fingerprint
    assert not after.same_model(before)
    cached_encoder.cache_clear()
    with pytest.raises(ModelError, match=r"local-minilm: its tokenizer or settings files changed since the snapshot"):
        encoder_for_card(replace(before, precision="fp32"), "fp32-torch")
