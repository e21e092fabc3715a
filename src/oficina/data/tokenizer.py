"""``oficina tokenizer train | eval``: a byte-level BPE tokenizer of your own, and how it compares.

    oficina tokenizer train data/clean --vocab-size 8000 --out tok/
    oficina tokenizer eval --tokenizers tok/ smollm2-135m-instruct --text held_out.jsonl

``train`` reads text from any input ``oficina data prepare`` reads (including its output
folder), trains a byte-level BPE with Hugging Face ``tokenizers`` (every byte is in the base
alphabet, so nothing is ever unknown), adds the special tokens and a ChatML chat template, and
saves a directory that ``transformers.AutoTokenizer.from_pretrained`` loads.

``eval`` reports bytes per token (higher = the tokenizer compresses the text better, so a
model sees more text per token of context and per FLOP), characters per token and tokens per
word on held-out text, for several tokenizers side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from oficina.config import VerbConfig
from oficina.data.readers import iter_texts
from oficina.errors import UserError
from oficina.measure import start_span
from oficina.workspace import staged_dir, start_run

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TokenizerTrainConfig(VerbConfig):
    """Train a byte-level BPE tokenizer (HF tokenizers) with special tokens and a chat template."""

    positionals = ("inputs",)
    inputs: list[str] = Field(description="text files, folders, globs, or a `data prepare` output")
    out: str = Field(description="output folder (loadable with AutoTokenizer.from_pretrained)")
    vocab_size: int = Field(8000, ge=300, le=1_000_000, description="vocabulary size")
    min_frequency: int = Field(2, ge=1, description="merge only pairs seen this often")
    special_tokens: list[str] = Field(
        default_factory=lambda: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        description="special tokens, given the first ids in this order",
    )
    bos_token: str = Field("<|im_start|>", description="beginning-of-sequence token")
    eos_token: str = Field(
        "<|im_end|>", description="end-of-sequence token (joins packed documents)"
    )
    pad_token: str = Field("<|endoftext|>", description="padding token")
    chat_template: str | None = Field(
        None, description="Jinja chat template (default: ChatML, <|im_start|>role ... <|im_end|>)"
    )
    text_field: str = Field("text", description="field of JSONL/CSV/Parquet records to read")
    max_mb: float | None = Field(None, gt=0, description="train on at most this many MB of text")
    model_max_length: int = Field(2048, ge=1, description="model_max_length saved with it")


class TokenizerEvalConfig(VerbConfig):
    """Bytes per token of several tokenizers on the same held-out text."""

    tokenizers: list[str] = Field(
        min_length=1, description="tokenizer folders or model specs (smollm2-135m-instruct, ...)"
    )
    text: list[str] = Field(min_length=1, description="held-out text files / folders / globs")
    text_field: str = Field("text", description="field of JSONL/CSV/Parquet records to read")
    json_: bool = Field(False, alias="json", description="print JSON instead of a table")


def _limited(texts: Iterator[str], max_bytes: float | None, counter: dict) -> Iterator[str]:
    for t in texts:
        counter["bytes"] += len(t.encode("utf-8"))
        counter["docs"] += 1
        yield t
        if max_bytes is not None and counter["bytes"] >= max_bytes:
            return


def train_tokenizer(
    texts: Iterator[str] | list[str],
    vocab_size: int,
    special_tokens: list[str],
    min_frequency: int = 2,
):
    """A trained ``tokenizers.Tokenizer`` (byte-level BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def train(cfg: TokenizerTrainConfig) -> int:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    for t in (cfg.bos_token, cfg.eos_token, cfg.pad_token):
        if t not in cfg.special_tokens:
            raise UserError(f"token {t!r} must be one of --special-tokens {cfg.special_tokens}")
    out = Path(cfg.out)
    mem = start_span()
    with start_run("tokenizer train", cfg) as run:
        for spec in cfg.inputs:
            run.add_input("text", spec)
        counter = {"bytes": 0, "docs": 0}
        max_bytes = cfg.max_mb * 1e6 if cfg.max_mb else None
        t0 = time.time()
        tok = train_tokenizer(
            _limited(iter_texts(cfg.inputs, cfg.text_field), max_bytes, counter),
            cfg.vocab_size,
            cfg.special_tokens,
            cfg.min_frequency,
        )
        wall = time.time() - t0
        if counter["docs"] == 0:
            raise UserError("no text found in the inputs")
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=cfg.bos_token,
            eos_token=cfg.eos_token,
            pad_token=cfg.pad_token,
            unk_token=cfg.pad_token,
            model_max_length=cfg.model_max_length,
        )
        fast.chat_template = cfg.chat_template or CHATML
        with staged_dir(out) as stage:  # a full disk mid-save leaves no half tokenizer in out
            fast.save_pretrained(stage)
        # Prove the contract at once: the folder loads with the stock AutoTokenizer.
        loaded = AutoTokenizer.from_pretrained(out)
        sample = next(iter(iter_texts(cfg.inputs, cfg.text_field)))[:20000]
        n_tok = max(1, len(loaded(sample, add_special_tokens=False)["input_ids"]))
        summary = {
            "out": str(out.resolve()),
            "vocab_size": len(loaded),
            "train_docs": counter["docs"],
            "train_mb": round(counter["bytes"] / 1e6, 3),
            "wall_time_s": round(wall, 3),
            "mb_per_s": round(counter["bytes"] / 1e6 / wall, 3) if wall > 0 else None,
            "bytes_per_token_train_sample": round(len(sample.encode("utf-8")) / n_tok, 3),
            "peak_memory_mb": round(mem.stop().peak_mb, 1),
        }
        run.summary.update(summary)
        run.add_output("tokenizer", out)
    print(
        f"trained a {summary['vocab_size']}-token byte-level BPE on {summary['train_mb']} MB "
        f"({summary['train_docs']} docs) in {summary['wall_time_s']} s ({summary['mb_per_s']} MB/s), "
        f"peak memory {summary['peak_memory_mb']} MB; {summary['bytes_per_token_train_sample']} bytes/token"
    )
    print(f"saved: {out.resolve()}")
    return 0


def load_any_tokenizer(spec: str):
    """A tokenizer folder (no model weights needed), a tokenizer.json, or any model spec."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(spec)
    if p.is_dir() and (p / "tokenizer.json").is_file() and not (p / "config.json").is_file():
        return AutoTokenizer.from_pretrained(p)
    if p.is_file() and p.name.endswith(".json"):
        return PreTrainedTokenizerFast(tokenizer_file=str(p))
    from oficina.models.sources import load_tokenizer

    return load_tokenizer(spec)


def measure(tokenizer, texts: list[str]) -> dict:
    """Bytes, characters, words and tokens of the texts under one tokenizer."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_chars = sum(len(t) for t in texts)
    n_words = sum(len(t.split()) for t in texts)
    t0 = time.time()
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    wall = time.time() - t0
    n_tok = sum(len(x) for x in ids)
    return {
        "vocab_size": len(tokenizer),
        "tokens": n_tok,
        "bytes": n_bytes,
        "bytes_per_token": round(n_bytes / max(1, n_tok), 4),
        "chars_per_token": round(n_chars / max(1, n_tok), 4),
        "tokens_per_word": round(n_tok / max(1, n_words), 4),
        "encode_mb_per_s": round(n_bytes / 1e6 / wall, 2) if wall > 0 else None,
    }


def evaluate(cfg: TokenizerEvalConfig) -> int:
    from rich.console import Console
    from rich.table import Table

    texts = list(iter_texts(cfg.text, cfg.text_field))
    if not texts:
        raise UserError("no text found in --text")
    with start_run("tokenizer eval", cfg) as run:
        for spec in cfg.text:
            run.add_input("text", spec)
        rows = []
        for spec in cfg.tokenizers:
            run.add_input("tokenizer", spec)
            rows.append({"tokenizer": spec, **measure(load_any_tokenizer(spec), texts)})
        base = rows[0]["bytes_per_token"]
        for r in rows:
            r["vs_first"] = round(r["bytes_per_token"] / base, 4)
        run.summary["results"] = rows
    if cfg.json_:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title=f"bytes per token on {rows[0]['bytes'] / 1e6:.3f} MB of held-out text")
    for col in (
        "tokenizer",
        "vocab",
        "tokens",
        "bytes/token",
        "chars/token",
        "tokens/word",
        "vs first",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["tokenizer"],
            str(r["vocab_size"]),
            str(r["tokens"]),
            f"{r['bytes_per_token']:.3f}",
            f"{r['chars_per_token']:.3f}",
            f"{r['tokens_per_word']:.3f}",
            f"{r['vs_first']:.3f}x",
        )
    Console().print(t)
    return 0
