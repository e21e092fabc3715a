"""Dynamic int8 of a model's Linear layers, and the recipe file that asks the engine for it.

``oficina quantize --method int8`` writes ``oficina-quantization.json`` (``RECIPE``) beside a
float model; ``Engine.from_spec`` applies it at load with ``apply_recipe``. This module sits
below both (the engine imports it; the quantize verb imports it and the engine), so the
dependency runs one way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from oficina.errors import UserError

RECIPE = "oficina-quantization.json"

# Measured on SmolLM2 (demo validation perplexity 21.43 in float32, first 40 texts, the
# engine's sliding-window definition): every Linear int8 -> 76.1 (+255%); lm_head kept float
# -> 69.6; without lm_head and the MLP down projections (whose inputs carry large activation
# outliers, which per-tensor dynamic activation scales flatten) -> 25.65 (+19.7%).
SKIP = ("lm_head", "down_proj")


def quantize_int8(model, skip: tuple[str, ...] = SKIP):
    """Dynamic int8 (per-channel weights) of every nn.Linear except names ending in ``skip``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.backends.quantized.engine = (
        "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    )
    # By name, not by type: a {nn.Linear} spec would quantize the skipped layers too.
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith(tuple(skip))
    }
    return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)


def apply_recipe(model, recipe_path: str | Path):
    """Apply an ``oficina-quantization.json`` recipe to a loaded float model."""
    recipe = json.loads(Path(recipe_path).read_text())
    if recipe.get("method") != "int8-dynamic":
        raise UserError(f"{recipe_path}: unknown quantization method {recipe.get('method')!r}")
    return quantize_int8(model, skip=tuple(recipe.get("skip", SKIP)))
