"""Oficina: a workshop for the whole life of a language model.

data -> tokenizer -> pretraining -> fine-tuning (full, LoRA) -> distillation -> quantization
-> evaluation -> serving -> RAG -> feedback, and the adaptation ladder that measures which of
these is cheapest for a domain. Run ``oficina --help`` to see the verbs.
"""

__version__ = "0.1.0"
