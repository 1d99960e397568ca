"""Token-budget batching: group texts so each batch's padded size stays within a token budget.

Texts are sorted by length (longest first, ties by position) and cut greedily: a batch grows while
len(batch) * longest <= budget (and len(batch) <= max_texts). Length-sorting keeps padding low; the
budget keeps memory per forward pass flat whatever the text lengths, so one setting suits a device.
A text longer than the budget alone gets a batch of its own.
"""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(lengths: Sequence[int], budget: int, max_texts: int | None = None) -> list[list[int]]:
    """Positions of the texts, in batches; every position appears exactly once."""
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            longest = lengths[batch[0]]  # sorted: the first is the longest
            if (len(batch) + 1) * longest <= budget and (max_texts is None or len(batch) < max_texts):
                batch.append(i)
                continue
        batches.append([i])
    return batches


def padding_waste(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Share of padded token slots that hold padding (0 = none)."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded if padded else 0.0
