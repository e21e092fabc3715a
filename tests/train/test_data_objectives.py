"""Data readers and objectives: packed windows, batch slicing across ranks, SFT masking, KD."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
import torch

from oficina.errors import UserError
from oficina.train.data import (
    IGNORE,
    BatchStream,
    PackedDataset,
    load_jsonl_dataset,
    read_pack_meta,
)
from oficina.train.objectives import KD, CausalLM, check_same_vocab


def test_packed_windows_are_shifted_pairs(shards):
    ds = PackedDataset(shards, "train")
    s = ds.seq_len
    b = ds.collate([0, 3])
    raw = np.fromfile(shards / "train.bin", dtype=np.uint16).astype(np.int64)
    assert b["input_ids"].shape == (2, s)
    assert torch.equal(b["input_ids"][1], torch.from_numpy(raw[3 * s : 4 * s]))
    assert torch.equal(b["targets"][1], torch.from_numpy(raw[3 * s + 1 : 4 * s + 1]))
    assert len(ds) == (len(raw) - 1) // s


def test_pack_meta_errors(tmp_path, shards):
    with pytest.raises(UserError, match="no meta.json"):
        read_pack_meta(tmp_path)
    meta = json.loads((shards / "meta.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(UserError, match="oficina-pack-v1"):
        read_pack_meta(bad)
    (bad / "meta.json").write_text(json.dumps({**meta, "train_tokens": 5}))
    (bad / "train.bin").write_bytes((shards / "train.bin").read_bytes())
    with pytest.raises(UserError, match="train_tokens=5"):
        PackedDataset(bad, "train")


def test_two_ranks_see_exactly_the_rows_of_one(shards):
    ds = PackedDataset(shards, "train")
    one = BatchStream(ds, per_rank=4, seed=3)
    r0 = BatchStream(ds, per_rank=2, seed=3, rank=0, world=2)
    r1 = BatchStream(ds, per_rank=2, seed=3, rank=1, world=2)
    for i in (0, 1, one.per_epoch + 2):  # also across an epoch boundary (a new permutation)
        full = one.batch(i)["input_ids"]
        split = torch.cat([r0.batch(i)["input_ids"], r1.batch(i)["input_ids"]])
        assert torch.equal(full, split)
    assert not torch.equal(one.batch(0)["input_ids"], one.batch(one.per_epoch)["input_ids"])


def _tok(tiny_lm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm)


def test_sft_loss_only_on_response(tmp_path, tiny_lm):
    tok = _tok(tiny_lm)
    f = tmp_path / "sft.jsonl"
    f.write_text(
        json.dumps({"prompt": "Question: what is a list?\nAnswer:", "completion": " a sequence"})
        + "\n"
        + "not json at all\n"
        + json.dumps({"prompt": 3})
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello there"},
                ]
            }
        )
        + "\n"
    )
    ds = load_jsonl_dataset(f, tok, max_len=64)
    assert ds.task == "sft" and len(ds) == 2 and ds.skipped == 2
    ex = ds.examples[0]
    learned = tok.decode([t for t, y in zip(ex.ids, ex.labels, strict=True) if y != IGNORE])
    assert learned.startswith(" a sequence") and learned.endswith(tok.eos_token)
    chat = ds.examples[1]
    learned = tok.decode([t for t, y in zip(chat.ids, chat.labels, strict=True) if y != IGNORE])
    assert "hello there" in learned and "hi" not in learned.replace("hello there", "")
    b = ds.collate([0, 1])
    assert b["input_ids"].shape == b["targets"].shape == b["attention_mask"].shape
    # targets are shifted: where a response token is a target, the input is the token before it
    row = b["targets"][0]
    first = int((row != IGNORE).nonzero()[0])
    assert b["input_ids"][0, first + 1] == row[first]


def test_template_rows_become_sft_and_text_label_rows_a_head(tmp_path, tiny_lm):
    tok = _tok(tiny_lm)
    f = tmp_path / "task.jsonl"
    rows = [{"text": f"passage {i}", "label": ["a", "b"][i % 2]} for i in range(6)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = load_jsonl_dataset(f, tok, template="Passage: {text}\nAnswer:")
    assert sft.task == "sft"
    ex = sft.examples[1]
    assert tok.decode([t for t, y in zip(ex.ids, ex.labels, strict=True) if y != IGNORE]) == (
        " b" + tok.eos_token
    )
    short = load_jsonl_dataset(f, tok, max_len=6, template="Passage: {text}\nAnswer:")
    assert short.truncated == 6 and len(short) == 6  # the prompt's start goes, the answer stays
    ex = short.examples[1]
    assert len(ex.ids) == 6
    assert tok.decode([t for t, y in zip(ex.ids, ex.labels, strict=True) if y != IGNORE]) == (
        " b" + tok.eos_token
    )
    clf = load_jsonl_dataset(f, tok)
    assert clf.task == "classification" and clf.label_names == ["a", "b"]
    assert clf.collate([0, 1])["labels"].tolist() == [0, 1]
    reg = tmp_path / "reg.jsonl"
    reg.write_text(
        "".join(json.dumps({"text": "x" * i, "label": i / 2}) + "\n" for i in range(1, 5))
    )
    r = load_jsonl_dataset(reg, tok)
    assert r.task == "regression" and r.collate([1])["labels"].dtype == torch.float32


def test_kd_pieces(tiny_lm, other_lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tok = _tok(tiny_lm)
    batch = {"input_ids": torch.randint(0, 500, (2, 16)), "targets": torch.randint(0, 500, (2, 16))}
    batch["targets"][:, :4] = IGNORE
    ce, n = CausalLM()(model, batch)
    assert n == 24
    # alpha=0 is plain cross-entropy; a teacher identical to the student adds zero KL
    same, _ = KD(AutoModelForCausalLM.from_pretrained(tiny_lm), 2.0, 0.0)(model, batch)
    assert torch.allclose(same, ce)
    kd_self, _ = KD(AutoModelForCausalLM.from_pretrained(tiny_lm), 2.0, 1.0)(model, batch)
    assert abs(kd_self.item()) < 1e-5
    kd_other, _ = KD(AutoModelForCausalLM.from_pretrained(other_lm), 2.0, 1.0)(model, batch)
    assert kd_other.item() > 1e-3
    from transformers import AutoTokenizer

    class Renamed:
        def get_vocab(self):
            v = dict(tok.get_vocab())
            v["zzz-not-there"] = v.pop(next(iter(v)))
            return v

    with pytest.raises(UserError, match="sequence-level"):
        check_same_vocab(tok, Renamed(), 515, 515)
    with pytest.raises(UserError, match="--method sequence"):
        check_same_vocab(tok, AutoTokenizer.from_pretrained(tiny_lm), 515, 49152)


class _Rows:
    """A dataset of n rows, row i holding ``lens[i]`` tokens (what group_by_length reads)."""

    def __init__(self, lens):
        self.lens = list(lens)

    def __len__(self):
        return len(self.lens)

    def lengths(self):
        return self.lens

    def collate(self, idx):
        return {"rows": [int(i) for i in idx]}


def test_group_by_length_batches_similar_rows_and_keeps_the_rest_random():
    lens = [(i * 37) % 101 + 1 for i in range(66)]  # 66 rows: 16 batches of 4, 2 left over
    ds = _Rows(lens)
    plain = BatchStream(ds, per_rank=4, seed=5)
    grouped = BatchStream(ds, per_rank=4, seed=5, group_by_length=4)  # windows of 16 rows
    perm = plain._order(0)
    windows = [set(perm[k : k + 16].tolist()) for k in range(0, 64, 16)]
    batches = [grouped.rows(i).tolist() for i in range(grouped.per_epoch)]
    assert sorted(sum(batches, [])) == sorted(perm[:64].tolist())  # every used row once
    home = []
    for b in batches:  # each batch lies in one window of the plain permutation...
        (w,) = [k for k, rows in enumerate(windows) if set(b) <= rows]
        home.append(w)
    for w in range(4):  # ...and cuts its window by length: no overlap between its batches
        spans = sorted(
            (min(lens[r] for r in b), max(lens[r] for r in b))
            for b, h in zip(batches, home, strict=True)
            if h == w
        )
        assert len(spans) == 4 and all(a[1] <= b[0] for a, b in pairwise(spans))
    assert home != sorted(home)  # the batches are shuffled, not window after window

    def padded(stream):
        return sum(4 * max(lens[r] for r in stream.rows(i)) for i in range(stream.per_epoch))

    assert padded(grouped) < padded(plain)
    assert [plain.rows(i).tolist() for i in range(16)] == [
        perm[4 * i : 4 * i + 4].tolist() for i in range(16)
    ]
    # Two ranks still see exactly the rows of one; another epoch is another grouping.
    r0 = BatchStream(ds, per_rank=2, seed=5, rank=0, world=2, group_by_length=4)
    r1 = BatchStream(ds, per_rank=2, seed=5, rank=1, world=2, group_by_length=4)
    for i in (0, 3, 17):
        assert grouped.rows(i).tolist() == r0.rows(i).tolist() + r1.rows(i).tolist()
    assert grouped.rows(16).tolist() != grouped.rows(0).tolist()


def test_fit_batches_by_length_when_asked(tmp_path, tiny_lm):
    from oficina.train.loop import TrainArgs, fit
    from oficina.train.objectives import SFT

    tok = _tok(tiny_lm)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows = [
        {"prompt": " ".join(words[: 1 + i % 10]) * (1 + i % 3), "completion": " ok"}
        for i in range(32)
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_jsonl_dataset(path, tok, 128, "sft")
    seen = {}

    class Spy(SFT):
        def __call__(self, model, batch):
            seen.setdefault(self.key, []).append(batch["input_ids"].numel())
            return super().__call__(model, batch)

    from transformers import AutoModelForCausalLM

    for key, group in (("plain", 0), ("grouped", 8)):
        model = AutoModelForCausalLM.from_pretrained(tiny_lm)
        spy = Spy()
        spy.key = key
        args = TrainArgs(batch_size=4, group_by_length=group, log_every=1, precision="fp32")
        fit(model, spy, ds, None, args, 8, tmp_path / key)
    # One epoch (8 batches of 4) both ways: the same tokens, fewer of them padding when grouped.
    assert len(seen["plain"]) == len(seen["grouped"]) == 8
    assert sum(seen["grouped"]) < sum(seen["plain"])
