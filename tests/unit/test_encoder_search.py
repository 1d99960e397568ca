import re
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.index.faiss_ops import build_exact
from pipeline.models.card import ModelCard
from pipeline.models.encoder import load_encoder
from pipeline.quality.search import Searcher, Variant

PAIR = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]


def test_minilm_loads_offline_with_its_card(encoder):
    card = encoder.card
    assert (card.name, card.dims, card.pooling, card.max_tokens) == ("all-MiniLM-L6-v2", 384, "mean", 256)
    # the upstream model.safetensors of sentence-transformers/all-MiniLM-L6-v2
    assert card.weights_sha256 == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    assert ModelCard.from_dict(card.to_dict()).fingerprint == card.fingerprint


def test_sanity_pair_and_unit_norm(encoder):
    v = encoder.encode(PAIR)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] == pytest.approx(0.7553, abs=1e-3) and abs(v[0] @ v[2]) < 0.15


def test_length_grouped_batches_keep_input_order_and_match_sentence_transformers(encoder, sample_docs):
    from sentence_transformers import SentenceTransformer

    texts = [d["title"] + " " + d["text"] for d in sample_docs[:24]] + PAIR  # mixed lengths
    ours = encoder.encode(texts)
    one_by_one = np.vstack([encoder.encode([t]) for t in texts[::5]])
    assert np.abs(ours[::5] - one_by_one).max() < 1e-5
    st = SentenceTransformer(str(encoder.folder), device="cpu").encode(texts, convert_to_numpy=True)
    assert np.abs(ours - st).max() < 1e-5


def test_cpu_batches_side_by_side_give_the_vectors_of_one_batch_at_a_time(encoder, sample_docs, monkeypatch):
    import threading

    if encoder.device != "cpu":
        pytest.skip("batches run side by side on a CPU")
    torch.set_num_threads(2)  # an actor's two CPUs (restored after the test); on one core they take turns
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:40]]
    threads, forward = set(), encoder._forward

    def recorded(ids, rows):
        threads.add(threading.current_thread().name)
        return forward(ids, rows)

    monkeypatch.setattr(encoder, "_forward", recorded)
    monkeypatch.setattr(encoder, "batch_tokens", 1024)  # several batches of these abstracts
    side_by_side = encoder.encode(texts)
    assert len(threads) > 1 and all(name.startswith("encode") for name in threads)
    # the workers' one thread each is not what a thread started afterwards takes (a server's request threads)
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [torch.get_num_threads()]
    # one batch at a time, on one thread: bitwise equal on the AMX Xeon for every CPU kernel (no product here splits
    # its sums by thread)
    caller = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_at_a_time = encoder.encode(texts)
    finally:
        torch.set_num_threads(caller)
    assert np.abs(side_by_side - one_at_a_time).max() <= 1e-6


def test_cpu_encoder_runs_linears_through_onednn_with_the_same_vectors(encoder, sample_docs):
    from pipeline.models import onednn
    from pipeline.models.encoder import load_encoder

    if encoder.device != "cpu" or not onednn.available():
        pytest.skip("the oneDNN path is for CPUs with torch's mkldnn ops")
    plain = load_encoder(encoder.card.model_config().model_copy(update={"cpu_onednn": False}))
    linears = sum(isinstance(m, torch.nn.Linear) for m in plain.model.modules())
    assert linears == 6 * 6  # 6 layers of query, key, value, attention output, up, down
    assert sum(isinstance(m, onednn.OneDnnLinear) for m in encoder.model.modules()) == linears
    assert not any(isinstance(m, torch.nn.Linear) for m in encoder.model.modules())
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:16]]
    assert np.abs(encoder.encode(texts) - plain.encode(texts)).max() < 1e-5  # GELU inside the up projection too
    from pipeline.models.kernel_plan import TOLERANCE
    from pipeline.models.kernels import bf16_onednn

    if bf16_onednn():  # bf16 units (AMX, avx512_bf16): products in bf16, their outputs kept bf16 to the residual sum
        bf16 = load_encoder(encoder.card.model_config().model_copy(update={"precision": "bf16",
                                                                           "kernel": "bf16-onednn"}))
        assert all(layer.matmul_dtype == torch.bfloat16 for layer in bf16.model.layers)
        assert np.sum(bf16.encode(texts) * plain.encode(texts), axis=1).min() >= TOLERANCE


def test_plain_torch_bert_equals_transformers_bertmodel_on_a_padded_batch(encoder, sample_docs):
    from pipeline.models.bert import BertEncoder
    from pipeline.models.transformer import _AutoModel

    assert isinstance(encoder.model, BertEncoder)  # MiniLM skips transformers' modeling import
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:6]] + PAIR  # lengths 10..256: padding
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(str(encoder.folder), local_files_only=True)
    batch = hf_tokenizer(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
    assert not bool(batch["attention_mask"].all())
    reference = _AutoModel(encoder.folder).eval()
    with torch.inference_mode():
        ours = encoder.model(batch["input_ids"], batch["attention_mask"])
        theirs = reference(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()  # padded positions are never pooled
    assert ours.shape == theirs.shape and (ours - theirs)[real].abs().max() < 1e-4


def test_a_damaged_checkpoint_is_refused_naming_the_folder_and_what_is_wrong(encoder, tmp_path):
    """The model's weights are not initialised before the file's replace them, so a weight left out must fail,
    by name; a truncated file fails as a model error too, not as safetensors' own exception."""
    missing, truncated = tmp_path / "missing", tmp_path / "truncated"
    for folder in (missing, truncated):
        shutil.copytree(encoder.folder, folder)
    weights = load_file(missing / "model.safetensors")
    del weights["encoder.layer.0.output.dense.weight"]
    save_file(weights, missing / "model.safetensors")
    with open(truncated / "model.safetensors", "r+b") as fh:
        fh.truncate(1_000_000)
    with pytest.raises(ModelError, match=rf"from {re.escape(str(missing))}: .*Missing key.*layers\.0\.down\.weight"):
        load_encoder(ModelConfig(name="missing", path=str(missing)))
    with pytest.raises(ModelError, match=rf"from {re.escape(str(truncated))}: .*incomplete metadata"):
        load_encoder(ModelConfig(name="truncated", path=str(truncated)))


def test_searcher_refuses_a_model_of_another_dimension(encoder):
    index = build_exact(np.eye(8, dtype=np.float32))
    ids = pl.DataFrame({"doc_id": list("abcdefgh"), "title": [""] * 8, "chunk_id": list("abcdefgh"),
                        "start": [0] * 8, "end": [1] * 8})
    with pytest.raises(ModelError, match="holds 8-dim vectors but model all-MiniLM-L6-v2 gives 384"):
        Searcher({"exact": Variant.load("exact", index, {})}, ids, encoder)


def test_searcher_collapses_chunks_to_their_documents_best_score(encoder):
    texts = ["Aspirin reduces the risk of heart attack.", "Heart attacks are less likely with aspirin.",
             "Volcanoes erupt molten rock.", "Penguins live in Antarctica."]
    index = build_exact(encoder.encode(texts))
    ids = pl.DataFrame({"doc_id": ["aspirin", "aspirin", "volcano", "penguin"], "title": ["A", "A", "V", "P"],
                        "chunk_id": ["aspirin#0", "aspirin#1", "volcano#0", "penguin#0"],
                        "start": [0, 40, 0, 0], "end": [40, 80, 28, 28]})
    searcher = Searcher({"exact": Variant.load("exact", index, {})}, ids, encoder, max_chunks_per_doc=2)
    hits = searcher.search(["does aspirin prevent heart attacks"], 3)[0]
    assert hits[0].doc_id == "aspirin" and hits[0].chunk_id in {"aspirin#0", "aspirin#1"}
    assert sorted(h.doc_id for h in hits) == ["aspirin", "penguin", "volcano"]  # one hit per document


def test_snapshot_model_with_other_weights_is_refused(encoder):
    from pipeline.models.encoder import encoder_for_card

    card = ModelCard(**{**encoder.card.to_dict(), "weights_sha256": "0" * 64})
    with pytest.raises(ModelError, match="weights sha256 .* differ"):
        encoder_for_card(card)
