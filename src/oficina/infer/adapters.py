"""Several LoRA adapters (and the bare base) served from one copy of the base model.

    engines = load_shared("smollm2-135m-instruct", {"base": None, "a": "ad1/", "b": "ad2/"})
    engines["a"].generate([...])                 # runs with adapter a
    batch = DecodeBatch(engines["base"])         # one batch, rows of any of the three
    batch.add(engines["a"].make_rows([...], [...])[0])

PEFT keeps several adapters in one ``PeftModel`` (``load_adapter(path, adapter_name=...)``) and
picks one per row when ``forward`` gets ``adapter_names=[...]`` (one name per batch row,
``"__base__"`` for none): each LoRA layer runs the base matmul for the whole batch, then adds each
adapter's low-rank term to its own rows only ("mixed adapter batches"; vLLM's multi-LoRA and
LoRAX do the same). So one base in memory, and requests for different adapters share a batch.

Each served name gets an ``Engine`` whose model is an ``AdapterView``: the shared ``PeftModel``
seen through that name's adapter. Every call that does not name its rows' adapters (scoring,
``score_ids``, a ``generate`` of that engine alone) runs with the view's adapter; a
``DecodeBatch`` names each row's (``Row.adapter``), so rows of different views mix.
"""

from __future__ import annotations

from pathlib import Path

from oficina.errors import UserError

BASE = "__base__"  # PEFT's adapter name for "the base alone" in adapter_names


class AdapterView:
    """The shared ``PeftModel`` (``.shared``) with one adapter (``.adapter_name``) per call.

    Not a copy: attribute reads (config, parameters, generation_config) go to the shared model.
    """

    def __init__(self, shared, adapter_name: str):
        self.shared = shared
        self.adapter_name = adapter_name

    def __call__(self, *args, **kwargs):
        if kwargs.get("adapter_names") is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs["inputs_embeds"]
            kwargs["adapter_names"] = [self.adapter_name] * ids.shape[0]
        return self.shared(*args, **kwargs)

    forward = __call__

    def generate(self, *args, **kwargs):
        if kwargs.get("adapter_names") is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            kwargs["adapter_names"] = [self.adapter_name] * ids.shape[0]
        return self.shared.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.shared, name)


def load_shared(spec: str, adapters: dict[str, str | None], dtype: str = "float32") -> dict:
    """One base ``spec`` + each adapter directory (None = the bare base) -> {name: Engine}.

    Every engine shares one model object (``engine.model.shared``); each adapter directory goes
    through ``oficina.models.safety.check_adapter_dir`` before PEFT reads it.
    """
    from peft import PeftModel
    from transformers.utils import logging as hf_logging

    from oficina.infer.engine import Engine, check_lm_adapter
    from oficina.infer.int8 import RECIPE
    from oficina.models.safety import check_adapter_dir, load_errors
    from oficina.models.sources import load_causal_lm, resolve

    hf_logging.disable_progress_bar()
    path = resolve(spec)
    if (path / RECIPE).is_file():
        raise UserError(
            f"{spec} is an int8 directory, which takes no adapter; merge each adapter into "
            "the float model first, then quantize that"
        )
    if not any(a is not None for a in adapters.values()):
        raise UserError(f"no adapter to share the base {spec} with")
    model, tok = load_causal_lm(spec, dtype=dtype)
    peft = None
    inner: dict[str, tuple[str, Path | None]] = {}
    for k, (name, adapter) in enumerate(adapters.items()):
        if adapter is None:
            inner[name] = (BASE, None)
            continue
        # PEFT's own adapter names must be module keys (no '.'): served names need not be.
        ad_name, ad_path = f"adapter{k}", check_lm_adapter(check_adapter_dir(adapter))
        with load_errors(ad_path, "adapter"):
            if peft is None:
                peft = PeftModel.from_pretrained(model, str(ad_path), adapter_name=ad_name)
            else:
                peft.load_adapter(str(ad_path), adapter_name=ad_name)
        inner[name] = (ad_name, ad_path.resolve())
    peft.eval()
    return {
        name: Engine(
            AdapterView(peft, ad_name),
            tok,
            name=name,
            path=path,
            adapter=ad,
            dtype=dtype,
            adapter_name=ad_name,
        )
        for name, (ad_name, ad) in inner.items()
    }
