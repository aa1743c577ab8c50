"""compare()'s hooks: one forward pass per batch, glob levels, presets, input hooks, masks,
token layouts, input adapters, compute dtype, compiled models — numbers against the
float64 reference (tests/reference.py)."""
import copy
import warnings

import pytest
import torch
from torch import nn

import reference
from flashcka import FlashCKAWarning, compare
from flashcka.models.selection import glob_regex, select_points


def ref_minibatch(acts_a, acts_b, unbiased=True):
    """acts_*: list over batches of lists over layers of tensors (flattened to (n, d))."""
    def as_np(batches):
        return [[t.detach().double().reshape(t.shape[0], -1).numpy() for t in layers]
                for layers in batches]
    return torch.from_numpy(reference.minibatch_cka(as_np(acts_a), as_np(acts_b),
                                                    unbiased=unbiased))


def labels(model, spec):
    return [p.label for p in select_points(model, spec, "layers_a")]


# ------------------------------------------------------------------ a small pre-norm transformer

class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.attn_drop = nn.Dropout(0.0)        # never called (like fused attention's)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Tiny(nn.Module):
    """(n, T, C) tokens through `depth` pre-norm blocks; counts its forward calls."""

    def __init__(self, depth=12, dim=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(3, dim)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.blocks(self.embed(x)))


def manual(model, x):
    """Every sublayer point of Tiny by hand: {label: tensor}, under its module name and
    its name in results (by meaning; a block's output that is the next block's input as
    ``blocks.i = blocks.i+1:input``)."""
    out = {}
    h = model.embed(x)
    for i, b in enumerate(model.blocks):
        out[f"blocks.{i}:input"] = h
        a = b.attn(b.norm1(h))
        out[f"blocks.{i}.attn"] = out[f"blocks.{i}: attention branch"] = a
        h = h + a
        out[f"blocks.{i}.norm2:input"] = out[f"blocks.{i}: residual after attention"] = h
        m = b.mlp(b.norm2(h))
        out[f"blocks.{i}.mlp"] = out[f"blocks.{i}: MLP branch"] = m
        h = h + m
        out[f"blocks.{i}"] = out[f"blocks.{i} = blocks.{i + 1}:input"] = h
    return out


def token_batches(sizes, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, t, 3, generator=g, dtype=torch.float64) for n in sizes]


# ------------------------------------------------------------------ one forward pass

def test_one_forward_pass_per_batch_per_model():
    a, b = Tiny(depth=3).double(), Tiny(depth=2, seed=1).double()
    data = token_batches([9, 8, 7])
    calls = []
    a.blocks[0].register_forward_pre_hook(lambda m, i: calls.append("a"))
    r = compare(a, b, data, layers_a="blocks.*", layers_b="sublayers", progress=False)
    assert a.calls == 3 and b.calls == 3 and calls == ["a"] * 3
    r_self = compare(a, None, data, layers_a="blocks.*", progress=False)
    assert a.calls == 6                      # model_b=None: still one pass per batch
    acts_a = [[manual(a, x)[f"blocks.{i}"] for i in range(3)] for x in data]
    names_b = r.names_b
    acts_b = [[manual(b, x)[nm] for nm in names_b] for x in data]
    torch.testing.assert_close(r.matrix, ref_minibatch(acts_a, acts_b), rtol=0, atol=1e-10)
    torch.testing.assert_close(r_self.matrix, ref_minibatch(acts_a, acts_a), rtol=0, atol=1e-10)


# ------------------------------------------------------------------ selection

def test_star_stays_in_one_level_and_double_star_crosses():
    m = Tiny(depth=12)
    assert labels(m, "blocks.*") == [f"blocks.{i}" for i in range(12)]
    assert labels(m, "blocks.*.mlp.*") == [f"blocks.{i}.mlp.{j}" for i in range(12)
                                           for j in range(3)]
    assert labels(m, "**.norm2") == [f"blocks.{i}.norm2" for i in range(12)]
    assert labels(m, "blocks.1[01]") == ["blocks.10", "blocks.11"]
    assert glob_regex("blocks.**").match("blocks.3.mlp.0")
    assert not glob_regex("blocks.*").match("blocks.3.mlp")


def test_question_mark_that_misses_blocks_warns():
    with pytest.warns(FlashCKAWarning, match=r"'blocks\.\?' matches 10 modules but not "
                                             r"\['blocks\.10', 'blocks\.11'\]"):
        assert len(labels(Tiny(depth=12), "blocks.?")) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(labels(Tiny(depth=5), "blocks.?")) == 5


def test_presets_and_input_suffix():
    m = Tiny(depth=2)
    assert labels(m, "blocks") == ["blocks.0:input", "blocks.0", "blocks.1"]
    assert labels(m, None) == labels(m, "blocks")
    assert labels(m, "blocks:output") == ["blocks"]          # the module named like a preset
    assert labels(m, "sublayers") == [
        "blocks.0:input", "blocks.0", "blocks.0: attention branch",
        "blocks.0: residual after attention", "blocks.0: MLP branch",
        "blocks.1:input", "blocks.1", "blocks.1: attention branch",
        "blocks.1: residual after attention", "blocks.1: MLP branch"]
    assert labels(m, ["blocks.*.norm2:input", "embed"]) == \
        ["embed", "blocks.0.norm2:input", "blocks.1.norm2:input"]
    with pytest.raises(ValueError, match="preset 'blocks' found no repeated blocks"):
        select_points(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), "blocks", "layers_a")
    with pytest.raises(ValueError, match=r"'blocks\.\*\.nrom2:input' matches no module"):
        select_points(m, "blocks.*.nrom2:input", "layers_a")


class Head(nn.Module):
    def __init__(self, dim, size):
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(dim, size) for _ in range(3))


class Expert(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.up, self.down = nn.Linear(dim, 8 * dim), nn.Linear(8 * dim, dim)


class GPTBlock(nn.Module):
    """nanoGPT-style: attention heads in a ModuleList inside each block; a MoE MLP whose
    experts hold most of the block's parameters."""

    def __init__(self, dim=8, moe=False):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mha = nn.ModuleList([Head(dim, dim // 2) for _ in range(2)])   # 25% of params
        self.proj = nn.Linear(dim, dim)
        self.ffwd = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.experts = nn.ModuleList([Expert(dim) for _ in range(4)]) if moe else None


def test_blocks_preset_is_not_fooled_by_lists_inside_blocks():
    for moe in (False, True):
        m = nn.Module()
        m.embed = nn.Linear(3, 8)
        m.blocks = nn.Sequential(*[GPTBlock(moe=moe) for _ in range(3)])
        assert labels(m, "blocks") == ["blocks.0:input", "blocks.0", "blocks.1", "blocks.2"]
    # a stage that is mostly its inner block list is descended into (ConvNeXt, Swin)
    stage = nn.Module()
    stage.downsample = nn.Linear(8, 8)
    stage.blocks = nn.Sequential(GPTBlock(), GPTBlock())
    m = nn.Module()
    m.stages = nn.Sequential(stage, copy.deepcopy(stage))
    assert labels(m, "blocks") == ["stages.0.blocks.0:input", "stages.0.blocks.0",
                                   "stages.0.blocks.1", "stages.1.blocks.0", "stages.1.blocks.1"]


def test_sublayers_match_the_residual_stream_by_hand():
    m = Tiny(depth=3).double()
    data = token_batches([11, 10])
    r = compare(m, None, data, layers_a="sublayers", progress=False)
    # firing order: block input, attention branch, residual after attention, MLP, output;
    # a block's output is the next block's input: one row with both names
    assert r.names_a[:5] == ["blocks.0:input", "blocks.0: attention branch",
                             "blocks.0: residual after attention", "blocks.0: MLP branch",
                             "blocks.0 = blocks.1:input"]
    assert len(r.names_a) == 1 + 3 * 4 and r.names_a[-1] == "blocks.2"
    acts = [[manual(m, x)[nm] for nm in r.names_a] for x in data]
    torch.testing.assert_close(r.matrix, ref_minibatch(acts, acts), rtol=0, atol=1e-10)


def test_never_fired_pattern_skipped_with_one_warning_exact_name_errors():
    m = Tiny(depth=3).double()
    data = token_batches([8])
    with pytest.warns(FlashCKAWarning, match=r"skipping 3 of 6 hooked points.*attn_drop: "
                                             r"never fired") as rec:
        r = compare(m, None, data, layers_a=["blocks.*.attn_drop", "blocks.*"], progress=False)
    assert len([w for w in rec if "skipping" in str(w.message)]) == 1
    assert r.names_a == ["blocks.0", "blocks.1", "blocks.2"]
    with pytest.raises(ValueError, match=r"\['blocks.1.attn_drop'\] never fired"):
        compare(m, None, data, layers_a=["blocks.1.attn_drop", "blocks.*"], progress=False)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_pattern_point_without_batch_dimension_is_skipped_exact_errors():
    class Windows(nn.Module):          # like Swin's window attention: (n·w, ...) outputs
        def __init__(self):
            super().__init__()
            self.inner, self.outer = nn.Linear(4, 4).double(), nn.Linear(4, 4).double()

        def forward(self, x):
            y = self.inner(x.reshape(-1, 4))            # (n·2, 4)
            return self.outer(y.reshape(x.shape[0], 2, 4))

    data = [torch.randn(9, 2, 4, dtype=torch.float64)]
    with pytest.warns(FlashCKAWarning, match="inner: layer inner has 18 samples"):
        r = compare(Windows(), None, data, layers_a=nn.Linear, progress=False)
    assert r.names_a == ["outer"]
    with pytest.raises(ValueError, match="layer inner has 18 samples"):
        compare(Windows(), None, data, layers_a=["inner", "outer"], progress=False)


# ------------------------------------------------------------------ masks and layouts

class Tokens(nn.Module):
    """Per-token model (no mixing across tokens): padding does not change real tokens."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(20, 6).double()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh()).double()
                                     for _ in range(2)])

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        for b in self.blocks:
            h = b(h)
        return h


def padded(lengths, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, t in enumerate(lengths):
        ids[i, :t] = torch.randint(1, 20, (t,), generator=g)
        mask[i, :t] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("tokens", ["mean", "flatten"])
def test_mask_makes_repadding_invisible(tokens):
    m = Tokens()
    lengths = [3, 5, 2, 6, 4, 4, 1, 6, 5]
    short, long = padded(lengths, 6), padded(lengths, 11)
    assert torch.equal(long["input_ids"][:, :6], short["input_ids"])
    r6 = compare(m, None, [short], tokens=tokens, mask="attention_mask", progress=False)
    r11 = compare(m, None, [long], tokens=tokens, mask="attention_mask", progress=False)
    torch.testing.assert_close(r6.matrix, r11.matrix, rtol=0, atol=1e-12)
    # against the reference on the masked features by hand
    w = short["attention_mask"].double()[:, :, None]
    feats = []
    h = m.emb(short["input_ids"])
    for b in m.blocks:
        h = b(h)
        feats.append((h * w).sum(1) / w.sum(1) if tokens == "mean" else h * w)
    names = r6.names_a
    assert names == ["blocks.0:input", "blocks.0", "blocks.1"]
    emb = m.emb(short["input_ids"])
    f0 = (emb * w).sum(1) / w.sum(1) if tokens == "mean" else emb * w
    ref = ref_minibatch([[f0, *feats]], [[f0, *feats]])
    torch.testing.assert_close(r6.matrix, ref, rtol=0, atol=1e-10)


def test_mask_callable_tokens_callable_with_mask_and_bad_masks():
    m = Tokens()
    batch = padded([3, 5, 2, 6, 4, 4], 6)
    seen = []

    def last_real(x, mask):
        seen.append(mask is not None)
        idx = mask.long().sum(1) - 1
        return x[torch.arange(x.shape[0]), idx]

    r = compare(m, None, [batch], tokens=last_real, mask=lambda b: b["attention_mask"],
                progress=False)
    assert seen and all(seen)
    h, acts = m.emb(batch["input_ids"]), []
    idx = batch["attention_mask"].sum(1) - 1
    acts.append(h[torch.arange(6), idx])
    for b in m.blocks:
        h = b(h)
        acts.append(h[torch.arange(6), idx])
    torch.testing.assert_close(r.matrix, ref_minibatch([acts], [acts]), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="mask='am': batch 0 has no such key"):
        compare(m, None, [batch], tokens="mean", mask="am", progress=False)
    with pytest.raises(ValueError, match=r"mask of batch 0 must be an \(n, T\)"):
        compare(m, None, [batch], tokens="mean", mask=lambda b: b["attention_mask"][0],
                progress=False)


class Maps(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape
        self.conv = nn.Identity()

    def forward(self, x):
        return self.conv(x.reshape(x.shape[0], *self.shape))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_mean_over_spatial_positions_of_both_layouts(layout):
    shape = (5, 3, 3) if layout == "nchw" else (3, 3, 5)
    data = [torch.randn(12, 45, dtype=torch.float64)]
    r = compare(Maps(shape), None, data, layers_a="conv", tokens="mean", progress=False)
    x = data[0].reshape(12, *shape)
    pooled = x.mean((2, 3)) if layout == "nchw" else x.mean((1, 2))
    other = x.mean((1, 2)) if layout == "nchw" else x.mean((2, 3))
    two = compare(Maps(shape), Maps(shape), data, layers_a="conv", layers_b="conv",
                  tokens=("mean", lambda t: other), progress=False)
    ref = ref_minibatch([[pooled]], [[other]])
    torch.testing.assert_close(two.matrix, ref, rtol=0, atol=1e-10)
    assert r.matrix.shape == (1, 1)


def test_cls_and_mean_that_cannot_do_what_they_say():
    data = [torch.randn(8, 36, dtype=torch.float64)]
    with pytest.raises(ValueError, match="cannot tell"):
        compare(Maps((3, 4, 3)), None, data, layers_a="conv", tokens="mean", progress=False)
    with pytest.raises(ValueError, match="a spatial map has no class token"):
        compare(Maps((4, 3, 3)), None, data, layers_a="conv", tokens="cls", progress=False)
    with pytest.warns(FlashCKAWarning, match="9 tokens form a square grid"):
        compare(Maps((9, 4)), None, data, layers_a="conv", tokens="cls", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # 10 = 9 patches + a class token: no warning
        compare(Maps((10, 4)), None, [torch.randn(8, 40, dtype=torch.float64)],
                layers_a="conv", tokens="cls", progress=False)


# ------------------------------------------------------------------ inputs, dtype, compile

def test_input_adapters_run_two_signatures_on_one_loader():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(4)
            self.lin = nn.Linear(3, 4).double()

        def forward(self, *, pixel_values):
            return self.lin(pixel_values)

    a, b = Tiny(depth=2).double(), Kw()
    data = [{"image": x, "label": torch.zeros(x.shape[0])} for x in token_batches([9, 7])]
    r = compare(a, b, data, layers_a="blocks.*", layers_b="lin",
                inputs_a=lambda batch: batch["image"],
                inputs_b=lambda batch: {"pixel_values": batch["image"]}, progress=False)
    acts_a = [[manual(a, d["image"])[f"blocks.{i}"] for i in range(2)] for d in data]
    acts_b = [[b.lin(d["image"])] for d in data]
    torch.testing.assert_close(r.matrix, ref_minibatch(acts_a, acts_b), rtol=0, atol=1e-10)
    with pytest.raises(TypeError, match="inputs_b must be a callable"):
        compare(a, b, data, inputs_b="pixel_values")


class Widening(nn.Module):
    """float32 layers, then float64 ones (no float64 parameter: widened mid-batch)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.lin = nn.Linear(4, 9)
        self.up = nn.Identity()
        self.act, self.act2 = nn.Tanh(), nn.Softsign()

    def forward(self, x):
        h = self.lin(x)
        w = self.up(h.double() * 3.0 + 0.5)           # float64 from here
        return self.act2(self.act(w))


def test_float64_layers_after_a_float32_one_are_computed_in_float64():
    m = Widening()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(n, 4, generator=g) for n in (40, 33)]
    r = compare(m, None, data, layers_a=["lin", "up", "act", "act2"], progress=False)
    assert r.settings["dtype"] == "float64"
    acts = []
    for x in data:
        h = m.lin(x)
        w = h.double() * 3.0 + 0.5
        acts.append([h, w, torch.tanh(w), nn.functional.softsign(torch.tanh(w))])
    ref = ref_minibatch(acts, acts)
    # float64 layers among themselves: float64 accuracy (float32 compute: ~1e-7 off)
    torch.testing.assert_close(r.matrix[1:, 1:], ref[1:, 1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(r.matrix, ref, rtol=0, atol=1e-5)


def test_compiled_model_runs_uncompiled_with_equal_results():
    a = Tiny(depth=3).double()
    data = token_batches([9, 8])
    plain = compare(a, None, data, layers_a="sublayers", progress=False)
    ca = torch.compile(copy.deepcopy(a))
    r = compare(ca, None, data, layers_a="sublayers", progress=False)
    assert r.names_a == plain.names_a      # (the native backend's thread split may move the
    torch.testing.assert_close(r.matrix, plain.matrix, rtol=0, atol=1e-13)   # last bits)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ca.modules())
    b = copy.deepcopy(a)
    b.compile()
    impl = b._compiled_call_impl
    r2 = compare(b, None, data, layers_a="sublayers", progress=False)
    torch.testing.assert_close(r2.matrix, plain.matrix, rtol=0, atol=1e-13)
    assert b._compiled_call_impl is impl


def test_pattern_point_whose_second_call_is_unusable_is_dropped_whole():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(6)
            self.lin, self.out = nn.Linear(4, 4).double(), nn.Linear(4, 4).double()

        def forward(self, x):
            y = self.lin(x)
            self.lin(x.reshape(-1, 2, 4)[:, 0])       # second call: half the batch
            return self.out(y)

    data = [torch.randn(10, 4, dtype=torch.float64) for _ in range(2)]
    with pytest.warns(FlashCKAWarning, match="skipping 1 of 2.*lin: layer lin#1 has 5 samples"):
        r = compare(Reuse(), None, data, layers_a=nn.Linear, progress=False)
    assert r.names_a == ["out"]
    m = Reuse()
    acts = [[m.out(m.lin(x))] for x in data]
    torch.testing.assert_close(r.matrix, ref_minibatch(acts, acts), rtol=0, atol=1e-10)


def test_float32_layers_at_extreme_scales_give_the_unscaled_numbers():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(7)
            self.lin, self.big, self.tiny = nn.Linear(5, 6), nn.Identity(), nn.Identity()

        def forward(self, x):
            h = torch.tanh(self.lin(x))
            return self.big(h * 1e18), self.tiny(h * 1e-18)

    m = Scaled()
    g = torch.Generator().manual_seed(2)
    data = [torch.randn(n, 5, generator=g) for n in (30, 23)]
    r = compare(m, None, data, layers_a=["lin", "big", "tiny"], progress=False)
    acts = [[m.lin(x), torch.tanh(m.lin(x)), torch.tanh(m.lin(x))] for x in data]
    torch.testing.assert_close(r.matrix, ref_minibatch(acts, acts), rtol=0, atol=1e-5)


def test_one_tensor_under_two_names_is_one_row_unless_changed_in_place():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Identity()).double()
    data = [torch.randn(10, 5, dtype=torch.float64) for _ in range(2)]
    r = compare(m, None, data, layers_a=["0", "1:input", "2"], progress=False)
    # 1:input is 0's output untouched; ReLU(inplace) then changes that tensor, so 2's
    # output (the same object, a newer version) is a layer of its own
    assert r.names_a == ["0 = 1:input", "2"]
    with torch.no_grad():
        acts = [[m[0](x), torch.relu(m[0](x))] for x in data]
    torch.testing.assert_close(r.matrix, ref_minibatch(acts, acts), rtol=0, atol=1e-12)
