"""Model arguments, LoRA adapters, the cache route, the `oficina serve` command, and real SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch
from helpers import wait_healthy
from serve_helpers import free_port, http, running_server

from oficina.errors import UserError
from oficina.serve.app import ModelArg, ServeConfig, create_app, load_engines, parse_model_args


def test_parse_model_args(tmp_path):
    adapter = tmp_path / "my-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    # Parsing already runs the loading gate: an adapter needs sound safetensors weights.
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, adapter / "adapter_model.safetensors")
    got = parse_model_args(
        [
            "smollm2-135m-instruct",
            "small=tiny",
            f"smollm2-135m-instruct+{adapter}",
            f"t2=tiny+{adapter}",
        ]
    )
    assert got == [
        ModelArg("smollm2-135m-instruct", "smollm2-135m-instruct"),
        ModelArg("small", "tiny"),
        ModelArg("my-adapter", "smollm2-135m-instruct", str(adapter)),
        ModelArg("t2", "tiny", str(adapter)),
    ]
    assert parse_model_args([str(tmp_path)])[0].name == tmp_path.name
    with pytest.raises(UserError, match="same|id"):
        parse_model_args(["a=tiny", "a=mini"])
    with pytest.raises(UserError, match="adapter folder not found"):
        parse_model_args([f"tiny+{tmp_path / 'nothing'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="adapter_config.json"):
        parse_model_args([f"tiny+{tmp_path / 'empty'}"])
    with pytest.raises(UserError):
        parse_model_args(["=tiny"])


@pytest.fixture(scope="module")
def lora_dir(tiny_lm, tmp_path_factory) -> Path:
    """A PEFT LoRA adapter on the tiny model with non-zero weights (so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    out = tmp_path_factory.mktemp("lora") / "tiny-lora"
    peft.save_pretrained(out)
    return out


def test_serves_base_and_lora_adapter_side_by_side(tiny_lm, lora_dir):
    engines = load_engines(parse_model_args([f"base={tiny_lm}", f"{tiny_lm}+{lora_dir}"]))
    app = create_app(ServeConfig(models=["unused"], embeddings="none"), engines)
    with running_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        cards = {m.id: m for m in c.models.list().data}
        assert set(cards) == {"base", "tiny-lora"}
        assert cards["tiny-lora"].model_extra["parent"] == str(Path(tiny_lm).resolve())
        outs = {
            name: c.completions.create(
                model=name, prompt="The yield statement", max_tokens=8, temperature=0
            )
            .choices[0]
            .text
            for name in cards
        }
    assert outs["base"] != outs["tiny-lora"]  # the adapter is applied, and only to its id


def test_cache_lookup_route_answers_from_the_batch_cache(tiny_lm, tiny_engine, tmp_path, serve):
    from oficina.cli import main

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"prompt": "What does yield do?"}) + "\n")
    assert (
        main(
            [
                "batch",
                str(tiny_lm),
                "--input",
                str(inp),
                "--output",
                str(out),
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    offline = json.loads(out.read_text().splitlines()[0])
    url = serve()
    hit = http.post(
        url + "/v1/cache/lookup",
        json={"model": "tiny", "prompt": "What does yield do?", "max_new_tokens": 6},
    ).json()
    assert hit["hit"] is True and hit["text"] == offline["text"]
    assert hit["usage"]["completion_tokens"] > 0
    miss = http.post(
        url + "/v1/cache/lookup",
        json={"model": "tiny", "prompt": "What does yield do?", "max_new_tokens": 7},
    ).json()
    assert miss == {**miss, "hit": False, "text": None}
    r = http.post(url + "/v1/cache/lookup", json={"model": "tiny", "max_new_tokens": 6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_oficina_serve_command(tiny_lm, tmp_path):
    """The real verb: binds 127.0.0.1, requires the key, records a run, stops on Ctrl-C."""
    port = free_port()
    env = {**os.environ, "OFICINA_HOME": str(tmp_path / "ws"), "OMP_WAIT_POLICY": "PASSIVE"}
    exe = Path(sys.executable).with_name("oficina")
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            f"tiny={tiny_lm}",
            "--port",
            str(port),
            "--api-key",
            "k-123",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, output=lambda: proc.stdout.read())
        c = openai.OpenAI(base_url=url + "/v1", api_key="k-123", max_retries=0)
        assert [m.id for m in c.models.list().data][0] == "tiny"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
        assert (
            c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            ).usage.completion_tokens
            > 0
        )
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out
    runs = list((tmp_path / "ws" / "runs").iterdir())
    assert len(runs) == 1
    meta = json.loads((runs[0] / "run.json").read_text())
    assert meta["status"] == "stopped" and meta["summary"]["requests"]["chat"] == 1
    config = (runs[0] / "config.yaml").read_text()
    assert "k-123" not in config  # the key is never written to disk


@pytest.mark.integration
def test_smollm2_answers_through_the_api(smollm2):
    app = create_app(ServeConfig(models=["smollm2-135m-instruct"], embeddings="none"))
    with running_server(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["smollm2-135m-instruct"]
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        chat = c.chat.completions.create(
            model="smollm2-135m-instruct", messages=messages, max_tokens=24, temperature=0
        )
        assert "Paris" in chat.choices[0].message.content
        streamed = "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=messages,
                max_tokens=24,
                temperature=0,
                stream=True,
            )
            if ch.choices
        )
        assert streamed == chat.choices[0].message.content
