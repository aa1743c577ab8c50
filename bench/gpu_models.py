"""Random-weight models of ViT-B/16 and ResNet-50 shape for bench/gpu_bench.py, in plain
torch (no torchvision: its compiled ops must match the torch build, which a bench script on
a borrowed GPU machine or in CI cannot count on). Shapes follow the papers: ViT-B/16
(Dosovitskiy et al. 2021: 12 blocks, width 768, 12 heads, MLP 3072, 16×16 patches, 197
tokens at 224²) and ResNet-50 (He et al. 2016: bottlenecks of 3, 4, 6, 3 blocks).

``vit(...)`` returns (model, modules, pre) with the 48 hooked sub-layers of Raghu et al.
(per block: ln_1 output, attention output, ln_2 input, MLP output); ``resnet50()`` returns
(model, the 16 bottleneck blocks)."""
from __future__ import annotations

import torch
from torch import nn


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, w // self.heads).unbind(2)
        o = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                       v.transpose(1, 2))
        return self.proj(o.transpose(1, 2).reshape(b, t, w))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.self_attention = _Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

    def forward(self, x):
        x = x + self.self_attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(self, image=224, patch=16, layers=12, heads=12, width=768, mlp=3072):
        super().__init__()
        self.embed = nn.Conv2d(3, width, patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.layers = nn.ModuleList(_Block(width, heads, mlp) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1000)

    def forward(self, img):
        x = self.embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for blk in self.layers:
            x = blk(x)
        return self.head(self.ln(x[:, 0]))


def vit(**kw):
    model = ViT(**kw)
    mods, pre = [], []
    for blk in model.layers:
        mods += [blk.ln_1, blk.self_attention, blk.ln_2, blk.mlp]
        pre += [False, False, True, False]
    return model, mods, pre


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def resnet50():
    stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    blocks, cin = [], 64
    for n, mid, stride in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
        for i in range(n):
            blocks.append(_Bottleneck(cin, mid, stride if i == 0 else 1))
            cin = 4 * mid
    model = nn.Sequential(stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(cin, 1000))
    return model, blocks


class _Basic(nn.Module):
    """torchvision's BasicBlock, with its module names (conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                         nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout and module names (He et al. 2016), ``classes`` outputs."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_Basic(cin, cout, stride),
                                                         _Basic(cout, cout, 1)))
            cin = cout
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18(classes: int = 10):
    """(model, the 18 layers with weights: conv1, the 16 block convolutions, fc) — the 18
    "representational layers" of pytorch-cka's README benchmark."""
    model = ResNet18(classes)
    names = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2)
                         for c in (1, 2)] + ["fc"]
    return model, names
