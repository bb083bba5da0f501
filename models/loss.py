"""The LM head and the next-token cross-entropy in one chunked pass: the (N, V) logits never exist.

`linear_cross_entropy(h, weight, targets, vocab_size)` equals
`F.cross_entropy((h @ weight.T)[:, :vocab_size].float(), targets)` (mean over targets that are not
`ignore_index`), but it goes through the N rows of `h` a chunk at a time: each chunk's logits are
computed in the compute dtype (bf16 under autocast), upcast to fp32, and the chunk's gradients with
respect to `h` and `weight` are computed there and then (softmax minus one-hot), so what is kept for
the backward is one (N, d) and one (V, d) gradient, not the (N, V) logits, their fp32 copy and
their gradient. Peak extra memory is O(chunk x V): at a 100k vocabulary and 32k tokens a step the
plain path holds several fp32 (N, V) tensors of 13 GB each.

Padded vocabulary rows (`weight` has more rows than `vocab_size`, for tensor-core tiles) are
masked to -inf in each chunk rather than sliced off the logits: their softmax is exactly 0, so
their gradient rows are 0 and no full-size zero-filled gradient is written in the backward.

Computing the gradients in the forward costs 3 matmuls per chunk, as the plain path; recomputing
the logits in the backward (checkpointing) would cost 4. When no gradient is wanted (validation,
`torch.no_grad`) only the loss is computed, chunk by chunk.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 1 << 30  # ours: an fp32 logits chunk of at most ~1 GiB (~2.6k rows at 100k vocab)
IGNORE_INDEX = -100  # as F.cross_entropy


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the LM-head matmul runs in: autocast's when it is on for this device, else the
    inputs' (as nn.Linear would)."""
    device = h.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(h.dtype, weight.dtype)


def default_chunk_rows(n: int, vocab: int) -> int:
    """Rows per chunk for n rows and a (padded) vocabulary: fp32 chunks of at most CHUNK_BYTES, all
    of one size (one shape to compile, not two)."""
    pieces = max(1, -(-n * vocab * 4 // CHUNK_BYTES))
    return -(-n // pieces)


def _chunks(n: int, vocab: int, chunk_rows: int | None) -> list[tuple[int, int]]:
    step = max(1, chunk_rows or default_chunk_rows(n, vocab))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _chunk_logits(hc: torch.Tensor, wc: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """fp32 logits of one chunk (rows, padded V), padded columns at -inf."""
    logits = (hc @ wc.T).float()
    if wc.shape[0] > vocab_size:
        logits[:, vocab_size:] = float("-inf")  # in place, on the chunk: no full-size copy
    return logits


def _loss_only(h, weight, targets, vocab_size, chunk_rows, ignore_index) -> torch.Tensor:
    dtype = _compute_dtype(h, weight)
    with torch.autocast(h.device.type, enabled=False):
        hc, wc = h.to(dtype), weight.to(dtype)
        valid = targets != ignore_index
        total = h.new_zeros((), dtype=torch.float32)
        for a, b in _chunks(h.shape[0], weight.shape[0], chunk_rows):
            logits = _chunk_logits(hc[a:b], wc, vocab_size)
            t = targets[a:b]
            nll = logits.logsumexp(-1) - logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
            total = total + torch.where(valid[a:b], nll, 0.0).sum()
        return total / valid.sum()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size, chunk_rows, ignore_index):
        dtype = _compute_dtype(h, weight)
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            valid = targets != ignore_index
            count = valid.sum()
            total = h.new_zeros((), dtype=torch.float32)
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for a, b in _chunks(h.shape[0], weight.shape[0], chunk_rows):
                logits = _chunk_logits(hc[a:b], wc, vocab_size)
                t = targets[a:b].clamp(min=0)[:, None]
                keep = valid[a:b]
                lse = logits.logsumexp(-1)
                nll = lse - logits.gather(1, t).squeeze(1)
                total = total + torch.where(keep, nll, 0.0).sum()
                # d(mean nll)/d(logits) = (softmax - one-hot) / count, zero for ignored rows
                grad = (logits - lse[:, None]).exp_()
                grad.scatter_add_(1, t, torch.full_like(t, -1, dtype=grad.dtype))
                grad = grad.mul_((keep.to(grad.dtype) / count)[:, None]).to(dtype)
                grad_h[a:b] = grad @ wc
                if grad_w.dtype == dtype:  # accumulate in place: no (V, d) temporary
                    grad_w.addmm_(grad.T, hc[a:b])
                else:  # a (V, d) temporary in the compute dtype, summed in fp32
                    grad_w += grad.T @ hc[a:b]
            ctx.save_for_backward(grad_h, grad_w)
            ctx.weight_dtype = weight.dtype
            return total / count

    @staticmethod
    def backward(ctx, grad_out):
        # scaled in place: a copy of the (V, d) gradient would double its memory (so one backward
        # only; retain_graph=True and a second backward would scale twice)
        grad_h, grad_w = ctx.saved_tensors
        grad_h.mul_(grad_out.to(grad_h.dtype))
        return grad_h, grad_w.mul_(grad_out).to(ctx.weight_dtype), None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                         chunk_rows: int | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy of logits h @ weight.T over the first `vocab_size` columns.

    h (N, d) final hidden states; weight (V_padded, d) the LM head; targets (N,) int64 in
    [0, vocab_size) or `ignore_index`; chunk_rows: rows per chunk (None: fp32 chunks of ~1 GiB).
    Returns a 0-d fp32 tensor. Works in eager and under torch.compile."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, vocab_size, chunk_rows, ignore_index)
    return _loss_only(h, weight, targets, vocab_size, chunk_rows, ignore_index)
