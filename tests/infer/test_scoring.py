"""The engine's one scoring kernel against independent naive loops written here.

``loglikelihood_naive`` and ``nll_naive`` (in tests/helpers.py) share no code with
``oficina.infer.scoring``: they tokenize with the tokenizer directly, run each sequence alone (no batching, padding or KV
cache) and follow the documented definitions (lm-eval's context/continuation split; the
sliding-window perplexity with BOS, token-weighted over texts).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import nll_naive

from oficina.cli import main
from oficina.errors import UserError
from oficina.infer.engine import Engine
from oficina.infer.scoring import windows

# ---------------------------------------------------------------------------- references


def loglikelihood_naive(model, tok, pairs) -> list[tuple[float, bool]]:
    """lm-eval's ``_encode_pair`` and scoring, one (context, continuation) at a time."""
    out = []
    with torch.no_grad():
        for context, cont in pairs:
            n = len(context) - len(context.rstrip())
            if n:
                context, cont = context[:-n], context[-n:] + cont
            if context:
                ctx_ids = tok(context)["input_ids"]
                cont_ids = tok(context + cont)["input_ids"][len(ctx_ids) :]
            else:
                ctx_ids = [tok.bos_token_id]
                cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
            ids = ctx_ids + cont_ids
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            total, greedy = 0.0, True
            for t in range(len(ctx_ids), len(ids)):
                total += float(lp[t - 1, ids[t]])
                greedy = greedy and int(lp[t - 1].argmax()) == ids[t]
            out.append((total, greedy))
    return out


# ---------------------------------------------------------------------------- log-likelihood

CONTEXTS = [
    "def f(x):\n    return",
    "The for statement is used to iterate over the elements of a sequence. Answer:",
    "x",
    "Answer: ",  # trailing space moves to the continuation
    "",  # no context: conditioned on BOS
    "The yield statem",  # a word cut in two: the joint encoding differs at the boundary
]
CONTS = [
    [" x", " None", " the data model of Python"],
    [" statement", " built-in type"],
    [" = 1", " is not", " in range(10) and something longer"],
    ["yes", "no way"],
    ["Class definitions", " a"],
    ["ent is used", "ent is used in generator functions"],
]


def test_scores_equal_the_naive_reference(engine):
    pairs = [(c, x) for c, xs in zip(CONTEXTS, CONTS, strict=True) for x in xs]
    naive = loglikelihood_naive(engine.model, engine.tokenizer, pairs)
    # batch of 4 contexts (padding), at most 2 continuation rows per pass (cache copied)
    scores, n_prompt, truncated = engine.score_continuations(
        CONTEXTS, CONTS, batch_size=4, max_rows=2
    )
    flat = [s for row in scores for s in row]
    for s, (want, greedy) in zip(flat, naive, strict=True):
        assert s.logprob == pytest.approx(want, abs=1e-4)
        assert s.greedy == greedy
    assert truncated == 0
    assert n_prompt[0] == len(engine.tokenizer(CONTEXTS[0])["input_ids"])
    # loglikelihood (pairs grouped by context, another batch size) is the same kernel
    for (got, g), (want, greedy) in zip(
        engine.loglikelihood(pairs, batch_size=1), naive, strict=True
    ):
        assert got == pytest.approx(want, abs=1e-4) and g == greedy


def test_an_end_token_is_scored_apart_after_each_continuation(engine):
    """``end_id``: the answers keep their own scores; each also gets log p(end | context +
    answer), what a fine-tune's loss adds for the EOS it learned to stop with."""
    eos = engine.tokenizer.eos_token_id
    plain, _, _ = engine.score_continuations(CONTEXTS, CONTS, batch_size=4, max_rows=2)
    ended, _, _ = engine.score_continuations(CONTEXTS, CONTS, batch_size=4, max_rows=2, end_id=eos)
    for row_p, row_e, ctx, conts in zip(plain, ended, CONTEXTS, CONTS, strict=True):
        for p, e, cont in zip(row_p, row_e, conts, strict=True):
            assert (e.logprob, e.n_tokens, e.greedy) == pytest.approx(
                (p.logprob, p.n_tokens, p.greedy), abs=1e-4
            )
            assert p.end_logprob is None
            # One naive forward over context + answer + EOS: the EOS's log-prob at the end.
            with torch.no_grad():
                ids = _joined(engine.tokenizer, ctx, cont) + [eos]
                lp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), -1)
            assert e.end_logprob == pytest.approx(float(lp[-2, eos]), abs=1e-4)


def _joined(tok, context: str, cont: str) -> list[int]:
    """Context + continuation ids by lm-eval's split rule (as ``loglikelihood_naive``)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, cont = context[:-n], context[-n:] + cont
    if not context:
        return [tok.bos_token_id, *tok(cont, add_special_tokens=False)["input_ids"]]
    ctx_ids = tok(context)["input_ids"]
    return ctx_ids + tok(context + cont)["input_ids"][len(ctx_ids) :]


def test_the_split_rule_is_lm_evals_not_separate_encoding(engine):
    """The cut word: the continuation is the joint encoding's tail, not its own encoding."""
    tok = engine.tokenizer
    ctx, cont = CONTEXTS[-1], CONTS[-1][0]
    ctx_ids = tok(ctx)["input_ids"]
    tail = tok(ctx + cont)["input_ids"][len(ctx_ids) :]
    alone = tok(cont, add_special_tokens=False)["input_ids"]
    assert tail != alone  # this pair tells the two rules apart
    (s,), _, _ = engine.score_continuations([ctx], [[cont]])
    assert s[0].n_tokens == len(tail)
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(torch.tensor([ctx_ids + tail])).logits[0], -1)
    want = sum(float(lp[len(ctx_ids) + k - 1, t]) for k, t in enumerate(tail))
    assert s[0].logprob == pytest.approx(want, abs=1e-4)


def test_a_long_context_is_cut_on_the_left_and_bad_continuations_are_refused(engine):
    long = "word " * 2000  # far past the tiny model's 512 positions
    scores, n_prompt, truncated = engine.score_continuations([long], [[" a", " b"]])
    assert truncated == 1 and n_prompt[0] <= engine.context_length - 1
    assert all(math.isfinite(s.logprob) for s in scores[0])
    with pytest.raises(UserError, match="does not fit"):
        engine.score_continuations(["x"], [[" word" * 600]])


# ---------------------------------------------------------------------------- perplexity

TEXTS = [
    "The for statement is used to iterate over the elements of a sequence. " * 3,
    "x = 1",
    "   ",  # skipped: nothing to score
    "Class definitions create a new local namespace.",
]


def test_windows_by_hand():
    # 10 ids (id 0 is the BOS context), window 4, stride 2:
    # targets 1-3 from ids[0:4]; 4-5 from ids[2:6]; 6-7 from ids[4:8]; 8-9 from ids[6:10]
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    scored = [t for s, e, p in windows(100, 16, 5) for t in range(p, e)]
    assert scored == list(range(1, 100))  # each token scored exactly once
    assert all(e - s <= 16 for s, e, _ in windows(100, 16, 5))


@pytest.mark.parametrize("window, stride", [(512, None), (16, 5), (24, 12)])
def test_perplexity_equals_the_naive_loop(engine, window, stride):
    res = engine.text_nll(TEXTS, window=window, stride=stride)
    stride = stride or window // 2
    per_text = [nll_naive(engine.model, engine.tokenizer, t, window, stride) for t in TEXTS]
    per_text = [per_text[0], per_text[1], per_text[3]]
    assert res.tokens == [n for _, n in per_text]
    assert res.nll == pytest.approx([x for x, _ in per_text], abs=1e-3)
    # token-weighted over all texts, not a mean of per-text perplexities
    want = math.exp(sum(x for x, _ in per_text) / sum(n for _, n in per_text))
    assert engine.perplexity(TEXTS, window=window, stride=stride) == pytest.approx(want, rel=1e-5)
    assert res.window == window and (res.windows > len(per_text)) == (window < 512)


def test_perplexity_refuses_nothing_to_score_and_a_bad_stride(engine):
    with pytest.raises(UserError, match="no non-empty text"):
        engine.perplexity(["  ", ""])
    with pytest.raises(UserError, match="stride"):
        engine.perplexity(TEXTS, window=16, stride=16)


def test_quantize_and_eval_print_the_same_perplexity(tiny_lm, tmp_path, capsys, repo_root):
    """The two verbs' code paths give the identical number for the same model and texts."""
    rows = (repo_root / "examples/demo/task/validation.jsonl").read_text().splitlines()[:5]
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(rows) + "\n")
    out = tmp_path / "int8"
    assert (
        main(
            [
                "quantize",
                str(tiny_lm),
                "--method",
                "int8",
                "--out",
                str(out),
                "--eval-texts",
                str(texts),
                "--bench-tokens",
                "2",
                "--window",
                "64",
                "--json",
            ]
        )  # fmt: skip
        == 0
    )
    q = json.loads(capsys.readouterr().out)
    assert q["eval"] == {"texts": 5, "file": str(texts), "window": 64}

    def eval_ppl(model: str) -> dict:
        code = main(
            ["eval", model, "--task", str(texts), "--perplexity", str(texts), "--window", "64",
             "--bootstrap", "10", "--json"]
        )  # fmt: skip
        assert code == 0
        return json.loads(capsys.readouterr().out)["metrics"]["perplexity"]["value"]

    assert eval_ppl(str(tiny_lm)) == q["float"]["perplexity"]
    assert eval_ppl(str(out)) == q["quantized"]["perplexity"]
    # ... and that number is the definition's, by the naive loop
    base = Engine.from_spec(str(tiny_lm))
    naive = [nll_naive(base.model, base.tokenizer, json.loads(r)["text"], 64, 32) for r in rows]
    nll, n = sum(x for x, _ in naive), sum(k for _, k in naive)
    assert q["float"]["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_the_llama_cpp_side_scores_the_same_windows(engine):
    """quantize's llama.cpp perplexity reads the engine's windows; fed the same model's logits
    (a stand-in for llama_cpp.Llama, which may not be installed) it gives the engine's number."""
    from oficina.infer.gguf_export import llama_perplexity
    from oficina.infer.scoring import perplexity_plan

    class FakeLlama:
        def reset(self):
            self.scores = None

        def eval(self, ids):
            with torch.no_grad():
                self.scores = engine.model(torch.tensor([ids])).logits[0].numpy()

    plan = perplexity_plan(engine, TEXTS, window=16, stride=5)
    got = llama_perplexity(FakeLlama(), [(w, first) for _, w, first in plan.jobs])
    assert got == pytest.approx(engine.perplexity(TEXTS, window=16, stride=5), rel=1e-5)
