import numpy as np
import pytest

from pipeline.models.batching import padding_waste, token_budget_batches


@pytest.mark.parametrize("seed", range(5))
def test_batches_respect_the_budget_and_keep_every_input_once(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=500).tolist() + [700, 700]  # two longer than the budget
    batches = token_budget_batches(lengths, budget=2048, max_texts=64)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # each input exactly once
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= 2048 or len(b) == 1  # an over-long text rides alone
        assert len(b) <= 64
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    # length-sorting keeps padding low compared with batches in arrival order
    arrival = [list(range(i, min(i + 8, len(lengths)))) for i in range(0, len(lengths), 8)]
    assert padding_waste(lengths, batches) < 0.1 < padding_waste(lengths, arrival)


def test_ties_keep_input_order_and_bad_budget_fails():
    assert token_budget_batches([5, 5, 5, 5], budget=10) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="positive"):
        token_budget_batches([1], budget=0)


def test_encoder_output_is_in_input_order_whatever_the_budget(encoder, sample_docs):
    from pipeline.models.transformer import TransformerEncoder

    texts = [d["title"] + " " + d["text"][: 40 * (i + 1)] for i, d in enumerate(sample_docs[:12])]
    reference = encoder.encode(texts)
    small = TransformerEncoder.__new__(TransformerEncoder)
    small.__dict__.update(encoder.__dict__, batch_tokens=300)  # many small batches, same model
    assert np.abs(small.encode(texts) - reference).max() < 1e-5
    small.texts_per_step = 5  # tokenized in lots, as on a GPU: 5 + 5 + 2 texts
    assert np.abs(small.encode(texts) - reference).max() < 1e-5


def test_encoder_counts_the_tokens_it_embeds(encoder, sample_docs):
    texts = [d["title"] + " " + d["text"] for d in sample_docs[:5]]
    expected = sum(map(len, encoder.tokenizer.ids(texts, max_tokens=encoder.card.max_tokens)))
    before = encoder.tokens_encoded
    encoder.encode(texts)
    assert encoder.tokens_encoded - before == expected
