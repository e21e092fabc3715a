"""The recipes' small pieces on exact values: FLOPs per token by hand, steps from epochs, the
held-out split, which teacher layers a student keeps (and that they are the teacher's weights)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from oficina.errors import UserError
from oficina.train.data import JsonlDataset
from oficina.train.loop import TrainArgs
from oficina.train.recipes import _flops_per_token, _max_steps, _split, student_from_teacher


def test_flops_per_token_by_hand():
    c = SimpleNamespace(
        hidden_size=8,
        num_hidden_layers=2,
        intermediate_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=None,
        vocab_size=10,
    )
    # per layer: q,o 8*2*4*2 = 128; k,v 8*1*4*2 = 64; mlp 3*8*16 = 384 -> 576;
    # N = 2*576 + 10*8 = 1232; full: 6N + 12*L*d*s (s = 5) = 7392 + 960
    assert _flops_per_token(c, 5, True) == 6 * 1232 + 12 * 2 * 8 * 5
    assert _flops_per_token(c, 5, False) == 4 * 1232 + 8 * 2 * 8 * 5  # frozen base
    c.head_dim = 3  # an explicit head size wins over d / heads
    per_layer = 8 * 2 * 3 * 2 + 8 * 1 * 3 * 2 + 3 * 8 * 16
    assert _flops_per_token(c, 1, True) == 6 * (2 * per_layer + 80) + 12 * 2 * 8


def test_max_steps_from_epochs():
    args = TrainArgs(batch_size=4, grad_accum=2)
    assert _max_steps(7, 3.0, 100, args, 1) == 7  # given steps win
    assert _max_steps(None, 1.0, 100, args, 1) == 13  # ceil(100 / 8)
    assert _max_steps(None, 2.0, 100, args, 2) == 13  # ceil(200 / 16)
    assert _max_steps(None, 0.01, 10, args, 1) == 1  # at least one


def _ds(n: int) -> JsonlDataset:
    exs = [SimpleNamespace(ids=[i, i + 1], label=None) for i in range(n)]
    return JsonlDataset(exs, "sft", 0, label_names=["x"])


def test_split_holds_out_a_seeded_share():
    train, val = _split(_ds(40), 0.1, seed=3)
    assert (len(train.examples), len(val.examples)) == (36, 4)
    firsts = sorted(e.ids[0] for e in train.examples + val.examples)
    assert firsts == list(range(40))  # every row once
    again = _split(_ds(40), 0.1, seed=3)[1]
    assert [e.ids for e in again.examples] == [e.ids for e in val.examples]
    assert [e.ids for e in _split(_ds(40), 0.1, seed=4)[1].examples] != [
        e.ids for e in val.examples
    ]
    assert val.task == "sft" and val.label_names == ["x"]
    assert len(_split(_ds(10), 0.01, 0)[1].examples) == 1  # at least one row
    assert len(_split(_ds(19), 0.1, 0)[1].examples) == 2  # 1.9 rounds to 2
    small = _ds(9)
    assert _split(small, 0.5, 0) == (small, None)  # under 10 rows: nothing held out
    assert _split(_ds(20), 0.0, 0)[1] is None


def test_student_keeps_evenly_spaced_teacher_layers(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(cfg)
    for keep, want in [(1, [0]), (2, [0, 3]), (3, [0, 2, 3])]:
        s = student_from_teacher(teacher, keep)
        assert s.config.num_hidden_layers == len(want) == len(s.model.layers)
        for new_i, old_i in enumerate(want):
            got, src = s.model.layers[new_i], teacher.model.layers[old_i]
            assert got.self_attn.layer_idx == new_i
            for (n, p), (_, q) in zip(got.named_parameters(), src.named_parameters(), strict=True):
                assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), n  # a copy
        assert all(p.requires_grad for p in s.parameters())
        ids = torch.tensor([[1, 2, 3]])
        assert s(ids).logits.shape == (1, 3, 32)
    assert teacher.config.num_hidden_layers == 4 and len(teacher.model.layers) == 4
    with pytest.raises(UserError, match="^--keep-layers 4: the teacher has only 4 layers$"):
        student_from_teacher(teacher, 4)
