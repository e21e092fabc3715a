"""Training: one loop (``loop.fit``) for pretraining, continued pretraining, SFT (full and LoRA),
classification/regression heads and distillation; objectives, data, checkpoints and recipes.

    from oficina.train.recipes import PretrainConfig, pretrain
    summary = pretrain(PretrainConfig(model="tiny", data="shards/", out="out/", max_steps=50))
"""
