"""``oficina data pack``: tokenize documents into flat token shards for pretraining.

    oficina data pack data/clean --tokenizer tok/ --out packed/ --seq-len 512

Writes the "Packed token shards" format of docs/INTERFACES.md: ``train.bin`` and ``val.bin``
(flat ``numpy.memmap`` of token ids, ``uint16`` when the vocabulary fits, else ``uint32``; each
document followed by the tokenizer's EOS id) and ``meta.json``. A reader takes windows of
``seq_len + 1`` tokens.

The split is by document and deterministic: a document goes to validation when the hash of its
id (salted by ``seed``) falls below ``val_fraction`` — the same document always lands on the same
side, whatever else is in the corpus, so no text is in both splits. (A corpus so small that no
hash falls below gives its last document to validation, so that split is never empty.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import numpy as np
from pydantic import Field
from tqdm import tqdm

from oficina.config import VerbConfig
from oficina.data.readers import SourceConfig, expand_inputs, read_file
from oficina.errors import UserError
from oficina.workspace import atomic_write_json, start_run

FORMAT = "oficina-pack-v1"


class PackConfig(VerbConfig):
    """Tokenize documents and write train/val token shards (memory-mapped) for pretraining."""

    positionals = ("input",)
    input: list[str] = Field(description="a `data prepare` output folder, or files / globs")
    tokenizer: str = Field(description="tokenizer folder or model spec")
    out: str = Field(description="output folder: train.bin, val.bin, meta.json")
    seq_len: int = Field(512, ge=8, description="training window length (meta.json)")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of documents for validation")
    seed: int = Field(0, description="salt of the document-hash split")
    text_field: str = Field("text", description="field of JSONL/CSV/Parquet records")
    batch_docs: int = Field(256, ge=1, description="documents tokenized per batch")


def is_validation(doc_id: str, val_fraction: float, seed: int = 0) -> bool:
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


def run(cfg: PackConfig) -> int:
    from oficina.data.tokenizer import load_any_tokenizer

    tok = load_any_tokenizer(cfg.tokenizer)
    tok.model_max_length = 1 << 40  # whole documents are encoded, then cut into windows later
    eos = tok.eos_token_id
    if eos is None:
        raise UserError(f"tokenizer {cfg.tokenizer} has no EOS token to separate documents")
    vocab = len(tok)
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    files = expand_inputs(cfg.input)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = Path(cfg.tokenizer)
    tok_ref = str(tok_path.resolve()) if tok_path.exists() else cfg.tokenizer
    with start_run("data pack", cfg) as run:
        for spec in cfg.input:
            run.add_input("data", spec)
        run.add_input("tokenizer", cfg.tokenizer)
        t0 = time.time()
        tmp = {s: out / f".{s}.bin.{os.getpid()}.tmp" for s in ("train", "val")}
        fh = {s: open(p, "wb") for s, p in tmp.items()}
        counts = {s: {"docs": 0, "tokens": 0} for s in fh}
        n_bytes = 0
        last_train: list[np.ndarray | None] = [None]
        src = SourceConfig(text_field=cfg.text_field)
        bar = tqdm(unit="doc", desc="pack", disable=None, mininterval=1.0)

        def flush(batch: list[dict]) -> None:
            nonlocal n_bytes
            ids = tok([d["text"] for d in batch], add_special_tokens=False)["input_ids"]
            for d, seq in zip(batch, ids, strict=True):
                split = "val" if is_validation(d["id"], cfg.val_fraction, cfg.seed) else "train"
                arr = np.asarray([*seq, eos], dtype=dtype)
                fh[split].write(arr.tobytes())
                counts[split]["docs"] += 1
                counts[split]["tokens"] += len(arr)
                if split == "train":
                    last_train[0] = arr
                n_bytes += len(d["text"].encode("utf-8"))
            bar.update(len(batch))

        try:
            batch: list[dict] = []
            for path in files:
                for item in read_file(path, src):
                    if isinstance(item, dict):
                        batch.append(item)
                        if len(batch) >= cfg.batch_docs:
                            flush(batch)
                            batch = []
            if batch:
                flush(batch)
            if cfg.val_fraction > 0 and counts["val"]["docs"] == 0 and counts["train"]["docs"] > 1:
                # A tiny corpus whose hashes all fell on the train side: move its last document
                # over, so the validation split is never empty (still deterministic).
                arr = last_train[0]
                fh["train"].truncate(fh["train"].tell() - arr.nbytes)
                fh["train"].seek(0, os.SEEK_END)
                fh["val"].write(arr.tobytes())
                for key, sign in (("train", -1), ("val", 1)):
                    counts[key]["docs"] += sign
                    counts[key]["tokens"] += sign * len(arr)
            for f in fh.values():
                f.flush()
                os.fsync(f.fileno())
                f.close()
        except BaseException:  # a full disk or an interrupt: no half-written shard stays behind
            for f, p in zip(fh.values(), tmp.values(), strict=True):
                with contextlib.suppress(OSError):
                    f.close()
                p.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        if counts["train"]["docs"] == 0:
            for p in tmp.values():
                p.unlink(missing_ok=True)
            raise UserError("no documents went to the training split (no input text?)")
        for s, p in tmp.items():
            os.replace(p, out / f"{s}.bin")
        wall = time.time() - t0
        meta = {
            "format": FORMAT,
            "dtype": np.dtype(dtype).name,
            "seq_len": cfg.seq_len,
            "vocab_size": vocab,
            "eos_id": int(eos),
            "tokenizer": tok_ref,
            "train_tokens": counts["train"]["tokens"],
            "val_tokens": counts["val"]["tokens"],
            "train_docs": counts["train"]["docs"],
            "val_docs": counts["val"]["docs"],
            "val_fraction": cfg.val_fraction,
            "seed": cfg.seed,
            "sources": [str(f.resolve()) for f in files],
        }
        atomic_write_json(out / "meta.json", meta)
        total = counts["train"]["tokens"] + counts["val"]["tokens"]
        run.summary.update(
            {
                "train_tokens": meta["train_tokens"],
                "val_tokens": meta["val_tokens"],
                "wall_time_s": round(wall, 3),
                "tokens_per_s": round(total / wall, 1) if wall > 0 else None,
                "bytes_per_token": round(n_bytes / max(1, total), 3),
            }
        )
        run.add_output("packed", out)
    if meta["val_tokens"] < cfg.seq_len + 1 and cfg.val_fraction > 0:
        print(
            f"warning: validation split has {meta['val_tokens']} tokens, fewer than one window "
            f"of {cfg.seq_len + 1}; raise --val-fraction or add data"
        )
    print(
        f"packed {meta['train_docs']} + {meta['val_docs']} documents -> {meta['train_tokens']} train "
        f"+ {meta['val_tokens']} val tokens ({meta['dtype']}) in {wall:.2f} s "
        f"({run.summary['tokens_per_s']} tokens/s)"
    )
    print(f"saved: {out.resolve()}")
    return 0
