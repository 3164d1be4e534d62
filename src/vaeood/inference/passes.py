"""One encoder pass per batch, shared by every feature of that batch.

A detector such as ``fused`` reads five features of each image (log p(x), the posterior's
statistics, the latent vectors, the reconstruction error, the PNG code length); four of them
start from q(z|x). Computed one after another, each ran the encoder again on the same
batch. Inside :func:`shared_passes` (:func:`vaeood.features.core.features_of_needs` opens
one per batch), :func:`posterior` computes ``model.posterior(x)`` once per (model, batch)
and hands every later caller the same tensors.

The numbers do not change: the encoder is deterministic, so the shared ``(mu, logvar)`` are
the values each feature computed for itself before; only the repeated passes go. Sharing
is off where it could change a result or keep a graph alive: outside a
:func:`shared_passes` block and whenever autograd records (training, likelihood regret).
The memo is a :class:`contextvars.ContextVar`, so two threads scoring at once never see
each other's batches, and it holds the batch itself, so that an id is never reused for
another tensor while the block lasts.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

_MEMO: ContextVar[dict | None] = ContextVar("vaeood_shared_passes", default=None)


@contextmanager
def shared_passes():
    """Within the block, :func:`posterior` runs the encoder once per (model, batch tensor)."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def posterior(model, x: Tensor) -> tuple[Tensor, Tensor]:
    """``model.posterior(x)``, computed once per (model, ``x``) inside :func:`shared_passes`
    when autograd is off, else every call."""
    memo = _MEMO.get()
    if memo is None or torch.is_grad_enabled():
        return model.posterior(x)
    key = (id(model), id(x))
    hit = memo.get(key)
    if hit is None or hit[0] is not model or hit[1] is not x:
        hit = memo[key] = (model, x, model.posterior(x))
    return hit[2]
