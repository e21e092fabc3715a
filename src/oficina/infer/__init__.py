"""Inference: the generation engine, few-shot prompting, offline batch with a cache, quantization.

from oficina.infer.engine import Engine, SamplingParams
engine = Engine.from_spec("smollm2-135m-instruct")
engine.generate([engine.render_chat([{"role": "user", "content": "Hi"}])], SamplingParams())
"""
