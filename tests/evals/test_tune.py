"""``oficina tune``: the space and its errors, pruning fed by fit's validation, CV folds, the
outputs, and a study that survives a SIGKILL (real processes on the workspace SQLite)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from oficina.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pack(tiny_lm, tmp_path_factory) -> Path:
    """The demo reference packed with the tiny tokenizer, as examples/tune_tiny.yaml says."""
    from oficina.data.pack import PackConfig
    from oficina.data.pack import run as pack_run

    out = tmp_path_factory.mktemp("pack") / "demo"
    pack_run(
        PackConfig(
            input=[str(ROOT / "examples/demo/reference.jsonl")],
            tokenizer=str(tiny_lm),
            out=str(out),
            seq_len=64,
            val_fraction=0.1,
        )
    )
    return out


def tiny_config(tmp_path: Path, pack: Path, **tune) -> Path:
    """examples/tune_tiny.yaml pointed at the test's shards."""
    cfg = yaml.safe_load((ROOT / "examples/tune_tiny.yaml").read_text())
    cfg["data"] = str(pack)
    cfg["tune"].update(tune)
    p = tmp_path / "tune.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def trials_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


# ---------------------------------------------------------------------------- bad input


def _fails(capsys, args: list[str], *needles: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_space_metric_and_storage_stop_before_training(tmp_path, pack, capsys):
    cfg = tiny_config(tmp_path, pack)
    out = tmp_path / "out"
    space = tmp_path / "space.yaml"

    space.write_text("train.lrr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    _fails(capsys, ["tune", str(cfg), "--space", str(space), "--out", str(out)],
           "unknown key 'train.lrr'", "train.lr", "train.warmup_steps", "max_steps")  # fmt: skip
    space.write_text("train.lr: {type: loguniform, low: 1.0e-2, high: 1.0e-2}\n")
    _fails(capsys, ["tune", str(cfg), "--space", str(space), "--out", str(out)], "empty range")
    space.write_text("train.batch_size: []\n")
    _fails(capsys, ["tune", str(cfg), "--space", str(space), "--out", str(out)], "empty choices")
    space.write_text("train.batch_size: {type: int, low: 0, high: 4}\n")  # the verb needs >= 1
    _fails(capsys, ["tune", str(cfg), "--space", str(space), "--out", str(out)],
           "train.batch_size", "0")  # fmt: skip
    _fails(capsys, ["tune", str(cfg), "--metric", "accuracy", "--out", str(out)],
           "metric 'accuracy'", "val_loss")  # fmt: skip
    url = "postgresql://nobody:secret@127.0.0.1:1/none"
    err = _fails(capsys, ["tune", str(cfg), "--storage", url, "--out", str(out)], "cannot reach")
    assert "secret" not in err  # the password is never printed
    assert not out.exists()  # nothing written, no trial run
    from oficina.workspace import list_runs

    assert list_runs(verb="pretrain") == []


# ---------------------------------------------------------------------------- the loop hook


def test_fit_hook_adds_metrics_and_stops_training(tiny_lm, pack, tmp_path):
    from oficina.train.loop import FitHooks
    from oficina.train.recipes import PretrainConfig, pretrain

    seen = []

    def on_eval(step, metrics):
        seen.append((step, dict(metrics)))
        return step >= 10  # stop at the second validation

    cfg = PretrainConfig(
        model="tiny", data=str(pack), out=str(tmp_path / "m"), max_steps=40,
        train={"eval_every": 5, "eval_batches": 2, "batch_size": 2, "precision": "fp32"},
    )  # fmt: skip
    s = pretrain(cfg, hooks=FitHooks(lambda model, batches: {"n": len(batches)}, on_eval))
    assert s["steps"] == 10 and s["max_steps"] == 40 and s["stopped"] == "on_eval"
    assert [st for st, _ in seen] == [5, 10]
    assert seen[0][1]["val_n"] == 2 and seen[0][1]["val_loss"] > 0
    from oficina.workspace import get_run

    rows = [json.loads(x) for x in (Path(get_run(s["run_id"])["dir"]) / "metrics.jsonl").open()]
    assert [r["val_n"] for r in rows if "val_n" in r] == [2, 2]


# ---------------------------------------------------------------------------- a search


def test_tiny_example_search_writes_best_trials_report_and_records_runs(tmp_path, pack, capsys):
    """A grid with two hopeless learning rates: once a trial is complete (5 trials: 1 startup),
    a hopeless one is pruned at its second validation and costs only those steps."""
    cfg = tiny_config(tmp_path, pack)
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: [0.002, 0.003, 0.004, 1.0e-9, 2.0e-9]\n")
    out = tmp_path / "out"
    args = ["tune", str(cfg), "--space", str(space), "--sampler", "grid", "--trials", "5"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trial 5 of 5" in printed and "best" in printed and "left" in printed

    rows = trials_of(out)
    assert sorted(r["number"] for r in rows) == [0, 1, 2, 3, 4]
    assert {json.dumps(r["params"]) for r in rows} == {
        json.dumps({"train.lr": v}) for v in (0.002, 0.003, 0.004, 1e-9, 2e-9)
    }
    example = yaml.safe_load((ROOT / "examples/tune_tiny.yaml").read_text())
    every, steps = example["train"]["eval_every"], example["max_steps"]
    hopeless_checked = 0
    for r in rows:
        assert {"number", "state", "params", "value", "cost"} <= set(r)
        assert r["cost"] == r["curve"][-1][0]  # the steps it ran = its last validation step
        if r["params"]["train.lr"] < 1e-6:
            good_before = sum(
                x["state"] == "COMPLETE" and x["params"]["train.lr"] > 1e-6
                for x in rows
                if x["number"] < r["number"]
            )
            if good_before >= 1:
                assert r["state"] == "PRUNED" and r["cost"] == 2 * every, r
                hopeless_checked += 1
        elif r["state"] == "COMPLETE":
            assert r["cost"] == steps
        else:  # a good rate can trail a finished trial's curve, judged from the 2nd validation
            assert r["state"] == "PRUNED" and r["cost"] >= 2 * every, r
    assert hopeless_checked >= 1  # the grid's seeded order puts one after a good one
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = min(complete, key=lambda r: r["value"])

    meta = json.loads((out / "tune.json").read_text())
    assert meta["best"]["number"] == best["number"] and meta["best"]["value"] == best["value"]
    assert meta["trial_steps"] == sum(r["cost"] for r in rows)
    assert meta["trial_steps_unpruned"] == steps * 5
    assert meta["pruning_saved"] == round(1 - meta["trial_steps"] / (steps * 5), 4) > 0

    from oficina.config import load
    from oficina.train.recipes import PretrainConfig

    best_cfg = load(PretrainConfig, out / "best.yaml")  # the verb's own --config
    assert best_cfg.train.lr == best["params"]["train.lr"]
    assert best_cfg.data == str(pack) and best_cfg.max_steps == steps

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "pruning saved" in page

    from oficina.workspace import get_run

    for r in rows:  # every trial is a recorded pretrain run with its trial's learning rate
        (run_id,) = r["run_ids"]
        rec = get_run(run_id)
        assert rec["verb"] == "pretrain" and rec["status"] == "completed"
        assert json.loads(rec["config"])["train"]["lr"] == r["params"]["train.lr"]
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())
    first, second = rows[0], rows[1]
    assert main(["runs", "compare", first["run_ids"][0], second["run_ids"][0], "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["config_diff"]["train.lr"] == [
        first["params"]["train.lr"],
        second["params"]["train.lr"],
    ]
    assert cmp["metrics"]["steps"] == [first["cost"], second["cost"]]

    assert main(["tune", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"best: trial #{best['number']}" in shown and "pruned" in shown

    # A rerun of a finished study trains nothing more and keeps the same results.
    assert main([*args, "--out", str(out)]) == 0
    assert trials_of(out) == rows


# ---------------------------------------------------------------------------- CV


def test_stratified_folds_keep_the_label_mix():
    from oficina.evals.tune import stratified_folds

    rows = [{"label": "a"}] * 10 + [{"label": "b"}] * 7 + [{"label": "c"}] * 2
    folds = stratified_folds(rows, 3, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(len(rows)))  # a partition
    for lab in "abc":
        per = [sum(rows[i]["label"] == lab for i in f) for f in folds]
        assert max(per) - min(per) <= 1, (lab, per)
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1


@pytest.fixture
def clf_rows(tmp_path) -> Path:
    labels = ["alpha", "beta", "gamma"]
    words = {"alpha": "class def return", "beta": "for while in", "gamma": "import from as"}
    f = tmp_path / "train.jsonl"
    f.write_text(
        "".join(
            json.dumps({"text": f"{words[lab]} {i}", "label": lab}) + "\n"
            for i in range(8)
            for lab in labels
        )
    )
    (tmp_path / "test.jsonl").write_text("not json: a test split the search must not read\n")
    return f


def _full_finetune_search(tmp_path, tiny_lm, data, max_steps: int, train: dict) -> Path:
    """A full fine-tune of the tiny model on labelled rows with a learning-rate space."""
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "verb": "finetune",
                "model": str(tiny_lm),
                "method": "full",
                "data": str(data),
                "max_len": 16,
                "max_steps": max_steps,
                "out": str(tmp_path / "model"),
                "train": train,
                "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            }
        )
    )
    return cfg


def test_cv_scores_each_trial_as_the_mean_over_stratified_folds(tiny_lm, clf_rows, tmp_path):
    train = {"eval_every": 3, "batch_size": 4, "precision": "fp32", "lr": 1e-3}
    cfg = _full_finetune_search(tmp_path, tiny_lm, clf_rows, 6, train)
    from oficina.workspace import get_run

    def fold_runs(r: dict) -> list[tuple[dict, list[dict]]]:
        out = []
        for run_id in r["run_ids"]:
            rec = get_run(run_id)
            logged = [json.loads(x) for x in (Path(rec["dir"]) / "metrics.jsonl").open()]
            out.append((json.loads(rec["config"]), logged))
        return out

    # Accuracy of the classification head: each fold's score is what its run logged at the
    # step whose weights were kept, and the trial's value is their mean.
    out = tmp_path / "acc"
    code = main(["tune", str(cfg), "--cv", "3", "--metric", "accuracy", "--trials", "2",
                 "--pruner", "off", "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = trials_of(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for r in rows:
        assert len(r["cv_scores"]) == 3 and len(r["run_ids"]) == 3
        assert r["value"] == pytest.approx(sum(r["cv_scores"]) / 3)
        assert r["cost"] == 3 * 6
        seen_val: list[str] = []
        for (c, logged), score in zip(fold_runs(r), r["cv_scores"], strict=True):
            assert c["labels"] == ["alpha", "beta", "gamma"]  # one label order for all folds
            assert Path(c["data"]).name.endswith("-train.jsonl")
            seen_val.append(Path(c["val_data"]).name)
            evals = [x for x in logged if "val_loss" in x]
            best = min(evals, key=lambda x: x["val_loss"])  # fit keeps the best val-loss weights
            assert score == best["val_accuracy"] and 0 <= score <= 1
            assert {"val_macro_f1"} <= set(best)
        assert seen_val == ["fold0-val.jsonl", "fold1-val.jsonl", "fold2-val.jsonl"]
    meta = json.loads((out / "tune.json").read_text())
    assert meta["best"]["cv_std"] is not None and meta["direction"] == "maximize"

    # Validation loss differs from fold to fold (other rows), so the mean is a real mean.
    out = tmp_path / "loss"
    code = main(["tune", str(cfg), "--cv", "3", "--trials", "1", "--pruner", "off",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    (r,) = trials_of(out)
    assert len(set(r["cv_scores"])) == 3
    assert r["value"] == pytest.approx(sum(r["cv_scores"]) / 3)
    assert r["cv_std"] == pytest.approx(float(np.std(r["cv_scores"])))


# ---------------------------------------------------------------------------- SIGKILL


def _study(out_name: str, ws: Path):
    import optuna

    return optuna.load_study(study_name=out_name, storage=f"sqlite:///{ws / 'tune.db'}")


def test_sigkill_mid_study_then_rerun_finishes_the_plan_without_repeats(tmp_path, pack):
    from optuna.trial import TrialState

    cfg = tiny_config(tmp_path, pack)
    data = yaml.safe_load(cfg.read_text())
    data.update(max_steps=120)  # long enough trials to be killed inside one
    data["train"].update(eval_every=20)
    cfg.write_text(yaml.safe_dump(data))
    out, ws = tmp_path / "killed", tmp_path / "ws"
    args = [sys.executable, "-m", "oficina.cli", "tune", str(cfg), "--trials", "4",
            "--pruner", "off", "--out", str(out)]  # fmt: skip
    e = {**env(), "OFICINA_HOME": str(ws)}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(args, env=e, stdout=log, stderr=subprocess.STDOUT)
    killed_number = None
    try:
        deadline = time.monotonic() + 600
        while killed_number is None:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the study never reached a second trial"
            time.sleep(0.3)
            if "trials planned" not in (tmp_path / "first.log").read_text():
                continue  # not before the worker has made the database and the study
            try:
                trials = _study("killed", ws).get_trials(deepcopy=False)
            except Exception:  # noqa: BLE001 - the study is not created yet
                continue
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            inside = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
            if done and inside:  # one finished, and one is training past its first validation
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_number = inside[0].number
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {
        t.number: (t.params, t.value)
        for t in _study("killed", ws).get_trials()
        if t.state == TrialState.COMPLETE
    }
    left = [t for t in _study("killed", ws).get_trials() if t.state == TrialState.RUNNING]
    assert [t.number for t in left] == [killed_number]

    rerun = subprocess.run(args, env=e, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1 trial(s) of a killed worker marked failed" in rerun.stdout
    trials = _study("killed", ws).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4  # the plan, exactly
    for n, (params, value) in before.items():  # finished trials kept, never trained again
        assert trials[n].params == params and trials[n].value == value
    assert trials[killed_number].state == TrialState.FAIL
    retried = [t for t in finished if t.number > killed_number and t.params == left[0].params]
    assert len(retried) == 1  # the killed point was tried again, once
    rows = trials_of(out)
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 4
    run_ids = [i for r in rows for i in r["run_ids"]]
    assert len(run_ids) == len(set(run_ids))


def test_demo_example_is_a_valid_lora_search_with_cv(monkeypatch, tmp_path):
    """examples/tune_demo.yaml passes every check that runs before training."""
    from oficina.evals.tune import TuneConfig, prepare

    monkeypatch.chdir(ROOT)
    s = prepare(TuneConfig(spec="examples/tune_demo.yaml", out=str(tmp_path / "demo")))
    assert s.verb == "finetune" and s.base.method == "lora"
    assert (s.metric, s.direction, s.cfg.cv, s.cfg.pruner) == ("accuracy", "maximize", 3, "median")
    assert {p.key: p.kind for p in s.space} == {"train.lr": "float", "lora.r": "categorical"}
    assert s.base.out == "workspace/models/smollm2-demo-tuned"  # best.yaml keeps the verb's out


def test_a_diverging_trial_fails_alone_and_the_search_goes_on(tmp_path, pack, capsys):
    """lr 1e30 without clipping overflows the weights: fit stops on the NaN/inf loss; that
    trial is FAIL with the reason, the other point of the grid still completes and wins."""
    cfg = tiny_config(tmp_path, pack)
    data = yaml.safe_load(cfg.read_text())
    data["train"].update(max_grad_norm=0)
    data["space"] = {"train.lr": [1.0e30, 0.002]}
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["tune", str(cfg), "--sampler", "grid", "--trials", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "every point of the grid has been tried" in printed and "failed (" in printed
    rows = {r["params"]["train.lr"]: r for r in trials_of(out)}
    assert rows[1e30]["state"] == "FAIL" and rows[0.002]["state"] == "COMPLETE"
    assert "stopped before the optimizer step" in rows[1e30]["error"]
    meta = json.loads((out / "tune.json").read_text())
    assert meta["failed"] == 1 and meta["best"]["params"] == {"train.lr": 0.002}


def test_timeout_starts_no_trial_after_it(tmp_path, pack, capsys):
    cfg = tiny_config(tmp_path, pack)
    out = tmp_path / "out"
    args = ["tune", str(cfg), "--trials", "3", "--timeout", "1e-9", "--out", str(out)]
    assert main(args) == 0
    assert "--timeout 1e-09s reached" in capsys.readouterr().out
    meta = json.loads((out / "tune.json").read_text())
    assert meta["finished"] <= 1 < meta["planned"] == 3  # the check runs before each trial
    # the space-filling start queued 2 trials; one never drawn is not a row with no params
    assert all(r["state"] != "WAITING" and r["params"] for r in trials_of(out))


@pytest.mark.parametrize("pruner", ["halving", "hyperband"])
def test_multi_fidelity_pruners_run_a_study(tmp_path, pack, pruner):
    cfg = tiny_config(tmp_path, pack)
    out = tmp_path / "out"
    assert main(["tune", str(cfg), "--trials", "4", "--pruner", pruner, "--out", str(out)]) == 0
    rows = trials_of(out)
    assert len(rows) == 4 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    steps = yaml.safe_load((ROOT / "examples/tune_tiny.yaml").read_text())["max_steps"]
    for r in rows:  # a trial stops only at a validation: its cost is a multiple of eval_every
        assert r["cost"] % 8 == 0 and 8 <= r["cost"] <= steps
        assert r["cost"] == (steps if r["state"] == "COMPLETE" else r["curve"][-1][0])


def test_each_fold_is_scored_on_all_its_rows_and_its_kept_model_gives_that_score(tiny_lm, tmp_path):
    """A fold's score is its head's accuracy over every row of its validation file (not the
    first train.eval_batches batches: on a file in topic order those are a biased sample), and
    the fold's saved model scores exactly that when run again."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from oficina.evals.tune import classification_metrics
    from oficina.train.data import eval_batches, load_jsonl_dataset
    from oficina.workspace import get_run

    labels = ["alpha", "beta", "gamma"]
    words = {"alpha": "class def return", "beta": "for while in", "gamma": "import from as"}
    rows = [{"text": f"{words[lab]} {i}", "label": lab} for lab in labels for i in range(9)]
    data = tmp_path / "train.jsonl"  # grouped by label, like the demo's topic order
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # one batch of 4 of a fold's 9 validation rows, unless tune raises it
    train = {"eval_every": 2, "eval_batches": 1, "batch_size": 4, "precision": "fp32", "lr": 1e-3}
    cfg = _full_finetune_search(tmp_path, tiny_lm, data, 4, train)
    out = tmp_path / "acc"
    code = main(["tune", str(cfg), "--cv", "3", "--metric", "accuracy", "--trials", "1",
                 "--pruner", "off", "--keep-models", "--out", str(out)])  # fmt: skip
    assert code == 0
    (r,) = trials_of(out)
    for i, (run_id, score) in enumerate(zip(r["run_ids"], r["cv_scores"], strict=True)):
        rec = get_run(run_id)
        logged = [json.loads(x) for x in (Path(rec["dir"]) / "metrics.jsonl").open()]
        evals = [x for x in logged if "val_loss" in x]
        assert evals and all(x["val_rows"] == 9 for x in evals)  # every row of the fold
        fold = out / "trials" / "0000" / f"fold{i}"
        tok = AutoTokenizer.from_pretrained(fold)
        model = AutoModelForSequenceClassification.from_pretrained(fold)
        val = out / "trials" / "0000" / f"fold{i}-val.jsonl"
        ds = load_jsonl_dataset(val, tok, 16, "classification", label_names=labels)
        again = classification_metrics(model, eval_batches(ds, 4, None))
        assert again["rows"] == 9 and score == pytest.approx(again["accuracy"])


def test_best_yaml_reruns_scoring_all_its_validation_rows(tiny_lm, clf_rows, tmp_path):
    """best.yaml's re-run keeps the step of its best validation loss: over every row of its
    val_data, as the trials were scored (train.eval_batches raised to cover them)."""
    from oficina.evals.tune import TuneConfig, prepare

    val = tmp_path / "val.jsonl"
    val.write_text(clf_rows.read_text())  # 24 rows: 6 batches of 4
    spec = {
        "verb": "finetune", "model": str(tiny_lm), "method": "full", "data": str(clf_rows),
        "val_data": str(val), "out": str(tmp_path / "m"), "max_steps": 2,
        "train": {"eval_batches": 2, "batch_size": 4},
        "space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    }  # fmt: skip
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    s = prepare(TuneConfig(spec=str(cfg), out=str(tmp_path / "t"), metric="accuracy"))
    assert s.base.train.eval_batches == 6
    spec["train"]["eval_batches"] = 9  # more than enough already: left as it is
    cfg.write_text(yaml.safe_dump(spec))
    s = prepare(TuneConfig(spec=str(cfg), out=str(tmp_path / "t"), metric="accuracy"))
    assert s.base.train.eval_batches == 9


@pytest.mark.parametrize(
    "ci, reproduced", [([0.40, 0.56], True), ([0.40, 0.54], False), ([0.66, 0.80], False)]
)
def test_show_rerun_reports_the_winners_curse_gap(tmp_path, capsys, ci, reproduced):
    """`tune show DIR --rerun EVAL` sets the best trial's CV score (0.60 ± 0.05) against the
    eval of its re-trained model: the gap, and whether that eval's interval meets the CV mean ±
    sd."""
    out = tmp_path / "search"
    out.mkdir()
    best = {"number": 3, "value": 0.60, "params": {"train.lr": 1e-3}, "cv_std": 0.05}
    meta = {"verb": "finetune", "study": "s", "metric": "accuracy", "direction": "maximize",
            "planned": 4, "finished": 4, "pruned": 1, "trial_steps": 90,
            "pruning_saved": 0.25, "best": best}  # fmt: skip
    (out / "tune.json").write_text(json.dumps(meta))
    (out / "trials.jsonl").write_text("")
    ev = tmp_path / "eval-run"
    ev.mkdir()
    metrics = {"accuracy": {"value": 0.48, "ci": ci}, "macro_f1": {"value": 0.4, "ci": [0, 1]}}
    (ev / "metrics.json").write_text(json.dumps({"metrics": metrics, "task": {"items": 91}}))
    assert main(["tune", "show", str(out), "--rerun", str(ev), "--json"]) == 0
    g = json.loads(capsys.readouterr().out)["rerun"]
    assert g["gap"] == pytest.approx(0.48 - 0.60) and g["reproduced"] is reproduced
    assert (g["cv_mean"], g["cv_std"], g["items"]) == (0.60, 0.05, 91)
    assert main(["tune", "show", str(out), "--rerun", str(ev)]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("re-run:")]
    assert len(line) == 1 and "gap -0.1200" in line[0]
    assert ("NOT reproduced" in line[0]) is not reproduced
    (ev / "metrics.json").write_text(json.dumps({"metrics": {"perplexity": metrics["accuracy"]}}))
    assert main(["tune", "show", str(out), "--rerun", str(ev)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reports no accuracy" in err[0], err


def test_a_three_trial_search_prunes_after_its_first_trial():
    """The ladder searches 3 trials: the median pruner must start comparing after one finished
    trial (with optuna's 5, or 3, startup trials it never pruned anything there)."""
    import optuna

    from oficina.evals.tune import _pruner

    study = optuna.create_study(pruner=_pruner("median", 10, 3))
    good = study.ask()
    for step, v in ((10, 1.2), (20, 0.8)):
        good.report(v, step)
    study.tell(good, 0.8)
    worse, better = study.ask(), study.ask()
    for t, vs in ((worse, (9.0, 1.1)), (better, (9.0, 0.7))):
        t.report(vs[0], 10)
        assert not t.should_prune()  # the first validation is the warm-up: never judged
        t.report(vs[1], 20)
    assert worse.should_prune() and not better.should_prune()
    # A long study keeps 3 startup trials: one finished trial is too few to judge by.
    long = optuna.create_study(pruner=_pruner("median", 10, 20))
    first = long.ask()
    first.report(0.8, 20)
    long.tell(first, 0.8)
    late = long.ask()
    late.report(1.1, 20)
    assert not late.should_prune()
    # One validation per epoch and the ladder's prune_after of one epoch: judged at the first.
    epochs = optuna.create_study(pruner=_pruner("median", 10, 3, after=10))
    done = epochs.ask()
    done.report(0.8, 10)
    epochs.tell(done, 0.8)
    behind = epochs.ask()
    behind.report(1.5, 10)
    assert behind.should_prune()
    # spare: a trial behind the median is judged only once it falls below its own best
    spared = optuna.create_study(direction="maximize", pruner=_pruner("median", 10, 3, 10, True))
    done = spared.ask()
    for step, v in ((10, 0.375), (20, 0.40), (30, 0.45)):
        done.report(v, step)
    spared.tell(done, 0.45)
    slow = spared.ask()
    slow.report(0.275, 10)
    assert not slow.should_prune()  # behind, but one validation says nothing of its trend
    slow.report(0.30, 20)
    assert not slow.should_prune()  # behind, still rising
    slow.report(0.25, 30)
    assert slow.should_prune()  # fell below its best, and behind the median
    ahead = spared.ask()
    for step, v in ((10, 0.5), (20, 0.6), (30, 0.55)):
        ahead.report(v, step)
    assert not ahead.should_prune()  # fell, but ahead of the median


def test_a_small_search_starts_from_points_that_fill_its_ranges():
    """TPE's startup trials are independent random draws, and a 2-4 trial search is mostly its
    startup: the demo's LoRA search once drew lr 7.1e-4 and 8.0e-4 of [2e-4, 2e-3]. The start
    is a centred Latin hypercube: each range cut into n strata (log-scaled for a log range),
    each trial in the middle of a different one."""
    from oficina.evals.tune import _param, start_points

    lr = _param("train.lr", {"type": "loguniform", "low": 2e-4, "high": 2e-3})
    rank = _param("lora.r", {"type": "int", "low": 4, "high": 16})
    size = _param("train.batch_size", [4, 8])
    frac = _param("train.warmup_ratio", {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05})
    two = start_points([lr, rank, size, frac], 2, seed=0)
    assert sorted(p["train.lr"] for p in two) == pytest.approx([2e-4 * 10**0.25, 2e-4 * 10**0.75])
    assert sorted(p["lora.r"] for p in two) == [7, 13]  # 13 integers: the 4th and the 10th
    assert sorted(p["train.batch_size"] for p in two) == [4, 8]
    assert sorted(p["train.warmup_ratio"] for p in two) == [0.05, 0.15]  # of 5: the 2nd and the 4th
    for n in (3, 4, 7):  # every stratum of every range taken once, whatever the seed
        for seed in (0, 1):
            pts = start_points([lr, rank], n, seed)
            strata = sorted(int(n * math.log(p["train.lr"] / 2e-4) / math.log(10)) for p in pts)
            assert strata == list(range(n))
            assert len({p["lora.r"] for p in pts}) == n
    # the seed pairs the strata, it does not move them
    pairs = {tuple(sorted((p["train.lr"], p["lora.r"]) for p in start_points([lr, rank], 4, s)))
             for s in range(6)}  # fmt: skip
    assert len(pairs) > 1
    assert {p["train.lr"] for p in start_points([lr], 4, 0)} == {
        p["train.lr"] for p in start_points([lr], 4, 5)
    }


def test_a_tpe_study_runs_its_space_filling_start_first(tmp_path, pack):
    from oficina.evals.tune import _param, start_points

    cfg = tiny_config(tmp_path, pack)
    out = tmp_path / "out"
    assert main(["tune", str(cfg), "--trials", "2", "--pruner", "off", "--out", str(out)]) == 0
    space = yaml.safe_load(cfg.read_text())["space"]
    expected = start_points([_param(k, v) for k, v in space.items()], 2, seed=0)
    assert [r["params"] for r in sorted(trials_of(out), key=lambda r: r["number"])] == expected
    lrs = sorted(p["train.lr"] for p in expected)  # the quartiles of 1e-4..3e-2 in log space
    assert lrs == pytest.approx([1e-4 * 300**0.25, 1e-4 * 300**0.75])


# ---------------------------------------------------------------------------- workers


def test_workers_share_the_plan_each_trial_in_its_own_process(tmp_path, pack, capsys):
    """--workers 2: two forked processes draw from one study; together they finish the plan
    once (no trial twice, none lost), each trial's summary comes back to the caller, and each
    worker trains with its share of the threads."""
    from oficina.evals.tune import TuneConfig, search, verb_class

    threads = {}

    def entry(cfg, hooks=None):
        import torch

        threads[os.getpid()] = torch.get_num_threads()  # seen only in the worker's copy
        s = verb_class("pretrain")[1](cfg, hooks=hooks)
        from oficina.train import loop

        return {**s, "threads": torch.get_num_threads(), "pid": os.getpid(), "bar": loop.BAR_LINE}

    out = tmp_path / "out"
    results: dict[int, dict] = {}
    cfg = TuneConfig(spec=str(tiny_config(tmp_path, pack)), out=str(out), trials=4, workers=2)
    meta = search(cfg, entry=entry, results=results)
    assert "2 workers" in capsys.readouterr().out
    rows = trials_of(out)
    assert meta["finished"] == 4 and sorted(r["number"] for r in rows) == [0, 1, 2, 3]
    pids = {int(r["worker"].split(":")[1]) for r in rows}
    assert len(pids) == 2 and os.getpid() not in pids and not threads
    assert sorted(results) == [0, 1, 2, 3]
    for r in rows:  # the summary of the trial that ran in that worker
        s = results[r["number"]]
        assert s["pid"] == int(r["worker"].split(":")[1]) and s["steps"] == r["cost"]
        assert s["threads"] == max(1, __import__("torch").get_num_threads() // 2)
    assert {results[n]["bar"] for n in results} == {0, 1}  # a progress bar line per worker


def test_a_workers_error_is_raised_by_the_caller_and_a_dead_worker_is_named(tmp_path, pack):
    from oficina.errors import UserError
    from oficina.evals.tune import TuneConfig, search

    def refuse(cfg, hooks=None):
        raise UserError("refused on purpose", exit_code=2)

    cfg = TuneConfig(spec=str(tiny_config(tmp_path, pack)), out=str(tmp_path / "a"), trials=2)
    with pytest.raises(UserError, match="refused on purpose") as e:
        search(cfg.model_copy(update={"workers": 2}), entry=refuse)
    assert e.value.exit_code == 2  # the worker's error as it was raised there

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("cannot pickle")

    def odd(cfg, hooks=None):
        raise Unpicklable("a local exception class")

    cfg = cfg.model_copy(update={"workers": 2, "out": str(tmp_path / "c"), "study": "c"})
    with pytest.raises(UserError, match=r"tune worker \d: a local exception class"):
        search(cfg, entry=odd)  # its text, not a worker that seems to have died

    def die(cfg, hooks=None):
        os._exit(9)  # as the OOM killer would: no word to the parent

    cfg = cfg.model_copy(update={"workers": 2, "out": str(tmp_path / "b"), "study": "b"})
    with pytest.raises(UserError, match=r"tune worker \d died \(exit code 9\)"):
        search(cfg, entry=die)


def test_workers_popping_queued_trials_at_once_never_take_the_same_one(tmp_path):
    """SQLite ignores SELECT ... FOR UPDATE and Python's sqlite3 opens a transaction only at
    the first write, so two workers could both read trial 0 as WAITING and both run it (CI
    saw the second's tell fail: "Trial#0 has already finished"). Four processes popping 60
    queued trials as fast as they can: each trial is taken exactly once."""
    import multiprocessing as mp

    import optuna

    from oficina.evals.tune import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="race")
    for i in range(60):
        study.enqueue_trial({"x": float(i)})
    ctx = mp.get_context("fork")
    q, go = ctx.Queue(), ctx.Event()

    def pop() -> None:
        mine = optuna.load_study(study_name="race", storage=open_storage(url))
        go.wait()
        taken = []
        while (trial_id := mine._pop_waiting_trial_id()) is not None:
            taken.append(trial_id)
        q.put(taken)

    procs = [ctx.Process(target=pop) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()
    taken = [t for _ in procs for t in q.get(timeout=120)]
    for p in procs:
        p.join()
    assert sorted(taken) == sorted(t._trial_id for t in study.trials)  # once each, none lost


def test_time_left_counts_the_trials_other_workers_are_running():
    """After this worker's trial, with another worker's trial 30 s into a 100 s pace: that
    one needs ~70 s more, and the not-started ones are shared between the two workers."""
    from datetime import timedelta

    import optuna

    from oficina.evals.tune import _time_left

    study = optuna.create_study()
    done = study.ask()
    study.tell(done, 1.0)
    other = study.ask()  # RUNNING in another worker
    now = study.trials[other.number].datetime_start + timedelta(seconds=30)
    assert _time_left(study, 2, 1, 100.0, now=now) == pytest.approx(70.0)  # was 100: 1 x pace
    assert _time_left(study, 5, 1, 100.0, now=now) == pytest.approx(70.0 + 2 * 100.0)  # was 400
    study.tell(other, 1.0)
    assert _time_left(study, 5, 2, 100.0, now=now) == pytest.approx(300.0)  # alone: 3 x pace
