"""The trained rungs on a generation task (question -> reference answer) and the ``lora_rag``
rung (LoRA trained and asked with retrieved passages), on the tiny random model.

A tiny QA task (30 questions about topics of the Python reference, each answered by a span of
its topic) is split by the ladder itself. What the random model answers is never asserted, only
what the rung trains on and what it must report whatever it answers.
"""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

import pytest
from helpers import read_jsonl, write_jsonl

# The classification context of test_ladder_rungs (21 training rows, 3 validation, 6 test).
from test_ladder_rungs import NO_SEARCH, ctx, task_files  # noqa: F401

from oficina.evals.metrics import token_f1
from oficina.evals.tasks import render_prompt
from oficina.ladder.context import LadderContext
from oficina.ladder.result import Cost, RungResult
from oficina.ladder.run import LadderConfig, load_task
from oficina.ladder.rungs import (
    PASSAGES,
    CptLora,
    Distill,
    Full,
    Lora,
    LoraRag,
    Quantize,
    Rag,
    Retrieval,
)
from oficina.workspace import start_run

TOPICS = list(topics)[:30]


@pytest.fixture(params=["auto"])
def qa(request, tiny_lm, tmp_path):
    """The QA context; ``chat`` auto (the tiny model has a chat template: prompts go as chat
    turns) unless a test parametrizes it indirectly."""
    rows = [
        {
            "question": f"What does the reference say about {k}?",
            "answer": " ".join(topics[k].split()[:6]),
        }
        for k in TOPICS
    ]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    docs = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"id": k, "title": k, "text": topics[k][:2000]} for k in TOPICS[:6]],
    )
    cfg = LadderConfig(
        out=str(tmp_path / "out"), data=str(data), docs=str(docs), base_model=str(tiny_lm),
        metric="token_f1", chat=request.param,
    )  # fmt: skip
    task, corpus = load_task(cfg)
    assert task.kind == "generation"
    with start_run("ladder", cfg) as run:
        yield LadderContext(cfg, run, task, corpus)


def check_generated(r, qa) -> None:
    """What a rung reports on a generation task, whatever the model generated."""
    assert r.status == "ok", r.reason
    assert len(r.predictions) == len(qa.test) == 6 and r.metric == "token_f1"
    assert r.golds == [row["answer"] for row in qa.test]
    f1 = [token_f1(p, g) for p, g in zip(r.predictions, r.golds, strict=True)]
    assert r.per_item == pytest.approx(f1)  # each item scored against its own reference
    assert r.quality == pytest.approx(sum(f1) / 6)
    assert {"exact_match", "token_f1", "rouge_l"} <= set(r.extra_metrics)
    assert r.training.flops > 0 and r.loss_curve and r.training_run["steps"] > 0


def trained_rows(rung, qa, tmp_path) -> tuple[list[dict], list[dict], object]:
    """The (training, validation) rows the rung's recipe reads, and its config."""
    hp, _ = rung.hyperparameters(qa)
    _, cfg = rung.recipe(qa, hp, tmp_path / "unused")
    return read_jsonl(Path(cfg.data)), read_jsonl(Path(cfg.val_data)), cfg


def sft_of(qa, template: str, rows: list[dict], extra=lambda r: {}) -> list[dict]:
    """The SFT rows the evaluation's prompts make: the template rendered (with ``extra``'s
    fields) and the answer — as a user turn and the assistant's reply when the ladder asks in
    chat turns, else as a prompt and " " + the answer."""
    out = []
    for r in rows:
        prompt = render_prompt(template, {**r, **extra(r)})
        if qa.chat:
            turns = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": r["answer"]},
            ]
            out.append({"id": r["id"], "messages": turns})
        else:
            out.append({"id": r["id"], "prompt": prompt, "completion": " " + r["answer"]})
    return out


SMALL = {"max_steps": 2, "batch_size": 4, **NO_SEARCH}


@pytest.mark.parametrize("qa", ["auto", "off"], indirect=True)
@pytest.mark.parametrize("cls", [Lora, Full, CptLora, Distill], ids=lambda c: c.name)
def test_trained_rungs_train_on_sft_rows_of_a_generation_task(cls, qa, tiny_lm, tmp_path):
    extra = {"cpt_steps": 1, "seq_len": 64} if cls is CptLora else {}
    if cls is Distill:  # its teacher: the best fine-tuned model by the task's metric
        extra = {"keep_layers": 1}
        qa.finetuned = {"lora": (str(tiny_lm), None, 0.1), "full": (str(tiny_lm), None, 0.4)}
        qa.results.append(RungResult(name="full", training=Cost(usd=2.5)))  # the teacher's
    rung = cls(cls.Settings(**SMALL, **extra))
    r = rung.run(qa)
    check_generated(r, qa)
    train, val, cfg = trained_rows(rung, qa, tmp_path)
    # SFT rows: the prompt the evaluation asks, the reference answer as the completion, in
    # chat turns when the evaluation asks in them (the tiny model has a template: auto -> on).
    assert qa.chat is (qa.cfg.chat == "auto")
    assert cfg.template is None and getattr(cfg, "labels", None) is None
    assert train == sft_of(qa, qa.template, qa.train)
    assert val == sft_of(qa, qa.template, qa.val)
    assert Path(cfg.data).parent == qa.out / "data"
    if cls is Distill:
        assert r.artifacts["teacher"] == str(tiny_lm) and r.params_total < qa.base_params()
        assert r.built_on == "full" and r.training.usd > 2.5  # the teacher's training included
    else:  # a fine-tuned model, scored by the task's metric: a teacher and a quantization source
        assert qa.finetuned[cls.name][2] == pytest.approx(r.quality)


@pytest.mark.parametrize("qa", ["auto", "off"], indirect=True)
def test_the_loss_falls_on_the_answer_only(qa, tiny_lm, tmp_path):
    from oficina.models.sources import load_tokenizer
    from oficina.train.data import IGNORE, load_jsonl_dataset

    train, _, cfg = trained_rows(Lora(Lora.Settings(**SMALL)), qa, tmp_path)
    tok = load_tokenizer(str(tiny_lm))
    ds = load_jsonl_dataset(cfg.data, tok, cfg.max_len, cfg.task, cfg.template, cfg.labels)
    assert ds.task == "sft" and len(ds.examples) == len(train)
    for ex, row, r in zip(ds.examples, train, qa.train, strict=True):
        target = [t for t in ex.labels if t != IGNORE]
        if qa.chat:  # the reply and the end of its turn: it learns to stop as the template does
            assert tok.decode(target) == r["answer"] + "<|im_end|>\n"
            # ... after exactly the prompt it will be asked with
            asked = qa.base_engine().render_chat(
                [{"role": "user", "content": row["messages"][0]["content"]}]
            )
            assert ex.ids[: len(ex.ids) - len(target)] == qa.base_engine().encode(asked)
        else:
            assert target[-1] == tok.eos_token_id  # and it learns to stop after the answer
            assert tok.decode(target[:-1]).strip() == row["completion"].strip()


@pytest.mark.parametrize("qa", ["auto", "off", "on"], indirect=True)
def test_every_prompting_rung_asks_in_chat_turns_when_the_ladder_does(qa):
    from oficina.ladder.rungs import FewShot, ZeroShot

    eng = qa.base_engine()

    def tokens(prompt: str) -> int:
        if qa.chat:
            prompt = eng.render_chat([{"role": "user", "content": prompt}])
        return len(eng.encode(prompt))

    assert qa.chat is (qa.cfg.chat != "off")
    zero = ZeroShot(ZeroShot.Settings()).run(qa)
    raw = [render_prompt(qa.template, r) for r in qa.test]
    assert zero.inference.prompt_tokens_mean == pytest.approx(
        sum(tokens(p) for p in raw) / len(raw)
    )
    # the latency pass asks as the quality pass did
    timed = ZeroShot(ZeroShot.Settings()).latency_probe(qa, zero)(qa.test[:2])
    assert timed["prompt_tokens_per_item"] == [tokens(p) for p in raw[:2]]
    # solved examples go inside the one user turn
    few = FewShot(FewShot.Settings(shots=2, strategy="random")).run(qa)
    assert few.inference.prompt_tokens_mean > zero.inference.prompt_tokens_mean


def test_chat_on_is_refused_for_classification(ctx):  # noqa: F811
    from oficina.errors import UserError

    ctx.cfg = ctx.cfg.model_copy(update={"chat": "on"})
    ctx._chat = None
    with pytest.raises(UserError, match="chat: on is for generation tasks"):
        _ = ctx.chat


def test_a_search_scores_sft_rows_by_their_validation_loss(qa):
    s = Lora.Settings(max_epochs=1, batch_size=4, patience=0, search={"trials": 2})
    r = Lora(s).run(qa)
    check_generated(r, qa)
    trials = r.search["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 2 and all(t["value"] > 0 for t in trials)
    assert r.hyperparameters["lr"] == min(trials, key=lambda t: t["value"])["params"]["lr"]


def test_quantize_takes_the_best_model_fine_tuned_on_answers(qa):
    qa.results.append(Lora(Lora.Settings(**SMALL)).run(qa))  # as the ladder keeps it
    r = Quantize(Quantize.Settings()).run(qa)
    assert r.status == "ok" and "from lora" in r.description and len(r.per_item) == 6
    assert r.built_on == "lora" and r.training.flops == qa.results[0].training.flops > 0


RAG = {"k": 1, "mode": "bm25", "precision": "bf16"}


@pytest.mark.integration  # embeds the documents with the packaged MiniLM
def test_lora_rag_trains_and_answers_with_the_retrieved_passages(qa, tmp_path):
    # What building this index cost the first time in this ladder (a slow build, planted): the
    # one-off cost every retrieving rung reports.
    index_cost = Cost(wall_time_s=1000.0, flops=0.0, peak_memory_mb=1.0, usd=1.0)
    qa.shared[str(qa.out / "rag-index-bf16")] = index_cost
    rag = Rag(Rag.Settings(**RAG)).run(qa)
    rung = LoraRag(LoraRag.Settings(**SMALL, **RAG))
    r = rung.run(qa)
    check_generated(r, qa)
    retrieval = Retrieval(qa, Rag.Settings(**RAG))
    passages = lambda row: {"context": retrieval.passages(row)}  # noqa: E731
    train, val, cfg = trained_rows(LoraRag(LoraRag.Settings(**SMALL, **RAG)), qa, tmp_path)
    # It trained on the prompts rag asks, each with its own row's passages, and the answers.
    template = PASSAGES + qa.template
    assert train == sft_of(qa, template, qa.train, passages)
    assert val == sft_of(qa, template, qa.val, passages)
    assert all("Reference passages:\n[1] (topic: " in x["messages"][0]["content"] for x in train)
    # Asked with the passages too: rag's very prompts, token for token.
    assert r.inference.prompt_tokens_mean == rag.inference.prompt_tokens_mean
    # Its training pays for the index, as rag pays for it once; it teaches no passage-less rung.
    assert rag.training == index_cost
    assert r.training.wall_time_s > 1000.0 and r.training.usd > 1.0 and r.training.flops > 0
    assert r.artifacts["index"] == rag.artifacts["index"] and r.data["corpus_documents"] == 6
    assert "lora_rag" not in qa.finetuned and r.hyperparameters["k"] == 1
    assert "1 bm25 passages" in r.description
    retrieval.close()


@pytest.mark.integration  # embeds the documents with the packaged MiniLM
def test_lora_rag_on_classification_trains_on_rows_with_their_passages(ctx):  # noqa: F811
    rung = LoraRag(LoraRag.Settings(**SMALL, **RAG))
    files = rung.training_files(ctx)
    retrieval = rung.retrieval(ctx)
    rows = read_jsonl(files.train)
    assert files.template == PASSAGES + ctx.template and files.labels == ctx.labels
    assert [x["id"] for x in rows] == [x["id"] for x in ctx.train]
    assert [x["context"] for x in rows] == [retrieval.passages(x) for x in ctx.train]
    assert [x["label"] for x in read_jsonl(files.val)] == [x["label"] for x in ctx.val]
    retrieval.close()
