"""Sentence embeddings with a plain Hugging Face encoder: mean pooling, L2-normalised.

The default is the packaged all-MiniLM-L6-v2 (``minilm-l6``, 384 dimensions). Any HF encoder
works by name or directory (``oficina.models.sources.resolve``). The pooling follows the
model's sentence-transformers files when present (``1_Pooling/config.json``,
``sentence_bert_config.json``), so the vectors equal what ``sentence-transformers`` produces:
token embeddings averaged over the attention mask, then divided by their L2 norm.

``precision="bf16"`` runs the encoder under bfloat16 autocast (pooling and normalisation stay
float32): on a CPU with AMX MiniLM embeds ~2.3x faster and every vector keeps a cosine of
>= 0.9999 with the float32 one, but near-ties between passages can swap (on the demo questions
dense recall@5 is unchanged, the calibrated hybrid's cross-validated figure loses one question
of 75), so float32 — the vectors sentence-transformers gives — stays the default.
``precision="auto"`` is bf16 where the CPU has AMX or is AMD with AVX-512 BF16, float32 elsewhere
(``oficina.measure.fast_bf16``: on AVX2 alone bf16 is emulated, and on an Intel Xeon with AVX-512 BF16 alone it is slower).

    from oficina.models.embed import Embedder
    emb = Embedder()                       # minilm-l6
    vecs = emb.encode(["what does yield do?", "the yield statement"])   # (2, 384) float32
    float(vecs[0] @ vecs[1])               # cosine similarity
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from oficina.measure import auto_precision


def _pooling_mode(path: Path) -> str:
    """'mean' (default) or 'cls', from the sentence-transformers pooling config if present."""
    cfg = path / "1_Pooling" / "config.json"
    if cfg.is_file():
        conf = json.loads(cfg.read_text())
        if conf.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def _max_length(path: Path, tokenizer, model_config) -> int:
    """The sequence length the encoder was trained on (sentence-transformers caps MiniLM at 256)."""
    st = path / "sentence_bert_config.json"
    if st.is_file():
        n = json.loads(st.read_text()).get("max_seq_length")
        if n:
            return int(n)
    limits = [getattr(model_config, "max_position_embeddings", None), tokenizer.model_max_length]
    return int(min(x for x in limits if x and x < 1_000_000) or 512)


class Embedder:
    """A text encoder turning strings into unit vectors (float32, shape (n, dim))."""

    def __init__(self, spec: str = "minilm-l6", batch_size: int = 64, precision: str = "fp32"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from oficina.models.safety import check_model_dir, load_errors
        from oficina.models.sources import resolve
        from oficina.workspace import content_hash

        if precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.precision = auto_precision(precision)
        self.name = str(spec)
        self.path = resolve(str(spec))
        check_model_dir(self.path)
        self.batch_size = int(batch_size)
        with load_errors(self.path, "embedding model"):
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(
                self.path, dtype=torch.float32, use_safetensors=True
            ).eval()
        self.pooling = _pooling_mode(self.path)
        self.max_length = _max_length(self.path, self.tokenizer, self.model.config)
        self.dim = int(self.model.config.hidden_size)
        self.model_hash = content_hash(self.path)
        self.calls = 0  # encode() calls that embedded at least one text (tests count re-embedding)
        self.texts_encoded = 0

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def encode(self, texts: list[str], normalize: bool = True) -> np.ndarray:
        import torch

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        self.calls += 1
        self.texts_encoded += len(texts)
        # Sort by length so each batch pads to similar lengths (less wasted compute).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        bf16 = torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), bf16:
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state.float()
                if self.pooling == "cls":
                    vec = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=1)
                out[idx] = vec.float().numpy()
        return out
