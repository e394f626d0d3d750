"""Token formats: how a batch of regression sequences (``iclgd.tasks.Examples``) becomes a
model's input, and how predictions are read back.

``constructed`` (von Oswald et al.): one token (x_i, y_i) per context pair and the query token
(x_q, 0) last; the model predicts the query label only.

``interleaved`` (Hoogland et al.): an x-token (0, x_k) then a y-token (y_k, 0, ..., 0) per pair,
2K tokens; a causal model predicts every y_k, read at the x_k token.  ``encode`` and ``split``
here are the constructed format's; the interleaved format's are ``encode_interleaved`` and
``decode_interleaved`` (``iclgd.tokens.interleaved.encode`` / ``decode``).
"""
from iclgd.tokens.constructed import Batch, encode, split
from iclgd.tokens.interleaved import InterleavedBatch, predictions_from_outputs
from iclgd.tokens.interleaved import decode as decode_interleaved
from iclgd.tokens.interleaved import encode as encode_interleaved

__all__ = [
    "Batch",
    "InterleavedBatch",
    "decode_interleaved",
    "encode",
    "encode_interleaved",
    "predictions_from_outputs",
    "split",
]
