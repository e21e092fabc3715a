"""Evaluation: metrics with bootstrap intervals (``metrics``), tasks run on a generation engine
(``tasks``: classify, multiple_choice, generate_task, perplexity) and ``oficina eval``
(``evaluate``). For example ``tasks.classify(engine, rows, labels, template)`` returns the
predictions, ``accuracy`` and ``macro_f1`` with ``ci`` intervals, prompt tokens and latency.
"""
