"""Many LoRA adapters on one base (``oficina.infer.adapters``): one model object in memory, and
a DecodeBatch mixing rows of the base and of two adapters gives every row what its adapter gives
it served alone (a separate ``Engine.from_spec(base, adapter=...)``)."""

from __future__ import annotations

import pytest
from helpers import make_tiny_lora

from oficina.infer.adapters import load_shared
from oficina.infer.engine import DecodeBatch, Engine, SamplingParams

PROMPTS = {
    "base": "def foo(x):",
    "a": "The quick brown fox jumps over the lazy dog",
    "b": "def foo(x):",  # the same prompt as the base row: only the adapter tells them apart
}


@pytest.fixture(scope="module")
def loras(tiny_lm, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return {k: make_tiny_lora(tiny_lm, d / k, seed) for k, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def shared(tiny_lm, loras):
    return load_shared(str(tiny_lm), {"base": None, "a": str(loras["a"]), "b": str(loras["b"])})


@pytest.fixture(scope="module")
def alone(tiny_lm, loras, tiny_engine):
    """Each served on its own, as before: the bare base and one PeftModel per adapter."""
    return {
        "base": tiny_engine,
        **{k: Engine.from_spec(str(tiny_lm), adapter=str(p), name=k) for k, p in loras.items()},
    }


def _params(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True, logprobs=0)


def test_one_base_in_memory(shared, tiny_engine):
    models = {id(e.model.shared) for e in shared.values()}
    assert len(models) == 1
    params = dict(shared["a"].model.shared.named_parameters())
    names = list(params)
    # one copy of each base weight (counted in numbers: tiny_engine's q/k/v are fused into one
    # tensor, oficina.infer.fuse), plus the LoRA weights of both adapters
    base = sum(p.numel() for n, p in params.items() if "lora_" not in n)
    assert base == sum(p.numel() for p in tiny_engine.model.parameters())
    assert any(".adapter1." in n for n in names) and any(".adapter2." in n for n in names)
    assert {e.adapter_name for e in shared.values()} == {"__base__", "adapter1", "adapter2"}


@pytest.mark.parametrize("join_at", [0, 3])
def test_mixed_adapter_batch_equals_each_adapter_alone(shared, alone, join_at):
    rows = {k: shared[k].make_rows([PROMPTS[k]], [_params(10)])[0] for k in PROMPTS}
    batch = DecodeBatch(shared["base"])
    batch.add(rows["base"])
    batch.add(rows["a"])
    k = 0
    while batch or k <= join_at:  # b joins the running batch after join_at steps
        if k == join_at:
            batch.add(rows["b"])
        list(batch.step())  # one step; its text deltas are not needed here
        k += 1
    for name, row in rows.items():
        c = alone[name].generate([PROMPTS[name]], row.params)[0]
        assert row.generated == c.token_ids, name
        got = [t.logprob for t in row.logprobs]
        assert got == pytest.approx([t.logprob for t in c.logprobs], abs=1e-4), name
    # the adapters do change the numbers (else the comparison above proves nothing)
    lp = {k: [t.logprob for t in r.logprobs] for k, r in rows.items()}
    assert lp["base"][0] != pytest.approx(lp["b"][0], abs=1e-3)


def test_each_view_alone_runs_its_own_adapter(shared, alone):
    """generate and scoring through one view (no adapter names given) use that view's adapter."""
    p = _params(6)
    for name in PROMPTS:
        c = shared[name].generate([PROMPTS["a"]], p)[0]
        ref = alone[name].generate([PROMPTS["a"]], p)[0]
        assert c.token_ids == ref.token_ids
        assert [t.logprob for t in c.logprobs] == pytest.approx(
            [t.logprob for t in ref.logprobs], abs=1e-4
        )
        assert shared[name].perplexity([PROMPTS["a"]]) == pytest.approx(
            alone[name].perplexity([PROMPTS["a"]]), rel=1e-5
        )


def test_rows_of_a_shared_base_do_not_join_a_plain_batch(shared, tiny_engine):
    row = shared["a"].make_rows(["hi"], [_params(2)])[0]
    with pytest.raises(ValueError, match="shared base"):
        DecodeBatch(tiny_engine).add(row)


def test_the_prefix_cache_keeps_each_adapter_apart(shared, alone, monkeypatch):
    """A long prompt prefilled for the base is a miss for an adapter's row in the same batch
    (its keys and values differ), and each row still gives what its adapter gives alone."""
    from oficina.infer.prefix_cache import PrefixCache

    cache = PrefixCache(64 * 2**20)
    for e in shared.values():
        monkeypatch.setattr(e, "prefix_cache", cache)
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)  # > 2 blocks
    p = _params(4)

    def run_in_the_base_batch(name: str):
        # the scheduler's way: one DecodeBatch per shared base, whichever view made it
        row = shared[name].make_rows([prompt], [p])[0]
        batch = DecodeBatch(shared["base"])
        batch.add(row)
        while batch:
            list(batch.step())  # one step; its text deltas are not needed here
        return row

    run_in_the_base_batch("base")
    assert cache.stats()["blocks"] >= 2 and cache.stats()["hits"] == 0
    got = run_in_the_base_batch("a")
    assert cache.stats()["hits"] == 0  # the base's blocks are not a's
    want = alone["a"].generate([prompt], p)[0]
    assert got.generated == want.token_ids
    lp = [t.logprob for t in got.logprobs]
    assert lp == pytest.approx([t.logprob for t in want.logprobs], abs=1e-4)
    again = run_in_the_base_batch("a")  # now a hit on a's own blocks, and the same numbers
    assert cache.stats()["hits"] == 1
    assert [t.logprob for t in again.logprobs] == pytest.approx(lp, abs=1e-4)


def test_a_classification_head_adapter_is_refused_by_every_generation_path(
    tiny_lm, loras, tmp_path, capsys
):
    """A SEQ_CLS adapter's head would be dropped silently: the engine would score labels with a
    language model its LoRA weights were never trained for. ``eval`` runs the head instead
    (tests/evals/test_eval_head.py); one saved without its head config is one line there."""
    import json
    import shutil

    from oficina.cli import main
    from oficina.errors import UserError

    head = tmp_path / "head"
    shutil.copytree(loras["a"], head)
    conf = json.loads((head / "adapter_config.json").read_text())
    (head / "adapter_config.json").write_text(json.dumps({**conf, "task_type": "SEQ_CLS"}))
    with pytest.raises(UserError, match="classification-head adapter") as e:
        Engine.from_spec(str(tiny_lm), adapter=str(head))
    assert e.value.exit_code == 2
    with pytest.raises(UserError, match="classification-head adapter"):
        load_shared(str(tiny_lm), {"base": None, "h": str(head)})
    assert main(["eval", str(tiny_lm), "--adapter", str(head), "--limit", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no head_config.json" in err[0], err
