"""The base layer: the math every stage uses, on tensors and loaded models, and nothing above it.

``kl`` (token divergences with a chunked, recomputing backward), ``align`` (cross-tokenizer alignment),
``advantages`` (group standardisation and the correctness-gated calibration advantage), ``generate`` (batched
sampling with per-batch seeds and shards), ``logprobs`` (chunked token log-probabilities), ``modelinfo`` (a
model's context and name). It imports only ``dg_core.errors`` and ``dg_core.utils``; ``tests/test_layers.py``
keeps it so.
"""
