"""Tokenizer training (loads with AutoTokenizer), bytes-per-token eval, and packed token shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_planted import EN, PT, prose_corpus, write_jsonl

from oficina.data.pack import PackConfig, is_validation
from oficina.data.pack import run as pack
from oficina.data.tokenizer import TokenizerEvalConfig, TokenizerTrainConfig, evaluate, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokdata")
    return write_jsonl(d / "c.jsonl", prose_corpus(200, seed=1))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tok"
    assert train(TokenizerTrainConfig(inputs=[str(corpus)], out=str(out), vocab_size=600)) == 0
    return out


def test_trained_tokenizer_loads_with_autotokenizer(trained):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained)
    assert len(tok) == 600
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for text in (EN, PT, "código → ção 🙂 \t tabs"):  # byte-level: every string round-trips
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Olá"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nOlá<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template([{"role": "user", "content": "Olá"}], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_eval_reports_bytes_per_token_side_by_side(trained, tiny_lm, tmp_path, capsys):
    held = write_jsonl(tmp_path / "held.jsonl", [{"text": EN}, {"text": PT}])
    assert (
        evaluate(
            TokenizerEvalConfig(
                tokenizers=[str(trained), str(tiny_lm)], text=[str(held)], json=True
            )
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["tokenizer"] for r in rows] == [str(trained), str(tiny_lm)]
    n_bytes = len(EN.encode()) + len(PT.encode())
    for r in rows:
        assert r["bytes"] == n_bytes and r["bytes_per_token"] == pytest.approx(
            n_bytes / r["tokens"], rel=1e-3
        )
    # Trained on this very language, the 600-token tokenizer beats the 512-token one trained on
    # Python's documentation.
    assert rows[0]["bytes_per_token"] > rows[1]["bytes_per_token"]
    assert rows[1]["vs_first"] == pytest.approx(
        rows[1]["bytes_per_token"] / rows[0]["bytes_per_token"], rel=1e-3
    )


def test_pack_writes_the_interface_format_with_a_document_split(trained, corpus, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "packed"
    assert (
        pack(
            PackConfig(
                input=[str(corpus)],
                tokenizer=str(trained),
                out=str(out),
                seq_len=64,
                val_fraction=0.1,
            )
        )
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "oficina-pack-v1" and meta["dtype"] == "uint16"
    assert meta["seq_len"] == 64 and meta["vocab_size"] == 600 and meta["eos_id"] == 2
    assert meta["tokenizer"] == str(trained.resolve())
    train_ids = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    val_ids = np.memmap(out / "val.bin", dtype=np.uint16, mode="r")
    assert len(train_ids) == meta["train_tokens"] and len(val_ids) == meta["val_tokens"]
    rows = [json.loads(x) for x in corpus.read_text().splitlines()]
    n_val = sum(is_validation(r["id"], 0.1) for r in rows)
    assert 0 < n_val < 60 and meta["val_docs"] == n_val and meta["train_docs"] == len(rows) - n_val
    assert int((val_ids == 2).sum()) == n_val and int((train_ids == 2).sum()) == len(rows) - n_val
    # The first training document decodes back to its text, followed by EOS.
    tok = AutoTokenizer.from_pretrained(trained)
    first = next(r for r in rows if not is_validation(r["id"], 0.1))
    end = int(np.argmax(train_ids == 2))
    assert tok.decode(train_ids[:end].tolist()) == first["text"]
    # Deterministic: packing again gives the same bytes.
    out2 = tmp_path / "again"
    pack(
        PackConfig(
            input=[str(corpus)], tokenizer=str(trained), out=str(out2), seq_len=64, val_fraction=0.1
        )
    )
    assert (out / "train.bin").read_bytes() == (out2 / "train.bin").read_bytes()


def test_cli_verbs(corpus, tmp_path):
    from oficina.cli import main

    tok = tmp_path / "t"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "400", "--out", str(tok)]) == 0
    assert (
        main(["data", "pack", str(corpus), "--tokenizer", str(tok), "--out", str(tmp_path / "p")])
        == 0
    )
    assert main(["tokenizer", "eval", "--tokenizers", str(tok), "--text", str(corpus)]) == 0
    assert main(["tokenizer", "train", str(corpus), "--out", str(tok), "--eos-token", "<eos>"]) == 1


@pytest.mark.integration
def test_eval_against_smollm2(trained, smollm2, tmp_path, capsys):
    held = write_jsonl(tmp_path / "held.jsonl", [{"text": EN}, {"text": PT}])
    evaluate(
        TokenizerEvalConfig(
            tokenizers=[str(trained), "smollm2-135m-instruct"], text=[str(held)], json=True
        )
    )
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["vocab_size"] == 49152 and rows[1]["bytes_per_token"] > 2.5


def test_pack_never_leaves_validation_empty(trained, tmp_path):
    import numpy as np

    rows = [{"id": f"x{i}", "text": f"{EN} {i}"} for i in range(3)]
    assert not any(is_validation(r["id"], 0.01) for r in rows)
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    out = tmp_path / "p"
    pack(PackConfig(input=[str(data)], tokenizer=str(trained), out=str(out), val_fraction=0.01))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["val_docs"] == 1 and meta["train_docs"] == 2
    assert (out / "train.bin").stat().st_size == meta["train_tokens"] * 2
    val = np.memmap(out / "val.bin", dtype=np.uint16, mode="r")
    assert len(val) == meta["val_tokens"] and val[-1] == 2
