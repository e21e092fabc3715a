"""``oficina quantize``: int8 recipe directory, the engine applying it, figures, GGUF message."""

from __future__ import annotations

import json

import torch

from oficina.cli import main
from oficina.infer.engine import Engine, SamplingParams


def test_int8_writes_a_recipe_dir_the_engine_quantizes_at_load(
    tiny_lm, tmp_path, capsys, repo_root
):
    out = tmp_path / "int8"
    code = main(
        [
            "quantize",
            str(tiny_lm),
            "--method",
            "int8",
            "--out",
            str(out),
            "--max-texts",
            "4",
            "--bench-tokens",
            "8",
            "--eval-texts",
            str(repo_root / "examples/demo/task/validation.jsonl"),
            "--json",
        ]
    )
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert (out / "oficina-quantization.json").is_file() and (out / "model.safetensors").is_file()
    f, q = res["float"], res["quantized"]
    assert q["state_bytes"] < f["state_bytes"]  # int8 weights take less memory
    assert f["tokens_per_s"] > 0 and q["tokens_per_s"] > 0
    assert abs(q["perplexity"] / f["perplexity"] - 1) < 0.05  # quality barely moves
    eng = Engine.from_spec(str(out))
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in eng.model.modules())
    base = Engine.from_spec(str(tiny_lm))
    assert eng.model_hash != base.model_hash  # cached results never mix float and int8
    c = eng.generate(["def"], SamplingParams(max_new_tokens=5))[0]
    assert c.completion_tokens == 5


def test_gguf_without_llama_cpp_says_how(tiny_lm, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    code = main(["quantize", str(tiny_lm), "--method", "gguf", "--out", str(tmp_path / "m.gguf")])
    err = capsys.readouterr().err
    assert code == 1 and "llama.cpp" in err and "LLAMA_CPP_DIR" in err
