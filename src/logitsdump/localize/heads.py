"""Which attention head: each head's contribution to the attention output, through the output projection.

The input of the output projection holds the heads' outputs side by side (`[tokens, heads x head_dim]`);
head h contributes `z_h @ W[:, h]^T` to the attention's output. A head's error is the per-token relative
error of its contribution against golden's (golden's heads' input and golden's weight), so a kernel that
drops a head, or a head's projection computed wrongly, shows in that head alone. Computed in float32.
"""

from __future__ import annotations

from typing import Any

from logitsdump.localize.passes import token_errors
from logitsdump.localize.records import HeadStats


def contributions(heads_in: Any, weight: Any, heads: int) -> Any:
    """[heads, tokens, hidden]: each head's contribution to the output projection's output."""
    import torch

    z = heads_in.detach().to(torch.float32).reshape(-1, heads_in.shape[-1])
    w = weight.detach().to(device=z.device, dtype=torch.float32)
    head_dim = z.shape[-1] // heads
    return torch.einsum("thd,ohd->hto", z.reshape(-1, heads, head_dim), w.reshape(w.shape[0], heads, head_dim))


def head_stats(test: Any, golden: Any) -> HeadStats:
    """Per-head mean and max over tokens of the relative error of the test's contributions against golden's."""
    means, peaks = [], []
    for head in range(golden.shape[0]):
        errors = token_errors(test[head], golden[head])
        means.append(sum(errors) / len(errors))
        peaks.append(max(errors))
    return HeadStats(tuple(means), tuple(peaks))
