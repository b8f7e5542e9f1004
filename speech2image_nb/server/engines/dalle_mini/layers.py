# mypy: disable-error-code="no-any-return"
"""Building blocks shared by the encoder and the decoder (parameter names as in min-dalle's files)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

__all__ = ["GLU", "Attention", "split_heads"]


class GLU(nn.Module):
    """Gated feed-forward block of DALL-E BART: LN, two projections, GELU gate, LN, projection."""

    def __init__(self, count_in_out: int, count_middle: int) -> None:
        super().__init__()
        self.ln0 = nn.LayerNorm(count_in_out)
        self.ln1 = nn.LayerNorm(count_middle)
        self.fc0 = nn.Linear(count_in_out, count_middle, bias=False)
        self.fc1 = nn.Linear(count_in_out, count_middle, bias=False)
        self.fc2 = nn.Linear(count_middle, count_in_out, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.ln0(z)
        w = functional.gelu(self.fc0(z))
        v = self.fc1(z)
        return self.fc2(self.ln1(w * v))


def split_heads(x: torch.Tensor, head_count: int) -> torch.Tensor:
    """``[batch, tokens, embed]`` -> ``[batch, heads, tokens, embed / heads]``."""
    batch_count, token_count, _ = x.shape
    return x.view(batch_count, token_count, head_count, -1).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention projections; the attention itself is ``scaled_dot_product_attention``.

    Queries are scaled before the product, as min-dalle does, so fp32 results agree with it to
    rounding; ``scale=1`` then tells SDPA not to scale again.
    """

    def __init__(self, head_count: int, embed_count: int) -> None:
        super().__init__()
        self.head_count = head_count
        self.embed_count = embed_count
        self.k_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.v_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.q_proj = nn.Linear(embed_count, embed_count, bias=False)
        self.out_proj = nn.Linear(embed_count, embed_count, bias=False)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled queries ``[batch, heads, tokens, head_embed]``."""
        q = split_heads(self.q_proj(x), self.head_count)
        return q / (q.shape[-1] ** 0.5)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, heads, tokens, head_embed]``."""
        return split_heads(self.k_proj(x), self.head_count), split_heads(self.v_proj(x), self.head_count)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of ``q`` over ``k``/``v`` where ``mask`` is True, then the output projection."""
        out = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        batch_count, _, token_count, _ = out.shape
        out = out.transpose(1, 2).reshape(batch_count, token_count, self.embed_count)
        return self.out_proj(out)
