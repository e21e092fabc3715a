"""``--engine ray``: the same stages on a local Ray Data; output identical to the local engine,
near duplicates found across workers and shards."""

from __future__ import annotations

import json

import pytest
from data_planted import prose_corpus, write_jsonl

from oficina.data.pipeline import PrepareConfig, run

pytest.importorskip("ray")

STAGES = [
    {"type": "normalize"},
    {"type": "langid", "languages": ["en", "pt"]},
    {"type": "quality", "min_words": 20},
    {"type": "pii"},
    {"type": "exact_dedup"},
    {"type": "near_dedup", "threshold": 0.8},
    {"type": "spam"},  # a map stage after dedup: a second segment on the workers
]


@pytest.mark.slow
def test_ray_engine_equals_local_engine(tmp_path):
    import pyarrow.parquet as pq
    import ray

    data = write_jsonl(tmp_path / "c.jsonl", prose_corpus(120, seed=9, dup_every=5))
    outs = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for engine in ("local", "ray"):
            out = tmp_path / engine
            run(
                PrepareConfig(
                    inputs=[str(data)], out=str(out), stages=STAGES, shard_docs=40, engine=engine
                )
            )
            report = json.loads((out / "report.json").read_text())
            rows = [pq.read_table(f).to_pylist() for f in sorted(out.glob("part-*.parquet"))]
            outs[engine] = (
                {k: v for k, v in report.items() if k not in ("throughput", "engine")},
                rows,
            )
    finally:
        ray.shutdown()
    assert outs["ray"] == outs["local"]
    near = outs["ray"][0]["stages"][5]["removed"]
    assert near.get("near_duplicate", 0) >= 15  # planted copies, most of them in other shards
