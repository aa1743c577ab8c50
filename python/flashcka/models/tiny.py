"""Two small image classifiers for the demo: a ViT and a ResNet, sized for 8×8 digits."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head self-attention on (n, T, C) tokens; returns (n, T, C)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """(n, 1, H, W) image -> (n, (H/p)(W/p), dim) patch tokens."""

    def __init__(self, patch: int, dim: int, channels: int = 1):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """ViT for 8×8 digits: 2×2 patches -> 16 tokens + CLS, ``depth`` blocks of width ``dim``.
    Block outputs are (n, 17, dim) token tensors; the head reads the CLS token."""

    def __init__(self, image: int = 8, patch: int = 2, dim: int = 64, depth: int = 4,
                 heads: int = 4, classes: int = 10):
        super().__init__()
        tokens = (image // patch) ** 2
        self.embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0])


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN layers and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """ResNet for 8×8 digits: a 3×3 stem, stages of ``blocks`` BasicBlocks at the given
    widths (stride 2 between stages: 8×8 -> 4×4 -> 2×2), global average pool, linear head."""

    def __init__(self, widths=(16, 32, 64), blocks: int = 2, classes: int = 10):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must give 3 stage widths, got {widths!r}")
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for s, w in enumerate(widths):
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else w, w,
                                                     2 if s > 0 and b == 0 else 1)
                                          for b in range(blocks)]))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))
