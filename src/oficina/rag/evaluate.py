"""``oficina index eval``: recall@k and MRR of BM25, dense and hybrid retrieval, side by side.

The question set is JSONL, one question per line: ``{"question": "...", "relevant": ["doc-id",
...]}`` (``relevant_doc_ids`` or ``doc_ids`` are accepted too). Scores are per *document*:
the top 2 x 10 chunks are retrieved, then collapsed to documents in rank order (a document counts at the rank
of its best chunk), so a long document is not rewarded for having many chunks.

  recall@k  fraction of a question's relevant documents among the first k, averaged
  MRR       1 / rank of the first relevant document (0 when none in the first 10), averaged

``--calibrate`` fits hybrid's BM25 weight and depth (see ``retrieve.py``) on the questions:
every setting of a small grid is scored per question, a 5-fold cross-validation picks a setting
on four folds and scores it on the fifth (the honest figure, printed as "hybrid calibrated"),
then the setting that is best on all questions is stored in the index's ``index.json`` for every
later search (``ask``, the server, the ladder). Later evaluations on the same questions are then
in-sample, and say so.

    oficina index eval workspace/indexes/demo --questions examples/demo/questions.jsonl
    oficina index eval IDX --questions q.jsonl --calibrate
    oficina index eval IDX --questions q.jsonl --k 1 3 5 10 --json
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from pydantic import Field
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from oficina.config import VerbConfig
from oficina.errors import NotFound, UserError
from oficina.rag.retrieve import DEFAULT_FUSION, MODES, Index
from oficina.workspace import atomic_write_json, start_run

MRR_CUTOFF = 10
GRID_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # 0 = dense alone, 1 = plain RRF
GRID_DEPTHS = (20, 40)
FOLDS = 5


class IndexEvalConfig(VerbConfig):
    """Recall@k and MRR of the BM25, dense and hybrid retrievers on a question set."""

    positionals = ("index_dir",)
    index_dir: str = Field(description="index folder written by `oficina index`")
    questions: str = Field(description="JSONL: {question, relevant: [doc ids]} per line")
    k: list[int] = Field([1, 5, 10], description="cut-offs for recall@k")
    calibrate: bool = Field(
        False,
        description="fit hybrid's BM25 weight and depth on these questions (5-fold "
        "cross-validated figure reported) and store them in the index",
    )
    json_: bool = Field(False, alias="json", description="print JSON")


def read_questions(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"question file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{p}:{n} is not valid JSON") from None
        rel = rec.get("relevant") or rec.get("relevant_doc_ids") or rec.get("doc_ids")
        if not isinstance(rec.get("question"), str) or not rel:
            raise UserError(f"{p}:{n} needs 'question' and a non-empty 'relevant' list")
        rows.append({"question": rec["question"], "relevant": [str(r) for r in rel]})
    if not rows:
        raise UserError(f"{p} holds no questions")
    return rows


def ranked_docs(index: Index, question: str, mode: str, n_docs: int, **fusion) -> list[str]:
    """Distinct document ids in rank order (a document ranks at its best chunk)."""
    hits = index.search(question, k=n_docs * 2, mode=mode, **fusion)
    out: list[str] = []
    for h in hits:
        if h.doc_id not in out:
            out.append(h.doc_id)
    return out[:n_docs]


def question_scores(docs: list[str], relevant: list[str], ks: list[int]) -> dict[str, float]:
    """recall@k for each k and the reciprocal rank of one question's ranked documents."""
    rel = set(relevant)
    out = {f"recall@{k}": len(rel & set(docs[:k])) / len(rel) for k in ks}
    first = next((i for i, d in enumerate(docs[:MRR_CUTOFF], 1) if d in rel), None)
    out["mrr"] = 1.0 / first if first else 0.0
    return out


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in rows[0]}


def evaluate(
    index: Index, questions: list[dict], ks: list[int], progress: bool = True, **fusion
) -> dict:
    """Mean recall@k, MRR and ms/query of each retriever; ``fusion`` overrides hybrid's."""
    n_docs = max(max(ks), MRR_CUTOFF)
    results: dict[str, dict] = {}
    for mode in MODES:
        index._qcache.clear()  # each retriever pays for its own query embedding
        t0 = time.perf_counter()
        rows = [
            question_scores(
                ranked_docs(index, q["question"], mode, n_docs, **fusion), q["relevant"], ks
            )
            for q in tqdm(questions, desc=mode, disable=not progress, leave=False)
        ]
        results[mode] = {
            **mean_scores(rows),
            "ms_per_query": round(1000 * (time.perf_counter() - t0) / len(questions), 1),
        }
    return results


def calibrate(
    index: Index, questions: list[dict], ks: list[int], progress: bool = True, seed: int = 0
) -> dict:
    """Cross-validated scores of a calibrated hybrid, and the setting fitted on all questions.

    The objective is recall@5 + MRR (recall@5 is the figure users compare retrievers by; MRR
    breaks ties toward putting the answer first). Ties prefer plain RRF's weight and depth.
    """
    if len(questions) < FOLDS:
        raise UserError(f"--calibrate needs at least {FOLDS} questions, got {len(questions)}")
    n_docs = max(max(ks), MRR_CUTOFF)
    kk = sorted(set(ks) | {5})
    grid = [(w, d) for w in GRID_WEIGHTS for d in GRID_DEPTHS]
    table: dict[tuple[float, int], list[dict[str, float]]] = {}
    for w, d in tqdm(grid, desc="calibrating", disable=not progress, leave=False):
        table[(w, d)] = [
            question_scores(
                ranked_docs(index, q["question"], "hybrid", n_docs, bm25_weight=w, depth=d),
                q["relevant"],
                kk,
            )
            for q in questions
        ]

    def best(members: list[int]) -> tuple[float, int]:
        def key(g: tuple[float, int]) -> tuple:
            obj = sum(table[g][i]["recall@5"] + table[g][i]["mrr"] for i in members)
            return (round(obj, 9), g[0], -abs(g[1] - DEFAULT_FUSION["depth"]))

        return max(grid, key=key)

    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    folds = [order[f::FOLDS] for f in range(FOLDS)]
    held_out: list[dict[str, float]] = []
    for fold in folds:
        held = set(fold)
        members = [i for i in order if i not in held]
        g = best(members)
        held_out += [table[g][i] for i in fold]
    w, d = best(order)
    cv = mean_scores(held_out)
    return {
        "cv": {key: v for key, v in cv.items() if key == "mrr" or int(key[7:]) in ks},
        "bm25_weight": w,
        "depth": d,
        "in_sample": mean_scores(table[(w, d)]),
    }


def run(cfg: IndexEvalConfig) -> int:
    ks = sorted(set(cfg.k))
    if not ks or ks[0] < 1:
        raise UserError("--k needs positive cut-offs")
    questions = read_questions(cfg.questions)
    progress = not cfg.json_
    with start_run("index eval", cfg) as run_:
        run_.add_input("index", Path(cfg.index_dir) / "index.json")
        run_.add_input("questions", cfg.questions)
        index = Index.open(cfg.index_dir)
        index.embed_query("warm-up")  # load the encoder before timing
        fitted = index.meta.get("fusion")
        calib = None
        if cfg.calibrate:
            # The plain-RRF column stays plain; the calibrated one is cross-validated.
            results = evaluate(index, questions, ks, progress, **DEFAULT_FUSION)
            calib = calibrate(index, questions, ks, progress)
            results["hybrid calibrated"] = {**calib["cv"], "ms_per_query": None}
            fitted = {
                "bm25_weight": calib["bm25_weight"],
                "depth": calib["depth"],
                "calibrated_on": str(cfg.questions),
                "questions": len(questions),
                "cv": calib["cv"],
            }
            meta = {**index.meta, "fusion": fitted}
            atomic_write_json(Path(cfg.index_dir) / "index.json", meta)
            run_.add_output("index", Path(cfg.index_dir) / "index.json")
        else:
            results = evaluate(index, questions, ks, progress)
        index.close()
        for mode, row in results.items():
            run_.log({"mode": mode, **row})
            for key, v in row.items():
                run_.summary[f"{mode}.{key}"] = v
        run_.summary["questions"] = len(questions)
    if cfg.json_:
        print(json.dumps({"questions": len(questions), "results": results, "fusion": fitted}))
        return 0
    modes = list(results)
    t = Table(title=f"retrieval on {len(questions)} questions ({Path(cfg.questions).name})")
    t.add_column("metric")
    for mode in modes:
        t.add_column(
            mode + (" (5-fold CV)" if mode == "hybrid calibrated" else ""), justify="right"
        )
    for key in results["bm25"]:
        cells = []
        for m in modes:
            v = results[m].get(key)
            cells.append("" if v is None else f"{v:.1f}" if key == "ms_per_query" else f"{v:.3f}")
        t.add_row(key, *cells)
    Console().print(t)
    if fitted and not cfg.calibrate:
        print(
            f"hybrid uses BM25 weight {fitted['bm25_weight']} and depth {fitted['depth']} fitted on "
            f"{fitted['calibrated_on']} ({fitted['questions']} questions; cross-validated "
            f"recall@5 {fitted['cv'].get('recall@5', float('nan')):.3f}) — on those questions "
            "these figures are in-sample"
        )
    if calib is not None:
        print(
            f"calibrated hybrid: BM25 weight {calib['bm25_weight']}, depth {calib['depth']} "
            f"(stored in {Path(cfg.index_dir) / 'index.json'})"
        )
    if 5 in ks:
        best_single = max(results["bm25"]["recall@5"], results["dense"]["recall@5"])
        hybrid = "hybrid calibrated" if calib is not None else "hybrid"
        h = results[hybrid]["recall@5"]
        verdict = "at least as good as" if h >= best_single else "below"
        print(
            f"{hybrid} recall@5 {h:.3f} is {verdict} the better single retriever "
            f"({best_single:.3f})"
        )
    return 0
