"""The contrastive loss and one optimizer step's gradients, with exact gradient accumulation.

A contrastive loss does not split over micro-batches: each pair's negatives are the whole batch.
So accumulation here follows open_clip's `accum_freq` scheme (gradient caching): embed every
micro-batch without gradients, then re-embed one micro-batch at a time with gradients and
back-propagate the full-batch loss in which only that micro-batch is live. The summed gradients
equal those of the large batch; activation memory is that of one micro-batch. (Unlike open_clip,
the logit scale is live in one pass only, so its gradient is not counted once per micro-batch.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F

Features = tuple[torch.Tensor, torch.Tensor]


def positive_mask(keys: Sequence[Hashable] | None, n: int, device: torch.device) -> torch.Tensor | None:
    """(n, n) bool mask of rows sharing a key, or None when all keys differ (plain InfoNCE)."""
    if keys is None or len(set(keys)) == len(keys):
        return None
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    codes = torch.tensor([ids[k] for k in keys], device=device)
    return codes[:, None] == codes[None, :]


def contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE between L2-normalised rows of `a` and `b` (pair i is a[i], b[i]).

    With a `positives` mask (pairs sharing a caption or label), each row's target spreads evenly
    over its positives instead of treating identical captions as negatives; without one this is
    exactly `open_clip.ClipLoss`.
    """
    logits = scale * a.float() @ b.float().T
    if positives is None:
        targets = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    weights = positives.float() / positives.float().sum(dim=1, keepdim=True)
    a_to_b = -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    b_to_a = -(weights * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (a_to_b + b_to_a) / 2


def accumulate_gradients(
    encode: Callable[[object], Features],
    chunks: Sequence[object],
    scale: Callable[[], torch.Tensor],
    positives: torch.Tensor | None = None,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> float:
    """Add the gradients of the contrastive loss over all `chunks` (one batch) to `.grad`; return the loss.

    `encode(chunk)` gives the chunk's two L2-normalised feature tensors; `scale()` the logit scale.
    """
    if len(chunks) == 1:
        a, b = encode(chunks[0])
        loss = contrastive_loss(a, b, scale(), positives)
        backward(loss)
        return float(loss.detach())
    with torch.no_grad():
        cached = [encode(chunk) for chunk in chunks]
        loss_value = float(
            contrastive_loss(torch.cat([c[0] for c in cached]), torch.cat([c[1] for c in cached]), scale(), positives)
        )
    for j, chunk in enumerate(chunks):
        a_j, b_j = encode(chunk)
        a = torch.cat([a_j if i == j else c[0] for i, c in enumerate(cached)])
        b = torch.cat([b_j if i == j else c[1] for i, c in enumerate(cached)])
        live_scale = scale() if j == 0 else scale().detach()
        backward(contrastive_loss(a, b, live_scale, positives))
    return loss_value
