# mypy: disable-error-code="no-any-return"
"""The BART-style image-token decoder, one token per call over a preallocated KV cache.

min-dalle's decoder recomputes the cross-attention keys and values of the 64 text states at every
one of the 256 steps and concatenates into a cache it reallocates; here they are computed once per
generation (:meth:`DalleBartDecoder.prepare`) and each step writes its own keys and values in place
at the step's position (:meth:`DalleBartDecoder.step`). The position is a device tensor, so a step
has no Python-side state and can be captured once as a CUDA graph and replayed 256 times.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import torch
from torch import nn

from .config import IMAGE_TOKEN_COUNT, DalleConfig
from .layers import GLU, Attention

__all__ = ["DalleBartDecoder", "DecoderCache"]


@dataclasses.dataclass
class DecoderCache:
    """Static buffers of one generation; rows are ``[unconditioned images..., conditioned images...]``.

    Shapes (``L`` layers, ``B`` = 2 x images, ``H`` heads, ``D`` head size): ``self_keys`` and
    ``self_values`` ``[L, B, H, 256, D]``; ``cross_keys`` and ``cross_values`` ``[L, B, H, 64, D]``;
    ``cross_mask`` ``[B, 1, 1, 64]`` (True where the text token is not padding).
    """

    self_keys: torch.Tensor
    self_values: torch.Tensor
    cross_keys: torch.Tensor
    cross_values: torch.Tensor
    cross_mask: torch.Tensor
    token_positions: torch.Tensor  # arange(256), for the causal mask

    @classmethod
    def allocate(
        cls, config: DalleConfig, row_count: int, *, device: torch.device, dtype: torch.dtype
    ) -> DecoderCache:
        """Zeroed buffers for ``row_count`` decoder rows (2 per image)."""
        head_embed = config.embed_count // config.attention_head_count
        self_shape = (
            config.layer_count,
            row_count,
            config.attention_head_count,
            IMAGE_TOKEN_COUNT,
            head_embed,
        )
        cross_shape = (*self_shape[:3], config.text_token_count, head_embed)

        def zeros(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.zeros(shape, device=device, dtype=dtype)

        return cls(
            self_keys=zeros(self_shape),
            self_values=zeros(self_shape),
            cross_keys=zeros(cross_shape),
            cross_values=zeros(cross_shape),
            cross_mask=torch.zeros(
                (row_count, 1, 1, config.text_token_count), device=device, dtype=torch.bool
            ),
            token_positions=torch.arange(IMAGE_TOKEN_COUNT, device=device),
        )

    def copy_rows_into(self, target: DecoderCache, rows: torch.Tensor, position_count: int) -> None:
        """Copy decoder rows ``rows`` (in order) into ``target``, a cache of ``len(rows)`` rows.

        Only the first ``position_count`` self-attention positions hold keys and values yet; later
        positions of ``target`` keep whatever they held, which the causal mask hides until each step
        writes its own.
        """
        done = slice(0, position_count)
        target.self_keys[:, :, :, done].copy_(self.self_keys[:, :, :, done].index_select(1, rows))
        target.self_values[:, :, :, done].copy_(self.self_values[:, :, :, done].index_select(1, rows))
        target.cross_keys.copy_(self.cross_keys.index_select(1, rows))
        target.cross_values.copy_(self.cross_values.index_select(1, rows))
        target.cross_mask.copy_(self.cross_mask.index_select(0, rows))


class DecoderLayer(nn.Module):
    """Self-attention over earlier image tokens, cross-attention over the text, then the GLU block."""

    def __init__(self, head_count: int, embed_count: int, glu_embed_count: int) -> None:
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(embed_count)
        self.self_attn = Attention(head_count, embed_count)
        self.self_attn_layer_norm = nn.LayerNorm(embed_count)
        self.pre_encoder_attn_layer_norm = nn.LayerNorm(embed_count)
        self.encoder_attn = Attention(head_count, embed_count)
        self.encoder_attn_layer_norm = nn.LayerNorm(embed_count)
        self.glu = GLU(embed_count, glu_embed_count)

    def step(
        self,
        state: torch.Tensor,
        position: torch.Tensor,
        self_mask: torch.Tensor,
        cache: DecoderCache,
        layer_index: int,
        visible: int | None = None,
    ) -> torch.Tensor:
        """One token ``[B, 1, embed]`` through the layer, writing its keys/values at ``position``.

        ``visible`` (``position + 1``, where the caller knows it on the host) restricts the
        self-attention to the positions written so far instead of masking all 256 (see
        :meth:`DalleBartDecoder.step`).
        """
        h = self.pre_self_attn_layer_norm(state)
        q, k, v = self.self_attn.self_projections(h)
        keys, values = cache.self_keys[layer_index], cache.self_values[layer_index]
        keys.index_copy_(2, position, k.to(keys.dtype))
        values.index_copy_(2, position, v.to(values.dtype))
        if visible is not None:
            h = self.self_attn.attend(q, keys[:, :, :visible], values[:, :, :visible], None)
        else:
            h = self.self_attn.attend(q, keys, values, self_mask)
        state = state + self.self_attn_layer_norm(h)

        h = self.pre_encoder_attn_layer_norm(state)
        h = self.encoder_attn.attend(
            self.encoder_attn.queries(h),
            cache.cross_keys[layer_index],
            cache.cross_values[layer_index],
            cache.cross_mask,
        )
        state = state + self.encoder_attn_layer_norm(h)
        return state + self.glu(state)


class DalleBartDecoder(nn.Module):
    """Image-token decoder; :meth:`step` maps the previous tokens to next-token logits."""

    def __init__(self, config: DalleConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.image_vocab_count + 1, config.embed_count)
        self.embed_positions = nn.Embedding(IMAGE_TOKEN_COUNT, config.embed_count)
        self.layers = nn.ModuleList(
            DecoderLayer(config.attention_head_count, config.embed_count, config.glu_embed_count)
            for _ in range(config.layer_count)
        )
        self.layernorm_embedding = nn.LayerNorm(config.embed_count)
        self.final_ln = nn.LayerNorm(config.embed_count)
        self.lm_head = nn.Linear(config.embed_count, config.image_vocab_count + 1, bias=False)

    def prepare(self, cache: DecoderCache, encoder_state: torch.Tensor, text_mask: torch.Tensor) -> None:
        """Fill the cross-attention keys/values and mask for this generation's rows (once, not per step)."""
        for i, layer in enumerate(cast("list[DecoderLayer]", self.layers)):
            k, v = layer.encoder_attn.keys_values(encoder_state)
            cache.cross_keys[i].copy_(k)
            cache.cross_values[i].copy_(v)
        cache.cross_mask.copy_(text_mask[:, None, None, :])

    def step(self, prev_tokens: torch.Tensor, position: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Logits ``[2 x images, image_vocab + 1]`` for the token at ``position`` (a 1-element long tensor).

        ``prev_tokens`` ``[images]`` are the tokens at ``position - 1`` (or the start token); both the
        unconditioned and the conditioned row of an image see the same previous token.

        On the CPU, where reading the position costs nothing, the self-attention reads only the
        keys and values written so far, half of the cache on average, instead of all 256
        positions under a mask: there a step's attention reads its cache from memory, as it does
        the weights. Elsewhere (CUDA, where the step is captured as a graph and has no host-side
        state) the mask does the same job.
        """
        visible = int(position.item()) + 1 if position.device.type == "cpu" else None
        tokens = prev_tokens.repeat(2)[:, None]
        state = self.embed_tokens(tokens) + self.embed_positions(position)[None]
        state = self.layernorm_embedding(state)
        self_mask = (cache.token_positions <= position)[None, None, None, :]
        for i, layer in enumerate(cast("list[DecoderLayer]", self.layers)):
            state = layer.step(state, position, self_mask, cache, i, visible)
        return self.lm_head(self.final_ln(state))[:, 0, :]
