"""``oficina size``: exact counts from configs, memory/FLOP/cost arithmetic, CLI output and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from oficina.cli import main
from oficina.config import load
from oficina.errors import UserError
from oficina.models.counting import (
    Shape,
    analyze_config,
    count_from_config,
    count_from_path,
    llama_count,
)
from oficina.models.sizing import (
    KNOWN_LLAMA_SHAPES,
    SizeConfig,
    activation_bytes,
    hardware_table,
    kv_cache_bytes,
    llama_config,
    parse_count,
    shape_for_params,
    train_memory,
    training_cost,
)

# Llama-2-70B's config.json (the keys that decide the count).
LLAMA2_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
N70 = 68_976_648_192


def run_json(capsys, *args: str) -> dict:
    assert main(["size", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------------- exact counts


def test_llama2_70b_exact_count_and_breakdown_from_the_config_dict():
    c = count_from_config(LLAMA2_70B)
    assert c["total"] == N70
    assert c["embeddings"] == 32000 * 8192 == c["head"]  # untied: two vocabulary matrices
    assert c["attention"] == 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024)
    assert c["mlp"] == 80 * 3 * 8192 * 28672
    assert c["norms"] == (2 * 80 + 1) * 8192
    assert c["other"] == 0
    assert c["non_embedding"] == N70 - 2 * 32000 * 8192
    assert sum(c[k] for k in ("embeddings", "attention", "mlp", "norms", "head", "other")) == N70


def test_count_equals_the_sum_of_real_tensor_sizes(tiny_lm):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    c = count_from_path(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert c["total"] == sum(p.numel() for p in model.parameters())
    with safe_open(str(tiny_lm / "model.safetensors"), "pt") as f:
        on_disk = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert c["total"] == on_disk
    assert c["head"] == 0  # tied: the head is the embedding matrix, counted once
    assert count_from_path(tiny_lm / "config.json") == c


def test_tied_head_counts_zero_and_untied_counts_vocab_times_hidden():
    tied = count_from_config({**LLAMA2_70B, "num_hidden_layers": 1, "tie_word_embeddings": True})
    untied = count_from_config({**LLAMA2_70B, "num_hidden_layers": 1})
    assert tied["head"] == 0 and untied["head"] == 32000 * 8192
    assert untied["total"] - tied["total"] == 32000 * 8192


@pytest.mark.parametrize("name", ["smollm2-135m", "llama-3.2-1b", "llama-2-7b", "llama-2-70b"])
def test_analytic_llama_count_equals_the_meta_device_count(name):
    h, L, a, kv, i, V, tied = KNOWN_LLAMA_SHAPES[name]
    shape = Shape(h, L, a, kv, h // a, i, V, tied)
    by_hand, on_meta = llama_count(shape), analyze_config(llama_config(shape))
    assert by_hand.counts == on_meta.counts
    assert by_hand.lora_in_out == on_meta.lora_in_out


def test_known_published_counts():
    def total(name):
        h, L, a, kv, i, V, tied = KNOWN_LLAMA_SHAPES[name]
        return llama_count(Shape(h, L, a, kv, h // a, i, V, tied)).counts["total"]

    assert total("smollm2-135m") == 134_515_008
    assert total("llama-2-70b") == N70
    assert total("llama-2-7b") == 6_738_415_616  # Meta's "7B"


def test_presets_default_to_smollm2_vocabulary(capsys):
    from oficina.models.presets import PRESETS

    for name, p in PRESETS.items():
        r = run_json(capsys, name)
        assert r["breakdown"]["embeddings"] == 49152 * p["hidden_size"]
        assert r["breakdown"]["head"] == 0
    mini = run_json(capsys, "mini")["breakdown"]
    assert 8e6 < mini["non_embedding"] < 12e6
    small_vocab = run_json(capsys, "mini", "--vocab-size", "8000")["breakdown"]
    assert small_vocab["embeddings"] == 8000 * 384
    assert small_vocab["non_embedding"] == mini["non_embedding"]


def test_a_bert_embedder_is_counted_by_its_own_architecture(tmp_path):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    cfg.architectures = ["BertModel"]
    cfg.save_pretrained(tmp_path)
    c = count_from_path(tmp_path)
    assert c["total"] == sum(p.numel() for p in BertModel(cfg).parameters())
    assert c["head"] == 0 and c["attention"] > 0 and c["mlp"] > 0 and c["norms"] > 0


@pytest.mark.integration
def test_smollm2_exact_count(smollm2, capsys):
    assert count_from_path(smollm2)["total"] == 134_515_008
    r = run_json(capsys, "smollm2-135m-instruct")
    assert r["parameters"] == 134_515_008 and isinstance(r["parameters"], int)
    assert r["breakdown"]["head"] == 0


# ---------------------------------------------------------------------------- --params


def test_params_70b_picks_a_published_llama_shape_close_to_it(capsys):
    r = run_json(capsys, "--params", "70B", "--family", "llama")
    assert abs(r["parameters"] / 70e9 - 1) < 0.05
    assert "llama" in r["source"] and "70b" in r["source"]
    assert r["shape"]["layers"] == 80 and r["shape"]["hidden"] == 8192


@pytest.mark.parametrize("n", ["25M", "600M", "2B", "20B", "150B"])
def test_params_without_a_published_shape_are_solved_within_2_percent(n):
    target = parse_count(n)
    shape, how = shape_for_params(target)
    assert abs(llama_count(shape).counts["total"] / target - 1) <= 0.02
    assert "solved" in how and shape.layers >= 4 and shape.heads % shape.kv_heads == 0


def test_parse_count():
    assert parse_count("70B") == 70_000_000_000
    assert parse_count("135m") == 135_000_000
    assert parse_count("1.4T") == 1_400_000_000_000
    assert parse_count("1e9") == 1_000_000_000
    for bad in ("70X", "", "B", "-5M", "0"):
        with pytest.raises(ValueError):
            parse_count(bad)


# ---------------------------------------------------------------------------- memory and compute


def test_serving_memory_and_kv_cache_by_hand(capsys):
    r = run_json(capsys, "--hf-config", json.dumps(LLAMA2_70B), "--context", "4096", "--batch", "2")
    kv = 2 * 80 * 8 * 128 * 2 * 4096 * 2  # K and V, layers, kv heads, head dim, bf16, tokens
    assert r["serve"]["kv_cache_bytes"] == kv == 2_684_354_560
    p = r["serve"]["precisions"]
    assert p["fp32"]["weights_bytes"] == 4 * N70
    assert p["bf16"]["weights_bytes"] == 2 * N70 == 137_953_296_384
    assert p["int8"]["weights_bytes"] == N70
    assert p["int4"]["weights_bytes"] == N70 // 2
    assert p["bf16"]["total_bytes"] == 2 * N70 + kv
    assert kv_cache_bytes(Shape(8192, 80, 64, 8, 128, 28672, 32000, False), 1, 1, "fp32") == (
        2 * 80 * 8 * 128 * 4
    )


def test_training_memory_by_hand():
    a = analyze_config(LLAMA2_70B)
    m = train_memory(a, activations=1_000, lora_rank=16)
    assert m["full"]["bytes_per_param"] == 16
    assert m["full"]["total_bytes"] == 16 * N70 + 1_000
    # LoRA on q, k, v, o, gate, up, down: r * (in + out) each, per layer
    per_layer = (
        (8192 + 8192) + 2 * (8192 + 1024) + (8192 + 8192) + 2 * (8192 + 28672) + (28672 + 8192)
    )
    adapter = 16 * 80 * per_layer
    assert m["lora"]["trainable_params"] == adapter == 207_093_760
    assert m["lora"]["total_bytes"] == 2 * N70 + 16 * adapter + 1_000
    quantized = a.counts["attention"] + a.counts["mlp"]
    qbase = math.ceil(quantized * 4.127 / 8) + 2 * (N70 - quantized)
    assert m["qlora"]["total_bytes"] == qbase + 16 * adapter + 1_000
    assert m["qlora"]["total_bytes"] < m["lora"]["total_bytes"] < m["full"]["total_bytes"]


def test_activation_estimate_by_hand():
    shape = Shape(8192, 80, 64, 8, 128, 28672, 32000, False)
    act = activation_bytes(shape, seq_len=2048, micro_batch=1)
    per_layer = 2 * 2048 * (4 * 8192 + 2 * 8192 + 2 * 1024 + 4 * 28672)
    logits = 6 * 2048 * 32000
    assert act["full"] == 80 * per_layer + logits == 54_751_395_840
    assert act["checkpointed"] == 80 * 2 * 2048 * 8192 + per_layer + logits
    assert activation_bytes(shape, 2048, 4)["full"] == 4 * act["full"]


def test_training_cost_and_flops(capsys):
    c = training_cost(6e18, "a100-80gb", utilization=0.5, precision="bf16")
    assert c["seconds"] == pytest.approx(6e18 / (312e12 * 0.5))
    assert c["usd"] == pytest.approx(c["seconds"] / 3600 * 1.80)
    cpu = training_cost(1e15)  # this machine, bf16, 35% MFU: measured 615 GFLOP/s
    assert cpu["seconds"] == pytest.approx(1e15 / (615e9 * 0.35)) and cpu["usd"] == 0
    with pytest.raises(UserError, match="unknown hardware"):
        training_cost(1e15, "tpu-v9")

    r = run_json(capsys, "--hf-config", json.dumps(LLAMA2_70B))
    assert r["compute"]["tokens"] == 20 * N70
    assert r["compute"]["flops"] == pytest.approx(6 * N70 * 20 * N70)
    r2 = run_json(capsys, "--hf-config", json.dumps(LLAMA2_70B), "--tokens", "2T")
    assert r2["compute"]["flops"] == pytest.approx(6 * N70 * 2e12)
    a100 = next(h for h in r2["hardware"] if h["name"] == "a100-80gb")
    assert a100["seconds"] == pytest.approx(6 * N70 * 2e12 / (312e12 * 0.35))
    # what fits: bf16 weights do not fit one 80 GB device; 2 are enough to serve
    assert a100["fits"]["serve_bf16"] is False and a100["devices_to_serve_bf16"] == 2
    assert a100["fits"]["train_full"] is False and a100["devices_to_train_full"] >= 14
    assert "does not fit" in r2["summary"] and "2×a100-80gb" in r2["summary"]


# ---------------------------------------------------------------------------- table and output


def test_hardware_table_has_this_machine_and_public_gpus():
    t = hardware_table()
    assert t["this-cpu"]["peak_flops"] == {"fp32": 200e9, "bf16": 615e9}
    assert t["this-cpu"]["usd_per_hour"] == 0
    assert t["a100-80gb"]["peak_flops"]["bf16"] == 312e12
    assert t["h100-sxm"]["peak_flops"]["bf16"] == 989e12
    assert {"l4", "rtx-4090"} <= t.keys()
    for row in t.values():
        assert row["memory_gb"] > 0 and row["usd_per_hour"] >= 0


def test_user_hardware_file_overrides_and_extends(tmp_path, capsys):
    f = tmp_path / "hw.yaml"
    f.write_text(
        "a100-80gb: {peak_tflops: {fp32: 19.5, bf16: 312}, memory_gb: 80, usd_per_hour: 1.0}\n"
        "my-box: {peak_flops: {fp32: 1.0e12, bf16: 2.0e12}, memory_gb: 64, usd_per_hour: 0.5}\n"
    )
    t = hardware_table(f)
    assert t["a100-80gb"]["usd_per_hour"] == 1.0 and "this-cpu" in t
    assert t["my-box"]["peak_flops"]["bf16"] == 2e12
    r = run_json(
        capsys, "tiny", "--hardware-file", str(f), "--hardware", "my-box", "--compare-on", "my-box"
    )
    assert [h["name"] for h in r["hardware"]] == ["my-box"]
    (tmp_path / "bad.yaml").write_text("x: {memory_gb: 8}\n")
    with pytest.raises(UserError, match="hardware row 'x'"):
        hardware_table(tmp_path / "bad.yaml")


def test_json_shape_and_the_run_is_recorded(capsys, isolated_workspace):
    r = run_json(capsys, "tiny")
    assert isinstance(r["parameters"], int) and r["parameters"] == r["breakdown"]["total"]
    assert set(r["breakdown"]) >= {
        "embeddings",
        "attention",
        "mlp",
        "norms",
        "head",
        "non_embedding",
    }
    assert all(isinstance(v, int) for v in r["breakdown"].values())
    assert set(r["serve"]["precisions"]) == {"fp32", "bf16", "int8", "int4"}
    assert set(r["train"]) >= {"full", "lora", "qlora", "activations_bytes"}
    names = [h["name"] for h in r["hardware"]]
    assert "this-cpu" in names and "a100-80gb" in names
    assert all(set(h["fits"]) >= {"serve_bf16", "train_full"} for h in r["hardware"])
    assert "parameters in bf16" in r["summary"]
    runs = list((isolated_workspace / "runs").glob("size-*"))
    assert len(runs) == 1 and json.loads((runs[0] / "size.json").read_text()) == r


def test_table_output_names_the_parts_and_the_summary(capsys):
    assert main(["size", "mini"]) == 0
    out = capsys.readouterr().out
    for word in (
        "embeddings",
        "attention",
        "mlp",
        "non-embedding",
        "KV cache",
        "QLoRA",
        "a100-80gb",
    ):
        assert word in out
    assert "parameters in bf16" in out


def test_example_yaml_loads_and_sizes_llama2_70b(repo_root, capsys):
    path = repo_root / "examples" / "size.yaml"
    cfg = load(SizeConfig, path)
    assert cfg.hf_config["num_hidden_layers"] == 80
    r = run_json(capsys, "--config", str(path))
    assert r["parameters"] == N70
    assert r["compute"]["tokens"] == 2_000_000_000_000


def test_models_info_uses_count_from_path(tiny_lm, capsys):
    assert main(["models", "info", str(tiny_lm), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == count_from_path(tiny_lm)["total"]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--params", "70X"], 2, "--params"),
        (["tiny", "--tokens", "lots"], 2, "--tokens"),
        (["tiny", "--hardware", "tpu-v9"], 1, "unknown hardware 'tpu-v9'"),
        (["tiny", "--compare-on", "tpu-v9"], 1, "unknown hardware 'tpu-v9'"),
        (["tiny", "--params", "7B"], 1, "not spec and params"),
        ([], 1, "give a model SPEC"),
        (["gpt-99"], 1, "unknown model 'gpt-99'"),
        (["./missing/config.json"], 2, "not found"),
        (["--hf-config", '{"model_type": "no-such-arch"}'], 1, "does not know this model_type"),
        (["tiny", "--utilization", "0"], 2, "--utilization"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args, code, words, capsys):
    assert main(["size", *args]) == code
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_a_folder_without_config_json_is_refused(tmp_path, capsys):
    assert main(["size", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "without config.json" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "config.json").write_text("{not json")
    assert main(["size", str(tmp_path / "config.json")]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_bad_hardware_file_is_a_user_error(tmp_path, capsys):
    f = tmp_path / "hw.yaml"
    f.write_text("a: [unclosed\n")
    assert main(["size", "tiny", "--hardware-file", str(f)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["size", "tiny", "--hardware-file", str(Path(tmp_path / "nope.yaml"))]) == 2
    assert "not found" in capsys.readouterr().err


def test_hub_id_offline_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["size", "someorg/not-cached-model"]) == 1
    err = capsys.readouterr().err
    assert "offline" in err and "config.json" in err and len(err.strip().splitlines()) == 1
