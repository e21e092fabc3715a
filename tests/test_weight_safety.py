"""The loading gate against real attack files: a pickle whose unpickling creates a canary file.

Each attack shape is put where a verb loads weights (generate, eval --adapter, serve
NAME=BASE+ADAPTER, finetune, merge, the Python loaders); the verb must refuse it in one line
with exit code 2, and the canary must never appear. ``torch.load`` is forced to unpickle
(``weights_only=False``, torch's default before 2.6) so that nothing but the gate stands
between the file and the payload.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from oficina.cli import main
from oficina.errors import UserError
from oficina.models.safety import (
    UnsafeWeightsError,
    check_adapter_dir,
    check_model_dir,
    check_safetensors,
)


class Payload:
    """Unpickling this runs ``open(canary, 'w')``: the attack, made harmless but observable."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


@pytest.fixture
def canary(tmp_path) -> Path:
    return tmp_path / "CANARY-payload-ran"


@pytest.fixture(autouse=True)
def unsafe_torch_load(monkeypatch):
    """torch.load that unpickles anything, as before torch 2.6: only the gate may stop a payload."""
    real = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = False
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)


def _pickle(path: Path, canary: Path) -> Path:
    """A real torch.save file (zip + pickle), as a pytorch_model.bin would be."""
    torch.save({"model.embed_tokens.weight": Payload(canary)}, path)
    assert not canary.exists()  # saving only records the call; loading would make it
    return path


def test_the_attack_file_is_live(tmp_path, canary):
    """Sanity: without the gate, loading this file does run the payload."""
    f = _pickle(tmp_path / "pytorch_model.bin", canary)
    torch.load(f)
    assert canary.exists()


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_st(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _model_copy(tiny_lm: Path, tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_lm, d)
    return d


# Each shape turns a good model folder into an attack; returns the file the refusal must name.
def decoy_suffix(d: Path, canary: Path) -> Path:
    (d / "model.safetensors").rename(d / "decoy.safetensors")  # valid, but not what loads
    return _pickle(d / "pytorch_model.bin", canary)


def pickle_named_safetensors(d: Path, canary: Path) -> Path:
    return _pickle(d / "model.safetensors", canary)


def index_to_pickle(d: Path, canary: Path) -> Path:
    header, _ = _header(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    shard = _pickle(d / "pytorch_model-00001-of-00001.bin", canary)
    weight_map = {k: shard.name for k in header if k != "__metadata__"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return shard


def index_to_disguised_pickle(d: Path, canary: Path) -> Path:
    header, _ = _header(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    shard = _pickle(d / "model-00001-of-00001.safetensors", canary)
    weight_map = {k: shard.name for k in header if k != "__metadata__"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return shard


def index_escapes_folder(d: Path, canary: Path) -> Path:
    header, _ = _header(d / "model.safetensors")
    (d / "model.safetensors").rename(d.parent / "elsewhere.safetensors")
    index = d / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(header, "../elsewhere.safetensors")}))
    return index


def truncated(d: Path, canary: Path) -> Path:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return f


def header_lies_about_sizes(d: Path, canary: Path) -> Path:
    """Same file size, but one tensor claims a bigger shape (its bytes overlap the next one's)."""
    f = d / "model.safetensors"
    header, data = _header(f)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
    _write_st(f, header, data)
    return f


def header_past_end(d: Path, canary: Path) -> Path:
    """Shapes consistent with the offsets, but the last tensor ends past the end of the file."""
    f = d / "model.safetensors"
    header, data = _header(f)
    _write_st(f, header, data[: len(data) // 2])
    return f


MODEL_ATTACKS = [
    decoy_suffix,
    pickle_named_safetensors,
    index_to_pickle,
    index_to_disguised_pickle,
    index_escapes_folder,
    truncated,
    header_lies_about_sizes,
    header_past_end,
]


def _one_line_error(capsys, code: int, names: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(names) in err, err
    return err


@pytest.mark.parametrize("attack", MODEL_ATTACKS, ids=lambda f: f.__name__)
def test_model_attacks_refused_by_every_model_loader(attack, tiny_lm, tmp_path, canary, capsys):
    d = _model_copy(tiny_lm, tmp_path)
    bad = attack(d, canary)

    code = main(["generate", str(d), "--prompt", "hi", "--max-new-tokens", "2"])
    err = _one_line_error(capsys, code, bad)
    if attack is decoy_suffix:  # plain pickle weights: name the opt-in for a trusted source
        assert "--allow-pickle" in err
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    code = main(["finetune", str(d), "--data", str(data), "--out", str(tmp_path / "ft")])
    _one_line_error(capsys, code, bad)
    code = main(["serve", f"m={d}", "--port", "1", "--embeddings", "none"])
    _one_line_error(capsys, code, bad)
    assert not (tmp_path / "ft").exists()

    from oficina.infer.engine import Engine
    from oficina.models.embed import Embedder
    from oficina.models.sources import load_causal_lm

    for load in (load_causal_lm, Engine.from_spec, Embedder):
        with pytest.raises(UnsafeWeightsError, match="refusing"):
            load(str(d))
    assert not canary.exists()


def test_allow_pickle_is_needed_and_converts_once(tiny_lm, tmp_path, canary, monkeypatch):
    """The opt-in reads a *trusted* pickle folder (here a real state dict) into a safetensors copy."""
    monkeypatch.setenv("OFICINA_CACHE", str(tmp_path / "cache"))
    from transformers import AutoModelForCausalLM

    d = _model_copy(tiny_lm, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="pytorch_model.bin"):
        check_model_dir(d)
    assert main(["models", "pull", str(d), "--allow-pickle"]) == 0
    (out,) = (tmp_path / "cache" / "models").glob("safetensors-model-*")
    assert check_model_dir(out) == [out / "model.safetensors"]
    from oficina.models.sources import load_causal_lm

    again, _ = load_causal_lm(str(out))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


@pytest.fixture(scope="module")
def adapter(tiny_lm, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft.save_pretrained(out)
    return out


def adapter_bin(a: Path, canary: Path) -> Path:
    (a / "adapter_model.safetensors").unlink()
    return _pickle(a / "adapter_model.bin", canary)


def adapter_pt(a: Path, canary: Path) -> Path:
    (a / "adapter_model.safetensors").unlink()
    return _pickle(a / "adapter_model.pt", canary)


def adapter_disguised(a: Path, canary: Path) -> Path:
    return _pickle(a / "adapter_model.safetensors", canary)


def adapter_truncated(a: Path, canary: Path) -> Path:
    f = a / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    return f


@pytest.mark.parametrize(
    "attack",
    [adapter_bin, adapter_pt, adapter_disguised, adapter_truncated],
    ids=lambda f: f.__name__,
)
def test_adapter_attacks_refused(attack, adapter, tiny_lm, tmp_path, canary, capsys):
    a = tmp_path / "lora"
    shutil.copytree(adapter, a)
    bad = attack(a, canary)
    # The base the adapter names is the tiny model (merge resolves it from adapter_config.json).
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_lm)
    (a / "adapter_config.json").write_text(json.dumps(cfg))

    code = main(["generate", str(tiny_lm), "--prompt", "hi", "--adapter", str(a)])
    _one_line_error(capsys, code, bad)
    code = main(["eval", str(tiny_lm), "--adapter", str(a), "--limit", "2"])
    _one_line_error(capsys, code, bad)
    code = main(["serve", f"x={tiny_lm}+{a}", "--port", "1", "--embeddings", "none"])
    _one_line_error(capsys, code, bad)
    code = main(["merge", str(a), "--out", str(tmp_path / "merged")])
    _one_line_error(capsys, code, bad)
    batch_in = tmp_path / "in.jsonl"
    batch_in.write_text('{"prompt": "hi"}\n')
    code = main(
        ["batch", str(tiny_lm), "--input", str(batch_in), "--out", str(tmp_path / "o.jsonl")]
        + ["--adapter", str(a)]
    )
    _one_line_error(capsys, code, bad)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "o.jsonl").exists()
    with pytest.raises(UnsafeWeightsError):
        check_adapter_dir(a)
    assert not canary.exists()


def test_sound_files_pass_and_a_folder_without_weights_is_named(tiny_lm, adapter, tmp_path):
    assert check_model_dir(tiny_lm) == [tiny_lm / "model.safetensors"]
    assert check_adapter_dir(adapter) == adapter
    assert check_safetensors(tiny_lm / "model.safetensors")
    empty = tmp_path / "cfg-only"
    empty.mkdir()
    shutil.copy(tiny_lm / "config.json", empty)
    assert check_model_dir(empty, require=False) == []  # sizing a config needs no weights
    with pytest.raises(UnsafeWeightsError, match="no model.safetensors"):
        check_model_dir(empty)
    with pytest.raises(UserError, match="adapter_config.json"):
        check_adapter_dir(tmp_path)


def test_a_sharded_model_loads_through_the_gate(tiny_lm, tmp_path):
    """A real two-shard index passes, and every shard is checked (breaking one is refused)."""
    from transformers import AutoModelForCausalLM

    from oficina.models.sources import load_causal_lm

    d = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_lm).save_pretrained(d, max_shard_size="100KB")
    for f in tiny_lm.iterdir():
        if f.name.startswith(("tokenizer", "special", "chat")):
            shutil.copy(f, d)
    shards = check_model_dir(d)
    assert len(shards) >= 2 and all(s.suffix == ".safetensors" for s in shards)
    load_causal_lm(str(d))
    shards[-1].write_bytes(shards[-1].read_bytes()[:-4])
    with pytest.raises(UnsafeWeightsError, match=shards[-1].name):
        load_causal_lm(str(d))


def test_checkpoint_resume_refuses_a_disguised_pickle(tiny_lm, tmp_path, canary):
    """A checkpoint whose weights.safetensors was swapped for a pickle: refused, never unpickled."""
    from transformers import AutoModelForCausalLM

    from oficina.train.checkpoint import Checkpointer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ck = Checkpointer(tmp_path / "ckpt")
    d = ck.save(1, model, opt, sched, {"step": 1})
    assert ck.load(model, opt, sched)["step"] == 1  # the sound checkpoint resumes
    _pickle(d / "weights.safetensors", canary)
    with pytest.raises(UnsafeWeightsError, match="weights.safetensors"):
        ck.load(model, opt, sched)
    ck.save_best(model)
    _pickle(tmp_path / "ckpt" / "best.safetensors", canary)
    with pytest.raises(UnsafeWeightsError, match="best.safetensors"):
        ck.load_best(model)
    assert not canary.exists()
