# mypy: disable-error-code="no-any-return"
"""The BART-style text encoder of DALL-E mini/mega (min-dalle's ``DalleBartEncoder`` layout)."""

from __future__ import annotations

import torch
from torch import nn

from .config import DalleConfig
from .layers import GLU, Attention

__all__ = ["DalleBartEncoder"]


class EncoderLayer(nn.Module):
    """Pre-norm self-attention with a post-norm on its output, then the GLU block."""

    def __init__(self, embed_count: int, head_count: int, glu_embed_count: int) -> None:
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(embed_count)
        self.self_attn = Attention(head_count, embed_count)
        self.self_attn_layer_norm = nn.LayerNorm(embed_count)
        self.glu = GLU(embed_count, glu_embed_count)

    def forward(self, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.pre_self_attn_layer_norm(state)
        q, k, v = self.self_attn.self_projections(h)
        h = self.self_attn.attend(q, k, v, mask)
        state = state + self.self_attn_layer_norm(h)
        return state + self.glu(state)


class DalleBartEncoder(nn.Module):
    """Text token ids ``[batch, 64]`` -> encoder states ``[batch, 64, embed]``; ``<pad>`` is masked."""

    def __init__(self, config: DalleConfig, *, pad_token: int = 1) -> None:
        super().__init__()
        self.pad_token = pad_token
        self.embed_tokens = nn.Embedding(config.text_vocab_count, config.embed_count)
        self.embed_positions = nn.Embedding(config.text_token_count, config.embed_count)
        self.layers = nn.ModuleList(
            EncoderLayer(config.embed_count, config.attention_head_count, config.glu_embed_count)
            for _ in range(config.layer_count)
        )
        self.layernorm_embedding = nn.LayerNorm(config.embed_count)
        self.final_ln = nn.LayerNorm(config.embed_count)

    def forward(self, text_tokens: torch.Tensor) -> torch.Tensor:
        mask = text_tokens.ne(self.pad_token)[:, None, None, :]
        positions = torch.arange(text_tokens.shape[1], device=text_tokens.device)
        state = self.embed_tokens(text_tokens) + self.embed_positions(positions)[None]
        state = self.layernorm_embedding(state)
        for layer in self.layers:
            state = layer(state, mask)
        return self.final_ln(state)
