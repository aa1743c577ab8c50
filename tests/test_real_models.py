"""compare() on real architectures: timm (ViT, ConvNeXt, Swin, ResNet), torchvision ResNet
and transformers (ViT, BERT with padding), randomly initialised from small configs (nothing
is downloaded), in float64, against the float64 reference (tests/reference.py) on
activations collected with plain torch hooks. Skipped, with the reason, where a library
does not import (tests/hub_models.py)."""
import warnings

import pytest
import torch

import reference
from flashcka import FlashCKAWarning, compare
from hub_models import need_timm, need_torchvision, need_transformers


def hooked_names(model, names):
    """Result names as the modules they hook: a sublayer named by meaning
    (``blocks.0: MLP branch``) as its module, ``a = b`` (one tensor, two names) as ``a``."""
    from flashcka.models.selection import select_points
    plain = {p.label: p.module + (":input" if p.kind == "input" else "")
             for p in select_points(model, "sublayers", "layers_a")}
    return [plain.get(nm.split(" = ")[0], nm.split(" = ")[0]) for nm in names]


def collect(model, labels, batches, call, feats=lambda t: t):
    """Activations at `labels` (module names, ":input" for a module's input) by plain
    forward hooks: a list over batches of lists over labels of float64 (n, d) tensors."""
    modules = dict(model.named_modules())
    store, handles = {}, []

    def keep(lb, t):
        store.setdefault(lb, t)            # first call only; returns None (hooks must)

    for lb in labels:
        name, _, kind = lb.partition(":")
        if kind == "input":
            handles.append(modules[name].register_forward_pre_hook(
                lambda m, a, kw, lb=lb: keep(lb, a[0] if a else kw["hidden_states"]),
                with_kwargs=True))
        else:
            handles.append(modules[name].register_forward_hook(
                lambda m, i, o, lb=lb: keep(lb, o if torch.is_tensor(o) else o[0])))
    out = []
    try:
        with torch.no_grad():
            for b in batches:
                store.clear()
                call(model, b)
                out.append([feats(store[lb]).double().reshape(store[lb].shape[0], -1)
                            for lb in labels])
    finally:
        for h in handles:
            h.remove()
    return out


def ref_cka(acts_a, acts_b):
    np_ = lambda acts: [[t.numpy() for t in layers] for layers in acts]  # noqa: E731
    return torch.from_numpy(reference.minibatch_cka(np_(acts_a), np_(acts_b)))


def images(sizes, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=g, dtype=torch.float64) for n in sizes]


def timm_model(name, **kw):
    timm = need_timm()
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).double().eval()


TIMM = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=3), 32,
            ["blocks.0:input", "blocks.0", "blocks.1", "blocks.2"]),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 2, 1)), 32,
                 ["stages.0.blocks.0:input", "stages.0.blocks.0", "stages.1.blocks.0",
                  "stages.2.blocks.0", "stages.2.blocks.1", "stages.3.blocks.0"]),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(depths=(1, 1, 2, 1), embed_dim=24, num_heads=(1, 1, 1, 1), img_size=32,
                  window_size=2), 32,
             ["layers.0.blocks.0:input", "layers.0.blocks.0", "layers.1.blocks.0",
              "layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]),
    "resnet": ("resnet18", {}, 32,
               ["layer1.0:input", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                "layer3.1", "layer4.0", "layer4.1"]),
}


@pytest.mark.parametrize("arch", sorted(TIMM))
def test_timm_blocks_preset_against_reference(arch):
    name, kw, size, want = TIMM[arch]
    m = timm_model(name, **kw)
    data = images([7, 6], size)
    r = compare(m, None, data, layers_a="blocks", progress=False)
    assert r.names_a == want               # embedding/stem output first, then every block
    acts = collect(m, want, data, lambda mod, x: mod(x))
    torch.testing.assert_close(r.matrix, ref_cka(acts, acts), rtol=0, atol=1e-9)


def test_timm_vit_sublayers_and_stars():
    m = timm_model(TIMM["vit"][0], **TIMM["vit"][1])
    data = images([6, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # blocks.* is the 3 blocks, nothing to skip
        r = compare(m, None, data, layers_a="blocks.*", progress=False)
    assert r.names_a == ["blocks.0", "blocks.1", "blocks.2"]
    # ("cls" would make blocks.0:input constant: the class token before any block)
    r = compare(m, None, data, layers_a="sublayers", tokens="mean", progress=False)
    assert r.names_a[:5] == ["blocks.0:input", "blocks.0: attention branch",
                             "blocks.0: residual after attention", "blocks.0: MLP branch",
                             "blocks.0 = blocks.1:input"]
    assert len(r.names_a) == 13            # blocks.i and blocks.i+1:input shown once
    acts = collect(m, hooked_names(m, r.names_a), data, lambda mod, x: mod(x),
                   feats=lambda t: t.mean(1))
    torch.testing.assert_close(r.matrix, ref_cka(acts, acts), rtol=0, atol=1e-9)
    # `**` reaches every module; attn_drop & co. are skipped with one warning, not an error
    with pytest.warns(FlashCKAWarning, match="skipping"):
        r = compare(m, None, data[:1], layers_a="blocks.**", progress=False)
    assert "blocks.0.attn.qkv" in r.names_a and "blocks.0.attn.attn_drop" not in r.names_a


def test_swin_sublayers_and_mean_over_channels_last_maps():
    name, kw, size, _ = TIMM["swin"]
    m = timm_model(name, **kw)
    data = images([6, 5], size)
    r = compare(m, None, data, layers_a="sublayers", tokens="mean", progress=False)
    assert r.names_a[:5] == ["layers.0.blocks.0:input", "layers.0.blocks.0: attention branch",
                             "layers.0.blocks.0: residual after attention",
                             "layers.0.blocks.0: MLP branch",
                             "layers.0.blocks.0"]

    def mean_tokens(t):                    # (n, H, W, C) maps and (n, H·W, C) tokens
        return t.mean((1, 2)) if t.dim() == 4 else t.mean(1)

    acts = collect(m, hooked_names(m, r.names_a), data, lambda mod, x: mod(x),
                   feats=mean_tokens)
    torch.testing.assert_close(r.matrix, ref_cka(acts, acts), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="a spatial map has no class token"):
        compare(m, None, data, layers_a="blocks", tokens="cls", progress=False)


def test_torchvision_resnet_blocks_and_timm_vit_on_one_loader():
    tv = need_torchvision()
    torch.manual_seed(1)
    res = tv.models.resnet18().double().eval()
    vit = timm_model(TIMM["vit"][0], **TIMM["vit"][1])
    data = [(x, torch.zeros(x.shape[0])) for x in images([6, 5])]
    r = compare(vit, res, data, layers_a="blocks", layers_b="blocks",
                tokens=("flatten", "mean"), progress=False)
    assert r.names_b[0] == "layer1.0:input" and len(r.names_b) == 9
    acts_a = collect(vit, r.names_a, data, lambda mod, b: mod(b[0]))
    acts_b = collect(res, r.names_b, data, lambda mod, b: mod(b[0]),
                     feats=lambda t: t.mean((2, 3)))
    torch.testing.assert_close(r.matrix, ref_cka(acts_a, acts_b), rtol=0, atol=1e-9)


def test_hf_vit_and_timm_vit_through_input_adapters():
    tr = need_transformers()
    torch.manual_seed(2)
    cfg = tr.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8)
    hf = tr.ViTModel(cfg).double().eval()
    vit = timm_model(TIMM["vit"][0], **TIMM["vit"][1])
    data = images([6, 5])
    r = compare(vit, hf, data, layers_a="blocks", layers_b="sublayers",
                inputs_b=lambda x: {"pixel_values": x}, progress=False)
    assert r.names_b == ["layers.0:input", "layers.0: attention branch",
                         "layers.0: residual after attention", "layers.0: MLP branch",
                         "layers.0 = layers.1:input", "layers.1: attention branch",
                         "layers.1: residual after attention", "layers.1: MLP branch",
                         "layers.1"]
    assert hooked_names(hf, r.names_b)[1:4] == ["layers.0.attention",
                                                "layers.0.layernorm_after:input", "layers.0.mlp"]
    acts_a = collect(vit, r.names_a, data, lambda mod, x: mod(x))
    acts_b = collect(hf, hooked_names(hf, r.names_b), data, lambda mod, x: mod(pixel_values=x))
    torch.testing.assert_close(r.matrix, ref_cka(acts_a, acts_b), rtol=0, atol=1e-9)


def bert_batch(lengths, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, t in enumerate(lengths):
        ids[i, :t] = torch.randint(1, 100, (t,), generator=g)
        mask[i, :t] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_bert_padding_is_invisible_with_the_mask():
    tr = need_transformers()
    torch.manual_seed(3)
    cfg = tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    bert = tr.BertModel(cfg).double().eval()
    lengths = [[5, 9, 3, 12, 7, 4], [8, 2, 11, 6, 10]]
    short = [bert_batch(ls, 12, seed=s) for s, ls in enumerate(lengths)]
    long = [bert_batch(ls, 32, seed=s) for s, ls in enumerate(lengths)]
    r12 = compare(bert, None, short, layers_a="sublayers", tokens="mean",
                  mask="attention_mask", progress=False)
    r32 = compare(bert, None, long, layers_a="sublayers", tokens="mean",
                  mask="attention_mask", progress=False)
    assert r12.names_a[:5] == ["encoder.layer.0:input", "encoder.layer.0: attention branch",
                               "encoder.layer.0: residual after attention",
                               "encoder.layer.0: MLP branch",
                               "encoder.layer.0 = encoder.layer.1:input"]
    assert hooked_names(bert, r12.names_a)[1:4] == [
        "encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate:input",
        "encoder.layer.0.output.dense"]
    torch.testing.assert_close(r12.matrix, r32.matrix, rtol=0, atol=1e-9)

    def masked_mean(batches):
        it = iter(batches)

        def feats(t):
            w = cur["attention_mask"].double()[:, :, None]
            return (t * w).sum(1) / w.sum(1)
        out = []
        for b in it:
            cur = b
            out += collect(bert, hooked_names(bert, r12.names_a), [b], lambda mod, bb: mod(**bb),
                           feats=feats)
        return out

    acts = masked_mean(short)
    torch.testing.assert_close(r12.matrix, ref_cka(acts, acts), rtol=0, atol=1e-9)
    # without the mask the pad tokens are averaged in, and re-padding moves CKA
    u12 = compare(bert, None, short, layers_a="blocks", tokens="mean", progress=False)
    u32 = compare(bert, None, long, layers_a="blocks", tokens="mean", progress=False)
    assert (u12.matrix - u32.matrix).abs().max() > 1e-3
