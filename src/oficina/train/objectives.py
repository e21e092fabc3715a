"""Objectives: small objects that turn a batch into a loss. The one loop calls them all alike.

    loss, n_tokens = objective(model, batch)

* ``CausalLM``       next-token cross-entropy (pretraining, continued pretraining);
* ``SFT``            the same, where the data set the prompt's targets to -100, so only the
                     response tokens carry loss;
* ``Classification`` / ``Regression``  a sequence head (cross-entropy / mean squared error);
* ``KD``             forward KL(teacher || student) at temperature T, times T², mixed with the
                     cross-entropy on the real next token: ``alpha*KL + (1-alpha)*CE``. On
                     plain causal decoders both models' output layers run only at the target
                     positions (for SFT rows: the few label tokens, not ~130 x 49k logits),
                     and the teacher's logits there are cached per row: from the second epoch
                     on the teacher does not run at all (``TEACHER_CACHE_MB``).
                     Token-level KD needs one vocabulary; ``check_same_vocab`` says otherwise
                     and points at sequence-level distillation (teacher generations as SFT
                     targets, ``oficina distill --method sequence``).

Losses are computed in float32 even under bf16 autocast (a softmax over 49k logits in bf16
loses the small probabilities that make up most of the loss).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from oficina.errors import UserError
from oficina.train.checkpoint import unwrap
from oficina.train.data import IGNORE
from oficina.train.fused_ce import (
    causal_lm_parts,
    fused_linear_cross_entropy,
    is_plain_causal,
    strip_wrappers,
)


def _model_inputs(batch: dict) -> dict:
    kw = {"input_ids": batch["input_ids"]}
    if "attention_mask" in batch:
        kw["attention_mask"] = batch["attention_mask"]
    return kw


def mask_is_redundant(batch: dict) -> bool:
    """Can a causal decoder drop this batch's attention mask without changing the loss?

    Yes when every row is right-padded (its mask is ones then zeros) and no padded position
    carries a target: under causal attention a real token attends only to the tokens before
    it, all real, and position ids count from 0 either way, so every output the loss reads is
    the same; padded positions still compute, but nothing reads them. Without a mask SDPA
    takes its plain causal kernel (``is_causal``) instead of building and applying a
    ``[batch, 1, len, len]`` mask in every layer.
    """
    mask = batch.get("attention_mask")
    if mask is None:
        return True
    if not bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return False  # left padding, or holes: the mask matters
    return bool((batch["targets"][mask == 0] == IGNORE).all())


def _causal_inputs(batch: dict) -> dict:
    """The decoder's inputs for a causal-LM loss: the mask only where it changes the loss."""
    if mask_is_redundant(batch):
        return {"input_ids": batch["input_ids"]}
    return _model_inputs(batch)


def _last_hidden(decoder: nn.Module, batch: dict) -> torch.Tensor:
    """A plain causal decoder's last hidden state for ``batch``: ``[batch, len, d]``."""
    return decoder(**_causal_inputs(batch), use_cache=False).last_hidden_state


def _plain_causal(model) -> bool:
    """Is ``model`` (under DDP, compile or PEFT) a decoder whose attention is purely causal?"""
    m = strip_wrappers(unwrap(model))  # DDP's module first: strip_wrappers stops at DDP
    return m is not None and is_plain_causal(m)


class Objective(ABC):
    name = "objective"

    @abstractmethod
    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        """(summed loss over the batch's target tokens or rows, how many there were)."""


class CausalLM(Objective):
    """Mean next-token cross-entropy over the target tokens that are not -100.

    ``fused=True`` (the default) computes it from the decoder's last hidden state with the
    chunked output-layer + cross-entropy of ``oficina.train.fused_ce`` whenever the model
    allows (see ``causal_lm_parts``: not under DDP/FSDP, not for heads with soft-capping);
    the same loss and gradients without the ``[tokens, vocab]`` float32 logits.
    """

    name = "causal-lm"

    def __init__(self, fused: bool = True, chunk_size: int | None = None):
        self.fused, self.chunk_size = fused, chunk_size

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        targets = batch["targets"]
        n = int((targets != IGNORE).sum())
        parts = causal_lm_parts(model) if self.fused else None
        if parts is not None:  # a plain causal decoder (causal_lm_parts checks its type)
            decoder, head = parts
            hidden = _last_hidden(decoder, batch)
            loss = fused_linear_cross_entropy(
                hidden, head.weight, targets, IGNORE, chunk_size=self.chunk_size
            )
            return loss, n
        inputs = _causal_inputs(batch) if _plain_causal(model) else _model_inputs(batch)
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        return loss, n


class SFT(CausalLM):
    """Supervised fine-tuning: CausalLM on data whose prompt targets are masked (-100)."""

    name = "sft"


class Classification(Objective):
    name = "classification"

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        logits = model(**_model_inputs(batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"]), int(batch["attention_mask"].sum())


class Regression(Objective):
    name = "regression"

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        pred = model(**_model_inputs(batch)).logits.float().squeeze(-1)
        return F.mse_loss(pred, batch["labels"].float()), int(batch["attention_mask"].sum())


def check_same_vocab(teacher_tok, student_tok, teacher_vocab: int, student_vocab: int) -> None:
    """Token-level KD compares distributions over the same token ids: refuse anything else."""
    if teacher_vocab != student_vocab or teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UserError(
            f"teacher and student vocabularies differ ({teacher_vocab} vs {student_vocab} "
            "logits, or different token ids), so token-level distillation cannot compare their "
            "distributions; use sequence-level distillation instead (--method sequence: the "
            "teacher's generations become the student's SFT targets)"
        )


# Memory for the teacher's cached logits (float32, one vocabulary-wide row per target token:
# 196 KB for SmolLM2's 49k). The ladder's demo distillation holds ~200 targets (80 rows of 1-3
# label tokens): ~40 MB. Rows past the budget are not cached (they run the teacher every time);
# nothing is evicted, as an LRU over epochs that cycle through more rows than fit would never
# hit.
TEACHER_CACHE_MB = 1024


def _row_keys(batch: dict, keep: torch.Tensor) -> list[bytes | None]:
    """One key per row for what the teacher's logits at its targets depend on: its real tokens,
    where they sit (left padding shifts position ids) and which of them are targets. None for a
    row without targets."""
    ids, targets = batch["input_ids"], batch["targets"]
    mask = batch.get("attention_mask")
    keys: list[bytes | None] = []
    for i in range(ids.shape[0]):
        if not bool(keep[i].any()):
            keys.append(None)
            continue
        real = mask[i].bool() if mask is not None else torch.ones_like(ids[i], dtype=torch.bool)
        offset = int(real.int().argmax())
        keys.append(
            offset.to_bytes(4, "little")
            + ids[i][real].numpy().tobytes()
            + targets[i][real].numpy().tobytes()
        )
    return keys


class KD(Objective):
    """alpha * T² * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, next token).

    Both terms read the logits only at the target positions (targets not -100). ``fused=True``
    (the default) therefore runs the output layers there alone when both models are plain
    causal decoders (``causal_lm_parts``): each decoder's last hidden state, its kept rows,
    then the head — the same loss and student gradients as the full logits, without the
    ``[tokens, vocab]`` logits of two models (for the ladder's SFT rows 1-3 of ~130 positions
    a row carry a target). Other models, and ``fused=False``, take the full logits.

    On that fused path the teacher's logits at a row's targets are cached by the row's content
    (``_row_keys``), up to ``cache_mb``: the teacher is frozen and deterministic, so a row seen
    in an earlier epoch is not run through it again. The teacher's forward is about half of a
    distillation step (a 135M teacher's 2N FLOPs a token against a 64M student's 6N), so every
    epoch after the first costs about half: 1.78x faster steps measured (``benchmarks/train.py
    --what distill-step``). A row's logits computed in another batch differ from this batch's
    only by float rounding.

    The teacher is frozen and only run under ``no_grad``; ``frozen_models()`` names it so
    ``fit`` stores its linear weights in bf16 for a bf16 run (``train/frozen.py``). The cache
    belongs to one run: build a new ``KD`` for another (the key does not hold the precision).
    """

    name = "kd"

    def __init__(
        self,
        teacher,
        temperature: float = 2.0,
        alpha: float = 0.5,
        fused: bool = True,
        cache_mb: float = TEACHER_CACHE_MB,
    ):
        if temperature <= 0:
            raise UserError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.T, self.alpha, self.fused = temperature, alpha, fused
        self.cache: dict[bytes, torch.Tensor] = {}
        self.cache_bytes, self.cache_limit = 0, int(cache_mb * 2**20)

    def frozen_models(self) -> list[nn.Module]:
        """Models this objective runs frozen, under ``no_grad``: the teacher."""
        return [self.teacher]

    def _teacher_logits(self, decoder, head, batch: dict, keep: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits at the kept positions (row-major), running it only on
        the rows the cache does not hold."""
        keys = _row_keys(batch, keep)
        miss = [i for i, k in enumerate(keys) if k is not None and k not in self.cache]
        fresh: dict[bytes, torch.Tensor] = {}
        if miss:
            idx = torch.tensor(miss)
            sub = {k: batch[k].index_select(0, idx) for k in ("input_ids", "attention_mask", "targets") if k in batch}  # fmt: skip
            sub_keep = keep.index_select(0, idx)
            with torch.no_grad():
                logits = head(_last_hidden(decoder, sub)[sub_keep]).float()
            for i, part in zip(miss, logits.split(sub_keep.sum(1).tolist()), strict=True):
                fresh[keys[i]] = part
                size = part.numel() * part.element_size()
                if self.cache_bytes + size <= self.cache_limit:
                    self.cache[keys[i]] = part
                    self.cache_bytes += size
        parts = [fresh[k] if k in fresh else self.cache[k] for k in keys if k is not None]
        if not parts:  # no targets: NaN loss downstream, as F.cross_entropy gives
            return torch.zeros(0, head.weight.shape[0])
        return torch.cat(parts)

    def _kept_logits(self, model, batch: dict, rows: torch.Tensor, keep: torch.Tensor):
        """(teacher, student) float32 logits at the flat positions ``rows``, or None when
        either model is not a plain causal decoder."""
        s_parts = causal_lm_parts(model) if self.fused else None
        t_parts = causal_lm_parts(self.teacher) if s_parts is not None else None
        if t_parts is None:
            return None
        t = self._teacher_logits(*t_parts, batch, keep.view_as(batch["targets"]))
        decoder, head = s_parts
        hidden = _last_hidden(decoder, batch)
        return t, head(hidden.flatten(0, 1).index_select(0, rows)).float()

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        targets = batch["targets"].flatten()
        keep = targets != IGNORE
        rows = keep.nonzero().squeeze(1)
        kept = self._kept_logits(model, batch, rows, keep)
        if kept is not None:
            t_logits, s = kept
            s_all, ce_targets = s, targets.index_select(0, rows)
        else:
            inputs = _model_inputs(batch)
            with torch.no_grad():
                t_logits = self.teacher(**inputs).logits.float().flatten(0, 1)[keep]
            s_all, ce_targets = model(**inputs).logits.float().flatten(0, 1), targets
        if s_all.shape[-1] != t_logits.shape[-1]:
            raise UserError(
                f"teacher has {t_logits.shape[-1]} logits, student {s_all.shape[-1]}: use "
                "sequence-level distillation (--method sequence)"
            )
        # the mean over the kept targets either way (NaN when there are none)
        ce = F.cross_entropy(s_all, ce_targets, ignore_index=IGNORE)
        s = s_all if kept is not None else s_all[keep]
        log_ps = F.log_softmax(s / self.T, dim=-1)
        log_pt = F.log_softmax(t_logits / self.T, dim=-1)
        kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * self.T**2
        return self.alpha * kl + (1 - self.alpha) * ce, int(keep.sum())
