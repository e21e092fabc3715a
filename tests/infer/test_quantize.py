"""``oficina quantize --method gguf``: export, figures, refusals (int8: tests/infer/test_int8.py)."""

from __future__ import annotations

import json
import shutil

from oficina.cli import main


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
