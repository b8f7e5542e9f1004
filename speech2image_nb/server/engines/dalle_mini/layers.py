# mypy: disable-error-code="no-any-return"
"""Building blocks shared by the encoder and the decoder (parameter names as in min-dalle's files).

On the CPU's int8 path the projections that read the same input are fused after loading
(:meth:`Attention.fuse_self_projections`, :meth:`GLU.fuse_input_projections`): one int8 product
instead of three (queries, keys, values) or two (the GLU's gate and value), so the per-call work
around the kernel (scaling the rows, the call itself) is done once. Per-output-channel weight
scales make the fused layer compute exactly what the separate ones did.
"""

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
        #: fc0 and fc1 in one layer, once :meth:`fuse_input_projections` has run
        self.fc01: nn.Module | None = None

    def fuse_input_projections(self) -> None:
        """Replace ``fc0`` and ``fc1`` (both read the normalized input) by one layer ``fc01``."""
        self.fc01 = _concatenated(self.fc0, self.fc1)
        del self.fc0, self.fc1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.ln0(z)
        if self.fc01 is not None:
            w, v = self.fc01(z).chunk(2, dim=-1)
        else:
            w, v = self.fc0(z), self.fc1(z)
        return self.fc2(self.ln1(functional.gelu(w) * v))


def _concatenated(*linears: nn.Linear, row_scales: tuple[float, ...] | None = None) -> nn.Linear:
    """One bias-free Linear whose output is the outputs of ``linears`` side by side (each times its
    ``row_scales`` entry, if given)."""
    weights = [linear.weight.detach() for linear in linears]
    if row_scales is not None:
        weights = [w.float() * scale for w, scale in zip(weights, row_scales, strict=True)]
    weight = torch.cat(weights).float()
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight.data.copy_(weight)
    return fused.requires_grad_(False)


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
        #: queries (pre-scaled), keys and values in one layer, once :meth:`fuse_self_projections` ran
        self.qkv_proj: nn.Module | None = None

    def fuse_self_projections(self) -> None:
        """Replace ``q_proj``, ``k_proj`` and ``v_proj`` by one layer ``qkv_proj`` (self-attention
        only: its three read the same input), with the queries' scaling folded into its weights."""
        head_embed = self.embed_count // self.head_count
        self.qkv_proj = _concatenated(
            self.q_proj, self.k_proj, self.v_proj, row_scales=(head_embed**-0.5, 1.0, 1.0)
        )
        del self.q_proj, self.k_proj, self.v_proj

    def self_projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scaled queries, keys and values ``[batch, heads, tokens, head_embed]`` of ``x``."""
        if self.qkv_proj is None:
            return (self.queries(x), *self.keys_values(x))
        q, k, v = self.qkv_proj(x).split(self.embed_count, dim=-1)
        return tuple(split_heads(part, self.head_count) for part in (q, k, v))  # type: ignore[return-value]

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled queries ``[batch, heads, tokens, head_embed]``."""
        q = split_heads(self.q_proj(x), self.head_count)
        return q / (q.shape[-1] ** 0.5)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, heads, tokens, head_embed]``."""
        return split_heads(self.k_proj(x), self.head_count), split_heads(self.v_proj(x), self.head_count)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of ``q`` over ``k``/``v`` where ``mask`` is True (all, for ``None``), then the
        output projection."""
        # keys and values may be held in a narrower dtype than the queries (the CPU's bf16 cache)
        out = functional.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, scale=1.0)
        out = out.to(q.dtype)
        batch_count, _, token_count, _ = out.shape
        out = out.transpose(1, 2).reshape(batch_count, token_count, self.embed_count)
        return self.out_proj(out)
