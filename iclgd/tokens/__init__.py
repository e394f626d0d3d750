"""Token formats: how a batch of regression sequences (``iclgd.tasks.Examples``) becomes a
model's input, and how predictions are read back.

``constructed`` (von Oswald et al.): one token (x_i, y_i) per context pair and the query token
(x_q, 0) last; the model predicts the query label only.
"""
from iclgd.tokens.constructed import Batch, encode, split

__all__ = ["Batch", "encode", "split"]
