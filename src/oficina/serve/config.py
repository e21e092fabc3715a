"""What ``oficina serve`` is told: its options (``ServeConfig``) and the models it serves.

A model argument is ``SPEC``, ``NAME=SPEC`` or ``[NAME=]BASE+ADAPTER_DIR`` (a PEFT LoRA adapter on
BASE); ``parse_model_args`` checks them all (ids unique, adapters through the weight gate) before
``load_engines`` loads any. Adapters on the same BASE share one copy of it in memory and one batch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from oficina.config import VerbConfig
from oficina.errors import UserError
from oficina.models.safety import check_adapter_dir

log = logging.getLogger("oficina.serve")


class ServeConfig(VerbConfig):
    """Serve models behind an OpenAI-compatible API, with a web chat page that collects feedback."""

    positionals = ("models",)
    models: list[str] = Field(
        description="models to serve: SPEC, NAME=SPEC, or [NAME=]BASE+ADAPTER_DIR (LoRA)"
    )
    host: str = Field(
        "127.0.0.1", description="address to bind (0.0.0.0 exposes it to the network)"
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_key: str | None = Field(
        None,
        description="require 'Authorization: Bearer KEY' on /v1 (default: $OFICINA_API_KEY if set)",
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights dtype")
    max_batch: int = Field(
        16, ge=1, le=256, description="rows per generation batch (1 = no batching)"
    )
    batch_wait_ms: float = Field(
        10.0, ge=0, le=1000, description="how long a batch waits for more requests"
    )
    scheduler: Literal["continuous", "static"] = Field(
        "continuous",
        description="continuous: requests join the running batch at the next decode step; "
        "static: a batch runs to its end before the next starts",
    )
    max_concurrent: int = Field(64, ge=1, description="requests admitted at once")
    max_queue: int = Field(128, ge=0, description="requests waiting for admission; beyond it 429")
    queue_timeout_s: float = Field(60.0, gt=0, description="longest wait for admission before 429")
    request_timeout_s: float = Field(
        600.0, gt=0, description="longest generation per request (504)"
    )
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        description="on SIGTERM or Ctrl-C: how long requests in flight may still run; then each "
        "is cut (an error event, then [DONE]) and the server exits 0",
    )
    max_body_bytes: int = Field(4_000_000, ge=1024, description="largest request body (413)")
    max_tokens: int | None = Field(
        None, ge=1, description="largest max_tokens a request may ask for (default: the context)"
    )
    default_max_tokens: int = Field(
        512, ge=1, description="chat max_tokens when the request sets none"
    )
    embeddings: str = Field(
        "minilm-l6", description="embedding model served on /v1/embeddings ('none' = off)"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="uvicorn log level"
    )


# ---------------------------------------------------------------------------- model specs


@dataclass(frozen=True)
class ModelArg:
    name: str
    spec: str
    adapter: str | None = None


def parse_model_arg(arg: str) -> ModelArg:
    """``SPEC`` | ``NAME=SPEC`` | ``[NAME=]BASE+ADAPTER_DIR`` -> ModelArg (no loading)."""
    raw = arg.strip()
    if not raw:
        raise UserError("empty model argument")
    name = None
    if "=" in raw and not Path(raw).exists():
        left, right = raw.split("=", 1)
        if not left or "/" in left or any(c.isspace() for c in left):
            raise UserError(
                f"bad model id in '{arg}': use NAME=SPEC with a NAME without '/' or spaces"
            )
        name, raw = left, right
    adapter = None
    if "+" in raw and not Path(raw).exists():
        raw, adapter = raw.rsplit("+", 1)
        if not raw or not adapter:
            raise UserError(f"bad adapter spec '{arg}': use BASE+ADAPTER_DIR")
        check_adapter_dir(adapter)  # refuse a pickle or broken adapter before any loading
    if not raw:
        raise UserError(f"no model spec in '{arg}'")
    if name is None:
        src = adapter or raw
        p = Path(src).expanduser()
        name = p.resolve().name if (p.exists() or os.sep in src) else src
    return ModelArg(name=name, spec=raw, adapter=adapter)


def parse_model_args(args: list[str]) -> list[ModelArg]:
    out = [parse_model_arg(a) for a in args]
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two models would have the id '{dup[0]}'; give ids with NAME=SPEC")
    return out


def load_engines(margs: list[ModelArg], dtype: str = "float32") -> dict:
    """Load every model argument; returns {id: Engine}.

    Arguments on the same base (same SPEC) of which at least one has an adapter share one copy
    of the base (``oficina.infer.adapters.load_shared``): their engines are views of one model,
    and the scheduler batches their requests together. Any other argument loads on its own.
    """
    from oficina.infer.adapters import load_shared
    from oficina.infer.engine import Engine

    groups: dict[str, list[ModelArg]] = {}
    for m in margs:
        groups.setdefault(m.spec, []).append(m)
    engines = {}
    for spec, group in groups.items():
        t0 = time.perf_counter()
        if len(group) > 1 and any(m.adapter for m in group):
            shared = load_shared(spec, {m.name: m.adapter for m in group}, dtype=dtype)
            log.info(
                "loaded %s on one copy of %s in %.1fs",
                ", ".join(shared),
                spec,
                time.perf_counter() - t0,
            )
            engines.update(shared)
            continue
        for m in group:
            t0 = time.perf_counter()
            engines[m.name] = Engine.from_spec(m.spec, dtype=dtype, adapter=m.adapter, name=m.name)
            log.info("loaded %s (%s) in %.1fs", m.name, m.spec, time.perf_counter() - t0)
    # the order of the command line (the /v1/models listing follows it)
    return {m.name: engines[m.name] for m in margs}
