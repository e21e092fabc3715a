"""From-scratch model presets: Llama-architecture configs built with ``transformers`` classes.

Sizes name the *non-embedding* parameters (as Kaplan et al. and Chinchilla count them), because
the embedding table depends on the tokenizer you pick: with SmolLM2's 49,152-token vocabulary
(the default, so a preset student can be distilled from SmolLM2) ``mini`` has ~10.3M
non-embedding + 18.9M embedding parameters; with an 8k domain tokenizer, 3.1M embedding.

    from oficina.models.presets import preset_config
    cfg = preset_config("mini", vocab_size=49152)
"""

from __future__ import annotations

from transformers import LlamaConfig

# hidden, layers, heads, kv-heads, MLP width. Head dim 32-64 and grouped-query attention as
# in SmolLM2; the MLP is SwiGLU (three matrices), so its width is ~2.7x hidden, not 4x.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
    ),
    "mini": dict(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=1152,
    ),
    "small": dict(
        hidden_size=640,
        num_hidden_layers=12,
        num_attention_heads=10,
        num_key_value_heads=5,
        intermediate_size=1536,
    ),
}

PRESET_NOTES = {
    "tiny": "~1M non-embedding parameters: unit tests, seconds on a CPU",
    "mini": "~10M non-embedding parameters: pretraining demos on a laptop CPU",
    "small": "~50M non-embedding parameters: a real small model (hours on CPU, minutes on a GPU)",
}


def is_preset(spec: str) -> bool:
    return spec.removeprefix("preset:") in PRESETS


def preset_config(
    name: str,
    vocab_size: int = 49152,
    max_position_embeddings: int = 2048,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    pad_token_id: int | None = None,
    **overrides,
) -> LlamaConfig:
    """A LlamaConfig for a preset; ``overrides`` set any LlamaConfig field (dropout, act...)."""
    name = name.removeprefix("preset:")
    if name not in PRESETS:
        raise KeyError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    kw = dict(PRESETS[name])
    kw.update(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,  # as SmolLM2: the head reuses the embedding matrix
        hidden_act="silu",
        initializer_range=0.02,
        attention_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)
