"""The adaptation ladder: which way of adapting a model is cheapest for a quality bar?

``rungs`` (one class per adaptation, registered once), ``context`` (what the rungs share: data,
base model, evaluation, costs), ``data`` (a user's one labelled file -> splits), ``recommend``
(the decision and its statistics), ``report`` (JSON, Markdown, HTML) and ``run`` (the verb).
"""
