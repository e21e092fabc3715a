"""Validation batches: ``fit`` batches its validation rows by length (less padding), and the loss
it reports is the same token-weighted mean over the same rows as in file order; callers that
pair outputs with rows (``oficina eval``) keep the file's order."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from oficina.train.data import eval_batches, load_jsonl_dataset
from oficina.train.loop import evaluate
from oficina.train.objectives import SFT


def _rows() -> list[dict]:
    # Lengths that interleave short and long: in file order every batch of 4 pads to a long row.
    words = ["a", "b c d e f g h i j k l m n o p q r s t u v w x y z " * 3]
    return [
        {"prompt": f"Q{i}: " + words[i % 2] * (1 + i % 3), "completion": f" answer {i}"}
        for i in range(14)
    ]


def test_by_length_pads_less_and_scores_the_same_rows_the_same(tiny_lm):
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    ds = load_jsonl_dataset(_rows(), tok, 512, "sft")
    plain = eval_batches(ds, 4, None)
    grouped = eval_batches(ds, 4, None, by_length=True)
    real = sum(len(e.ids) - 1 for e in ds.examples)
    for batches in (plain, grouped):  # every row once, none lost at the ragged end
        assert sum(int(b["attention_mask"].sum()) for b in batches) == real
    cells = [sum(b["input_ids"].numel() for b in bs) for bs in (plain, grouped)]
    assert cells[1] < cells[0]
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths == sorted(widths)
    # File order is kept unless asked: row k is in batch k // 4 at position k % 4.
    first = ds.collate([0, 1, 2, 3])
    assert torch.equal(plain[0]["input_ids"], first["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    want = evaluate(model, SFT(), plain, "fp32")
    assert evaluate(model, SFT(), grouped, "fp32") == pytest.approx(want, rel=1e-5)
    # max_batches takes the first rows, then groups them.
    some = eval_batches(ds, 4, 2, by_length=True)
    assert sum(int(b["attention_mask"].sum()) for b in some) == sum(
        len(e.ids) - 1 for e in ds.examples[:8]
    )
