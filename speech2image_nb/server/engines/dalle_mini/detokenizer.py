# mypy: disable-error-code="no-any-return"
"""The VQGAN decoder ("detokenizer"): 16x16 image tokens -> 256x256 RGB (min-dalle's layout).

Parameter names match min-dalle's ``detoker.pt``. ``width_divisor`` > 1 shrinks every channel
count for tiny random test models; the real VQGAN has divisor 1. It always runs in float32, as
min-dalle does, because the codebook file is float32 and the output is pixels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["VQGanDetokenizer"]


def _group_norm(channel_count: int, width_divisor: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 // width_divisor, channel_count)


class ResnetBlock(nn.Module):
    def __init__(self, count_in: int, count_out: int, width_divisor: int) -> None:
        super().__init__()
        self.is_middle = count_in == count_out
        self.norm1 = _group_norm(count_in, width_divisor)
        self.conv1 = nn.Conv2d(count_in, count_out, 3, padding=1)
        self.norm2 = _group_norm(count_out, width_divisor)
        self.conv2 = nn.Conv2d(count_out, count_out, 3, padding=1)
        if not self.is_middle:
            self.nin_shortcut = nn.Conv2d(count_in, count_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        h = h * torch.sigmoid(h)
        h = self.conv1(h)
        h = self.norm2(h)
        h = h * torch.sigmoid(h)
        h = self.conv2(h)
        if not self.is_middle:
            x = self.nin_shortcut(x)
        return x + h


class AttentionBlock(nn.Module):
    def __init__(self, channel_count: int, width_divisor: int) -> None:
        super().__init__()
        self.norm = _group_norm(channel_count, width_divisor)
        self.q = nn.Conv2d(channel_count, channel_count, 1)
        self.k = nn.Conv2d(channel_count, channel_count, 1)
        self.v = nn.Conv2d(channel_count, channel_count, 1)
        self.proj_out = nn.Conv2d(channel_count, channel_count, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_count, channel_count, height, width = x.shape
        h = self.norm(x)
        k = self.k(h).reshape(batch_count, channel_count, -1)
        v = self.v(h).reshape(batch_count, channel_count, -1)
        q = self.q(h).reshape(batch_count, channel_count, -1).permute(0, 2, 1)
        w = torch.bmm(q, k) / math.sqrt(channel_count)
        w = torch.softmax(w, dim=2).permute(0, 2, 1)
        h = torch.bmm(v, w).reshape(batch_count, channel_count, height, width)
        return x + self.proj_out(h)


class MiddleLayer(nn.Module):
    def __init__(self, channel_count: int, width_divisor: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channel_count, channel_count, width_divisor)
        self.attn_1 = AttentionBlock(channel_count, width_divisor)
        self.block_2 = ResnetBlock(channel_count, channel_count, width_divisor)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Upsample(nn.Module):
    def __init__(self, channel_count: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channel_count, channel_count, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpsampleBlock(nn.Module):
    def __init__(
        self, count_in: int, count_out: int, *, has_attention: bool, has_upsample: bool, width_divisor: int
    ) -> None:
        super().__init__()
        self.has_attention = has_attention
        self.has_upsample = has_upsample
        self.block = nn.ModuleList(
            [
                ResnetBlock(count_in, count_out, width_divisor),
                ResnetBlock(count_out, count_out, width_divisor),
                ResnetBlock(count_out, count_out, width_divisor),
            ]
        )
        if has_attention:
            self.attn = nn.ModuleList(AttentionBlock(count_out, width_divisor) for _ in range(3))
        if has_upsample:
            self.upsample = Upsample(count_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j in range(3):
            h = self.block[j](h)
            if self.has_attention:
                h = self.attn[j](h)
        if self.has_upsample:
            h = self.upsample(h)
        return h


class Decoder(nn.Module):
    def __init__(self, width_divisor: int) -> None:
        super().__init__()
        c7, c8, c9 = (2**7) // width_divisor, (2**8) // width_divisor, (2**9) // width_divisor
        self.conv_in = nn.Conv2d(c8, c9, 3, padding=1)
        self.mid = MiddleLayer(c9, width_divisor)
        d = width_divisor
        self.up = nn.ModuleList(
            [
                UpsampleBlock(c7, c7, has_attention=False, has_upsample=False, width_divisor=d),
                UpsampleBlock(c8, c7, has_attention=False, has_upsample=True, width_divisor=d),
                UpsampleBlock(c8, c8, has_attention=False, has_upsample=True, width_divisor=d),
                UpsampleBlock(c9, c8, has_attention=False, has_upsample=True, width_divisor=d),
                UpsampleBlock(c9, c9, has_attention=True, has_upsample=True, width_divisor=d),
            ]
        )
        self.norm_out = _group_norm(c7, width_divisor)
        self.conv_out = nn.Conv2d(c7, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.mid(self.conv_in(z))
        for i in reversed(range(5)):
            z = self.up[i](z)
        z = self.norm_out(z)
        z = z * torch.sigmoid(z)
        return self.conv_out(z)


class VQGanDetokenizer(nn.Module):
    """Image tokens ``[images, 256]`` -> pixels ``[images, 256, 256, 3]`` as float 0..255."""

    def __init__(self, *, width_divisor: int = 1) -> None:
        super().__init__()
        self.embed_count = (2**8) // width_divisor
        self.embedding = nn.Embedding(2**14, self.embed_count)
        self.post_quant_conv = nn.Conv2d(self.embed_count, self.embed_count, 1)
        self.decoder = Decoder(width_divisor)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = self.embedding(tokens).view(tokens.shape[0], 2**4, 2**4, self.embed_count)
        z = z.permute(0, 3, 1, 2).contiguous()
        z = self.decoder(self.post_quant_conv(z))
        return z.permute(0, 2, 3, 1).clip(0.0, 1.0) * 255
