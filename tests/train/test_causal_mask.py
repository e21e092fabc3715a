"""A right-padded causal-LM batch trains without its attention mask (``mask_is_redundant``):
the same loss and gradients as with it, and as each row alone without padding."""

from __future__ import annotations

import pytest
import torch

from oficina.train.data import IGNORE
from oficina.train.objectives import SFT, CausalLM, mask_is_redundant


def _padded(vocab: int, lengths: list[int], left: bool = False, seed: int = 0) -> dict:
    """Rows of the given lengths padded to the longest (pad id 0), targets IGNORE on padding
    and on each row's first two (prompt) tokens, as ``JsonlDataset.collate`` makes them."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    tgt = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        cols = slice(width - n, width) if left else slice(0, n)
        ids[r, cols] = torch.randint(1, vocab, (n,), generator=g)
        tgt[r, cols] = torch.randint(1, vocab, (n,), generator=g)
        tgt[r, cols.start : cols.start + 2] = IGNORE
        mask[r, cols] = 1
    return {"input_ids": ids, "targets": tgt, "attention_mask": mask}


def test_mask_is_redundant_only_for_right_padding_without_padded_targets():
    b = _padded(50, [5, 3, 4])
    assert mask_is_redundant(b)
    assert mask_is_redundant({"input_ids": b["input_ids"], "targets": b["targets"]})
    assert not mask_is_redundant(_padded(50, [5, 3, 4], left=True))
    holed = dict(b, attention_mask=b["attention_mask"].clone())
    holed["attention_mask"][0, 1] = 0  # a hole inside a row: the mask hides a real token
    assert not mask_is_redundant(holed)
    target_on_pad = dict(b, targets=b["targets"].clone())
    target_on_pad["targets"][1, 4] = 7  # a padded position whose output the loss would read
    assert not mask_is_redundant(target_on_pad)


def _lm(tiny_lm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm).float().train()


def _masks_seen(model) -> list:
    """The attention_mask each call of the decoder received (None = no mask)."""
    seen: list = []
    model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw.get("attention_mask")), with_kwargs=True
    )
    return seen


def _loss_and_grads(objective, model, batch) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, _ = objective(model, batch)
    loss.backward()
    return float(loss), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("objective", [SFT(), SFT(fused=False), CausalLM()])
def test_right_padded_batch_drops_the_mask_and_keeps_loss_and_gradients(tiny_lm, objective):
    model = _lm(tiny_lm)
    seen = _masks_seen(model)
    lengths = [9, 4, 6]
    batch = _padded(model.config.vocab_size, lengths)
    loss, grads = _loss_and_grads(objective, model, batch)
    assert seen == [None]  # the decoder ran without a mask
    # The reference: the model given the mask, as before this change.
    model.zero_grad(set_to_none=True)
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    logits = model.lm_head(hidden)
    ref = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE
    )
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert loss == pytest.approx(float(ref), rel=1e-5)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    # And each row alone, unpadded: the token-weighted mean of their losses.
    total, count = 0.0, 0
    for r, n in enumerate(lengths):
        row = {k: v[r : r + 1, :n] for k, v in batch.items()}
        k = int((row["targets"] != IGNORE).sum())
        total += float(objective(model, row)[0]) * k
        count += k
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_left_padded_batch_keeps_its_mask(tiny_lm):
    model = _lm(tiny_lm)
    seen = _masks_seen(model)
    batch = _padded(model.config.vocab_size, [9, 4, 6], left=True)
    loss, _ = SFT()(model, batch)
    assert len(seen) == 1 and torch.equal(seen[0], batch["attention_mask"])
    # The loss the mask gives: without it the padded rows' real tokens would attend to the pads.
    no_mask, _ = SFT()(model, {k: v for k, v in batch.items() if k != "attention_mask"})
    assert float(loss) != pytest.approx(float(no_mask), rel=1e-4)
