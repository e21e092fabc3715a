"""Evaluation tasks on the tiny model: metrics add up (scoring: tests/infer/test_scoring.py)."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from oficina.errors import UserError
from oficina.evals import tasks as T

LABELS = ["statement", "expression", "data model", "built-in type", "execution model"]
TEMPLATE = "Passage: {text}\nSection:"


@pytest.fixture(scope="module")
def engine(tiny_lm):
    from oficina.infer.engine import Engine

    return Engine.from_spec(str(tiny_lm), name="tiny")


@pytest.fixture(scope="module")
def rows(repo_root):
    lines = (repo_root / "examples/demo/task/test.jsonl").read_text().splitlines()
    # Short passages keep every prompt inside the tiny model's 512-token context.
    return [{**r, "text": r["text"][:160]} for r in map(json.loads, lines[::8])]


# ---------------------------------------------------------------------------- scoring


def test_trailing_space_moves_to_the_continuation(engine):
    (a,), _, _ = T.score_continuations(engine, ["Answer: "], [["yes"]])
    ((b,),) = [T.score_continuations(engine, ["Answer:"], [[" yes"]])[0][0]]
    assert a[0].logprob == pytest.approx(b.logprob, abs=1e-5)


def test_remote_engine_goes_through_loglikelihood(engine):
    """An engine without .model (a remote one) is scored through its loglikelihood()."""
    remote = SimpleNamespace(loglikelihood=engine.loglikelihood, count_tokens=engine.count_tokens)
    rows = [{"id": 1, "text": "for x in y: pass", "label": "statement"}]
    a = T.classify(remote, rows, LABELS, TEMPLATE, bootstrap=50)
    b = T.classify(engine, rows, LABELS, TEMPLATE, bootstrap=50)
    assert a["scores"][0] == pytest.approx(b["scores"][0], abs=1e-4)


# ---------------------------------------------------------------------------- classification


def test_classify_result_adds_up(engine, rows):
    res = T.classify(engine, rows, LABELS, TEMPLATE, batch_size=4, bootstrap=200)
    assert res["n"] == len(rows) == len(res["predictions"]) == len(res["per_item"])
    for scores, pred in zip(res["scores"], res["predictions"], strict=True):
        assert pred == LABELS[max(range(5), key=lambda k: scores[k])]  # argmax log-likelihood
    assert res["accuracy"] == pytest.approx(sum(res["per_item"]) / len(rows))
    lo, hi = res["ci"]["accuracy"]
    assert lo <= res["accuracy"] <= hi
    lo, hi = res["ci"]["macro_f1"]
    assert lo <= res["macro_f1"] <= hi
    assert sum(map(sum, res["confusion"])) == len(rows)
    prompts = [T.render_prompt(TEMPLATE, r) for r in rows]
    assert res["prompt_tokens_per_item"] == [engine.count_tokens(p) for p in prompts]
    assert res["prompt_tokens_mean"] == pytest.approx(
        sum(res["prompt_tokens_per_item"]) / len(rows)
    )
    assert res["latency_s_per_item"] > 0 and res["tokens_per_s"] > 0
    assert res["truncated_prompts"] == 0


def test_classify_normalised_by_characters(engine, rows):
    res = T.classify(engine, rows, LABELS, TEMPLATE, normalize="chars", bootstrap=50)
    for scores, pred in zip(res["scores"], res["predictions"], strict=True):
        per_char = [s / len(lab) for s, lab in zip(scores, LABELS, strict=True)]
        assert pred == LABELS[per_char.index(max(per_char))]


def test_classify_refuses_unknown_labels(engine):
    with pytest.raises(UserError, match="not one of the labels"):
        T.classify(engine, [{"text": "x", "label": "poetry"}], LABELS, TEMPLATE)


def test_render_prompt_by_hand():
    shots = [{"text": "a = 1", "label": "statement"}, {"text": "1 + 2", "label": "expression"}]
    got = T.render_prompt(TEMPLATE, {"text": "x.y"}, shots)
    assert got == (
        "Passage: a = 1\nSection: statement\n\n"
        "Passage: 1 + 2\nSection: expression\n\n"
        "Passage: x.y\nSection:"
    )
    # the same layout as oficina.infer.prompting (and lm-eval's few-shot format)
    from oficina.infer.prompting import render_fewshot

    assert got == render_fewshot(TEMPLATE, shots, {"text": "x.y"})
    # per-query selection, and a literal prefix
    assert T.render_prompt(TEMPLATE, {"text": "q"}, lambda row: shots[:1]).startswith(
        "Passage: a = 1"
    )
    assert T.render_prompt(TEMPLATE, {"text": "q"}, "PREFIX\n") == "PREFIX\nPassage: q\nSection:"
    with pytest.raises(UserError, match="field"):
        T.render_prompt("{question}", {"text": "q"})


def test_examples_render_by_their_own_template_and_as_chat_turns(engine):
    shots = [{"text": "a = 1", "label": "statement"}, {"text": "1 + 2", "label": "expression"}]
    with_passage = "Context: {context}\n" + TEMPLATE
    row = {"text": "x.y", "context": "P"}
    # a query with its passage shows examples without theirs
    assert T.render_prompt(with_passage, row, shots, example_template=TEMPLATE) == (
        "Passage: a = 1\nSection: statement\n\n"
        "Passage: 1 + 2\nSection: expression\n\n"
        "Context: P\nPassage: x.y\nSection:"
    )
    # as chat turns: each example a user turn answered by the assistant, the query last
    got = T.render_chat_prompt(engine, with_passage, row, shots, example_template=TEMPLATE)
    assert got == (
        "<|im_start|>user\nPassage: a = 1\nSection:<|im_end|>\n"
        "<|im_start|>assistant\nstatement<|im_end|>\n"
        "<|im_start|>user\nPassage: 1 + 2\nSection:<|im_end|>\n"
        "<|im_start|>assistant\nexpression<|im_end|>\n"
        "<|im_start|>user\nContext: P\nPassage: x.y\nSection:<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert T.render_chat_prompt(engine, TEMPLATE, row) == (
        "<|im_start|>user\nPassage: x.y\nSection:<|im_end|>\n<|im_start|>assistant\n"
    )
    # generation asks exactly that prompt
    qa_shots = [{"text": x["text"], "answer": x["label"]} for x in shots]
    res = T.generate_task(
        engine, [{**row, "answer": "x"}], with_passage, qa_shots, chat=True,
        example_template=TEMPLATE, reference_field="answer", max_new_tokens=1, bootstrap=100,
    )  # fmt: skip
    assert res["prompt_tokens_per_item"] == [len(engine.encode(got))]


def test_fewshot_prompts_cost_more_tokens(engine, rows):
    zero = T.classify(engine, rows[:3], LABELS, TEMPLATE, bootstrap=50)
    few = T.classify(engine, rows[:3], LABELS, TEMPLATE, fewshot=rows[3:5], bootstrap=50)
    assert few["prompt_tokens_mean"] > zero["prompt_tokens_mean"] + 20


# ---------------------------------------------------------------------------- multiple choice


def test_multiple_choice(engine):
    rows = [
        {"id": "q1", "question": "2 + 2 =", "choices": ["4", "five", "22"], "answer": 0},
        {"id": "q2", "question": "The capital of France is", "choices": ["Rome", "Paris"], "answer": "Paris"},
    ]  # fmt: skip
    res = T.multiple_choice(engine, rows, "Q: {question}\nA:", bootstrap=50)
    assert res["golds"] == [0, 1]
    for scores, row, pred in zip(res["scores"], rows, res["predictions"], strict=True):
        assert len(scores) == len(row["choices"])
        assert pred == scores.index(max(scores))
    assert res["accuracy"] == res["acc"]  # normalize="none" is lm-eval's acc
    norm = [
        [s / len(c) for s, c in zip(sc, r["choices"], strict=True)]
        for sc, r in zip(res["scores"], rows, strict=True)
    ]
    acc_norm = sum(n.index(max(n)) == g for n, g in zip(norm, [0, 1], strict=True)) / 2
    assert res["acc_norm"] == acc_norm
    with pytest.raises(UserError, match="not one of its choices"):
        T.multiple_choice(
            engine, [{"question": "x", "choices": ["a", "b"], "answer": "c"}], "{question}"
        )


# ---------------------------------------------------------------------------- generation


class _Scripted:
    """An engine that answers from a script: tests the metric plumbing, not a model."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, params):
        return [
            SimpleNamespace(text=self.answers[p], prompt_tokens=len(p.split()), completion_tokens=3)
            for p in prompts
        ]


def test_generation_metrics_by_hand():
    rows = [
        {"id": 1, "question": "Eiffel?", "answer": "the Eiffel Tower"},
        {"id": 2, "question": "Cat?", "answer": "a cat sat down"},
        {"id": 3, "question": "Police?", "answers": ["police kill the gunman", "zzz"]},
    ]
    eng = _Scripted(
        {
            "Q: Eiffel?\nA:": " Eiffel tower!\nmore text after the stop",
            "Q: Cat?\nA:": " the cat sat",
            "Q: Police?\nA:": " police killed the gunman",
        }
    )
    res = T.generate_task(
        eng, rows[:2], "Q: {question}\nA:", reference_field="answer", bootstrap=50
    )
    # item 1: cut at "\n" -> "Eiffel tower!" == "the Eiffel Tower" after normalisation: EM 1, F1 1
    # item 2: "the cat sat" vs "a cat sat down": EM 0, F1 0.8 (see test_eval_metrics)
    assert res["predictions"][0] == "Eiffel tower!"
    assert res["exact_match"] == pytest.approx(0.5)
    assert res["token_f1"] == pytest.approx((1 + 0.8) / 2)
    # ROUGE-L: item 1 [eiffel, tower] vs [the, eiffel, tower]: LCS 2, P 1, R 2/3 -> F 0.8
    #          item 2 [the, cat, sat] vs [a, cat, sat, down]: LCS 2, P 2/3, R 1/2 -> F 4/7
    assert res["rouge_l"] == pytest.approx((0.8 + 4 / 7) / 2)
    res3 = T.generate_task(
        eng, rows[2:], "Q: {question}\nA:", reference_field="answers", bootstrap=50
    )
    assert res3["rouge_l"] == pytest.approx(0.75) and res3["exact_match"] == 0.0
    assert res3["tokens_per_s"] > 0  # generated tokens per second


def test_generation_on_the_engine(engine):
    rows = [{"id": k, "prompt": f"def f{k}(x):", "answer": "return x"} for k in range(3)]
    res = T.generate_task(engine, rows, max_new_tokens=4, batch_size=2, bootstrap=50)
    assert len(res["predictions"]) == 3 and all(isinstance(p, str) for p in res["predictions"])
    assert res["timing"]["generated_tokens"] > 0
    for name in ("exact_match", "token_f1", "rouge_l"):
        lo, hi = res["ci"][name]
        assert 0 <= lo <= res[name] <= hi <= 1


# ---------------------------------------------------------------------------- perplexity


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_lm):
    """All-zero weights -> all-zero logits -> p = 1/V for every token -> perplexity = V."""
    from oficina.models.sources import load_causal_lm

    model, tok = load_causal_lm(str(tiny_lm))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    texts = ["The for statement is used to iterate.", "x = 1"]
    res = T.perplexity_details(model, texts, tokenizer=tok, bootstrap=50)
    V = model.config.vocab_size
    assert res["perplexity"] == pytest.approx(V, rel=1e-4)
    assert res["ci"]["perplexity"] == pytest.approx([V, V], rel=1e-4)
    # bits per byte = tokens * log2(V) / bytes
    n_tok = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert res["tokens"] == n_tok
    assert res["bits_per_byte"] == pytest.approx(n_tok * math.log2(V) / sum(map(len, texts)))


def test_perplexity_sliding_window(engine, tiny_lm):
    text = "The for statement is used to iterate over the elements of a sequence. " * 6
    ids = [engine.tokenizer.bos_token_id] + engine.tokenizer(text, add_special_tokens=False)[
        "input_ids"
    ]
    # by hand: one forward over the whole text, mean NLL of tokens 1..n-1
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), -1)
    nll = -lp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum().item()
    whole = T.perplexity_details(engine, [text], max_length=512, bootstrap=50)
    assert whole["windows"] == 1
    assert whole["perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
    # small windows: every token still scored once, with less context (a bit worse or close)
    small = T.perplexity_details(engine, [text], max_length=16, stride=8, bootstrap=50)
    assert small["tokens"] == whole["tokens"] and small["windows"] > 5
    assert small["perplexity"] == pytest.approx(whole["perplexity"], rel=0.25)
    # the bare-model call gives the same number as the engine call
    assert T.perplexity(engine.model, [text], tokenizer=engine.tokenizer, max_length=512) == (
        pytest.approx(whole["perplexity"])
    )
    with pytest.raises(UserError):
        T.perplexity(engine, ["  ", ""])


def test_score_continuations_leaves_the_engine_untouched(engine):
    """The prompt cache is copied per chunk; scoring twice gives the same numbers."""
    before = copy.deepcopy(engine.model.state_dict())
    a = T.score_continuations(engine, ["abc"], [[" d", " e f g"]], max_rows=1)[0]
    b = T.score_continuations(engine, ["abc"], [[" d", " e f g"]], max_rows=8)[0]
    assert [s.logprob for s in a[0]] == pytest.approx([s.logprob for s in b[0]], abs=1e-5)
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, before[k])
