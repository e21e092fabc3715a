"""Retrieval-augmented generation: chunking, embeddings, stores, hybrid retrieval, grounded answers.

oficina index examples/demo/reference.jsonl --out workspace/indexes/demo
oficina index eval workspace/indexes/demo --questions examples/demo/questions.jsonl
oficina ask workspace/indexes/demo --model smollm2-135m-instruct "What does yield do?"
"""

from oficina.rag.retrieve import Hit, Index

__all__ = ["Hit", "Index"]
