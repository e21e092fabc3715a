"""``oficina quantize``: int8 recipe directory, the engine applying it, figures; GGUF export."""

from __future__ import annotations

import json
import shutil

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
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    kinds = {name: type(m) for name, m in eng.model.named_modules()}
    # The recipe's skip list holds: lm_head and the MLP down projections stay float, the rest
    # of the Linear layers are int8.
    assert json.loads((out / "oficina-quantization.json").read_text())["skip"] == [
        "lm_head",
        "down_proj",
    ]
    assert kinds["lm_head"] is torch.nn.Linear
    assert all(k is torch.nn.Linear for n, k in kinds.items() if n.endswith("down_proj"))
    assert all(k is qlinear for n, k in kinds.items() if n.endswith(("q_proj", "up_proj")))
    base = Engine.from_spec(str(tiny_lm))
    assert eng.model_hash != base.model_hash  # cached results never mix float and int8
    c = eng.generate(["def"], SamplingParams(max_new_tokens=5))[0]
    assert c.completion_tokens == 5


def test_gguf_export_reports_size_perplexity_and_runtime(tiny_lm, tmp_path, capsys, repo_root):
    from oficina.infer.gguf_export import llama_cpp_version

    out = tmp_path / "m.gguf"
    args = ["quantize", str(tiny_lm), "--method", "gguf", "--out", str(out), "--max-texts", "4"]
    args += ["--bench-tokens", "8", "--json"]
    args += ["--eval-texts", str(repo_root / "examples/demo/task/validation.jsonl")]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    f, q = res["float"], res["quantized"]
    assert q["size_on_disk_bytes"] == out.stat().st_size < 0.35 * f["size_on_disk_bytes"]
    assert q["gguf_type"] == "q8_0" and q["pre_tokenizer"] == "gpt-2"
    assert q["perplexity_torch_dequantized"] != f["perplexity"]  # rounded weights were scored
    assert abs(q["perplexity_torch_dequantized"] / f["perplexity"] - 1) < 0.01
    if llama_cpp_version() is None:
        assert q["tokens_per_s"] is None and "not installed" in q["runtime"]
        assert q["perplexity"] == q["perplexity_torch_dequantized"]
    else:  # llama.cpp scored the same token ids and generated the same number of tokens
        assert q["tokens_per_s"] > 0 and q["runtime"].startswith("llama.cpp")
        assert abs(q["perplexity"] / f["perplexity"] - 1) < 0.01
    assert res["ratios"]["perplexity_change"] == round(q["perplexity"] / f["perplexity"] - 1, 4)


def test_gguf_refusals_are_one_line_errors(tiny_lm, tmp_path, capsys):
    code = main(["quantize", str(tiny_lm), "--method", "gguf", "--out", str(tmp_path / "m.bin")])
    assert code == 1 and "must be a .gguf file" in capsys.readouterr().err
    d = tmp_path / "mistral"
    shutil.copytree(tiny_lm, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (d / "config.json").write_text(json.dumps(cfg))
    code = main(["quantize", str(d), "--method", "gguf", "--out", str(tmp_path / "m.gguf")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Llama-architecture" in err
