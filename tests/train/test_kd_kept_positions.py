"""KD's cheap path (objectives.KD, issue 14): on plain causal decoders the teacher's and the
student's output layers run only at the target positions, with the loss and student gradients
of the full-logits path; and ``fit`` stores the frozen teacher's linear weights in bf16 for a
bf16 run and puts the float32 ones back after it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from oficina.train.data import IGNORE
from oficina.train.loop import TrainArgs, fit
from oficina.train.objectives import KD

# float32 throughout: the two paths differ only in the order of sums (the head's matmul over
# fewer rows, the CE mean over the kept rows), so a relative 1e-5 on the loss and 1e-4 (with a
# 1e-6 floor for near-zero entries) on each gradient leave room for that alone.
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-4, 1e-6


def _batches(vocab: int) -> dict[str, dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    targets = torch.randint(3, vocab, (3, 9), generator=g)
    # right padding: row 0 has 6 real tokens, the prompt's 4 targets masked (SFT); row 1 is
    # full; row 2 has 3 real tokens and no target at all
    mask = torch.tensor([[1] * 6 + [0] * 3, [1] * 9, [1] * 3 + [0] * 6])
    right = targets.clone()
    right[mask == 0] = IGNORE
    right[0, :4] = IGNORE
    right[1, :2] = IGNORE
    right[2] = IGNORE
    # left padding: the mask changes what the real tokens see, so it must reach the decoder
    lmask = mask.flip(1)
    left = targets.clone()
    left[lmask == 0] = IGNORE
    left[0, 3:7] = IGNORE
    return {
        "right-padded": {"input_ids": ids, "attention_mask": mask, "targets": right},
        "left-padded": {"input_ids": ids, "attention_mask": lmask, "targets": left},
    }


def _loss_and_grads(objective, student, batch):
    student.zero_grad(set_to_none=True)
    loss, n = objective(student, batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
    return loss.detach(), n, grads


@pytest.mark.parametrize("T, alpha", [(2.0, 0.5), (1.0, 1.0), (0.5, 0.0)])
def test_kd_runs_the_heads_at_the_kept_positions_only_with_the_same_loss_and_gradients(
    tiny_lm, other_lm, T, alpha
):
    student = AutoModelForCausalLM.from_pretrained(tiny_lm).train()
    teacher = AutoModelForCausalLM.from_pretrained(other_lm)
    rows_seen: dict[str, list[int]] = {"student": [], "teacher": []}
    for name, m in (("student", student), ("teacher", teacher)):
        m.get_output_embeddings().register_forward_hook(
            lambda mod, args, out, name=name: rows_seen[name].append(args[0].shape[0])
        )
    full, kept = KD(teacher, T, alpha, fused=False), KD(teacher, T, alpha)
    for label, batch in _batches(student.config.vocab_size).items():
        n_kept = int((batch["targets"] != IGNORE).sum())
        ref_loss, ref_n, ref_grads = _loss_and_grads(full, student, batch)
        for seen in rows_seen.values():
            seen.clear()
        loss, n, grads = _loss_and_grads(kept, student, batch)
        # each head saw a [kept, d] matrix once, not [batch, len, d]
        assert rows_seen == {"student": [n_kept], "teacher": [n_kept]}, label
        assert n == ref_n == n_kept
        torch.testing.assert_close(loss, ref_loss, rtol=LOSS_RTOL, atol=0, msg=label)
        assert grads.keys() == ref_grads.keys() and len(grads) > 0
        for k in grads:
            torch.testing.assert_close(
                grads[k], ref_grads[k], rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=f"{label} {k}"
            )


def test_kd_with_no_target_in_the_batch_is_nan_on_both_paths(tiny_lm, other_lm):
    """As F.cross_entropy with every target ignored: NaN, which fit reports and stops on."""
    student = AutoModelForCausalLM.from_pretrained(tiny_lm)
    teacher = AutoModelForCausalLM.from_pretrained(other_lm)
    batch = _batches(student.config.vocab_size)["right-padded"]
    batch["targets"] = torch.full_like(batch["targets"], IGNORE)
    for fused in (True, False):
        loss, n = KD(teacher, 2.0, 0.5, fused=fused)(student, batch)
        assert n == 0 and torch.isnan(loss)


def test_fit_stores_the_teacher_in_bf16_for_a_bf16_run_and_restores_it(tiny_lm, other_lm, tmp_path):
    from oficina.train.data import load_jsonl_dataset

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    rows = [{"text": f"a passage number {i}", "label": "ab"[i % 2]} for i in range(16)]
    f = tmp_path / "task.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_jsonl_dataset(f, tok, 64, "sft", "Passage: {text}\nAnswer:", None)
    student = AutoModelForCausalLM.from_pretrained(tiny_lm)
    teacher = AutoModelForCausalLM.from_pretrained(other_lm)
    before = {k: p.detach().clone() for k, p in teacher.named_parameters()}
    q = teacher.model.layers[0].self_attn.q_proj.weight
    emb = teacher.get_input_embeddings().weight
    seen = []

    class Spy(KD):
        def __call__(self, m, batch):
            seen.append((q.dtype, emb.dtype))
            return super().__call__(m, batch)

    args = TrainArgs(lr=1e-3, batch_size=4, warmup_steps=1, precision="bf16")
    fit(student, Spy(teacher, 2.0, 0.5), ds, None, args, 2, tmp_path / "run")
    # the linear layers in bf16; the embedding (and the head tied to it) left in float32
    assert seen == [(torch.bfloat16, torch.float32)] * 2
    for k, p in teacher.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[k]), k
    seen.clear()
    fit(student, Spy(teacher, 2.0, 0.5), ds, None, args.model_copy(update={"precision": "fp32"}),
        1, tmp_path / "r2")  # fmt: skip
    assert seen == [(torch.float32, torch.float32)]


def _head_rows(model) -> list[int]:
    """Rows the model's output layer sees, call by call."""
    seen: list[int] = []
    model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: seen.append(args[0].shape[0])
    )
    return seen


def _rows(batch: dict, idx: list[int]) -> dict:
    return {k: v[idx] for k, v in batch.items()}


def test_kd_runs_the_teacher_once_per_row_and_reads_its_logits_back_after(tiny_lm, other_lm):
    """The teacher cache: a row seen before costs no teacher forward, a batch mixing seen and
    new rows runs the teacher on the new ones only, and the loss and gradients equal an
    uncached KD's, rows in any order."""
    student = AutoModelForCausalLM.from_pretrained(tiny_lm).train()
    teacher = AutoModelForCausalLM.from_pretrained(other_lm)
    seen = _head_rows(teacher)
    cached, plain = KD(teacher, 2.0, 0.5), KD(teacher, 2.0, 0.5, cache_mb=0)
    batch = _batches(student.config.vocab_size)["right-padded"]
    other = _batches(student.config.vocab_size)["right-padded"]
    other["input_ids"] = (other["input_ids"] + 7) % student.config.vocab_size  # new rows
    n0, n1 = (int((batch["targets"][i] != IGNORE).sum()) for i in (0, 1))
    for step, (b, teacher_rows) in enumerate(
        [
            (_rows(batch, [0, 2]), [n0]),  # row 0 new; row 2 has no target
            (_rows(batch, [1, 0]), [n1]),  # row 1 new, row 0 from the cache, in another order
            (_rows(batch, [0, 1, 2]), []),  # all seen: the teacher does not run
            (_rows(other, [1]), [n1]),  # same targets, other tokens: new
        ]
    ):
        seen.clear()
        loss, n, grads = _loss_and_grads(cached, student, b)
        assert seen == teacher_rows, step
        ref_loss, ref_n, ref_grads = _loss_and_grads(plain, student, b)
        assert n == ref_n
        torch.testing.assert_close(loss, ref_loss, rtol=LOSS_RTOL, atol=0, msg=str(step))
        for k in grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert len(cached.cache) == 3 and not plain.cache
    per_target = student.config.vocab_size * 4
    assert cached.cache_bytes == (2 * n1 + n0) * per_target


def test_kd_caches_no_more_than_its_budget(tiny_lm, other_lm):
    student = AutoModelForCausalLM.from_pretrained(tiny_lm).train()
    teacher = AutoModelForCausalLM.from_pretrained(other_lm)
    seen = _head_rows(teacher)
    batch = _batches(student.config.vocab_size)["right-padded"]
    n0, n1 = (int((batch["targets"][i] != IGNORE).sum()) for i in (0, 1))
    # room for row 0's logits, not row 1's as well
    kd = KD(teacher, 2.0, 0.5, cache_mb=(n0 + 0.5) * student.config.vocab_size * 4 / 2**20)
    for _ in range(2):
        kd(student, batch)
    assert seen == [n0 + n1, n1]
