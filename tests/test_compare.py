"""compare(), layer selection, hooks and CKAResult, against an independent float64 reference."""
import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import flashcka
import reference
from flashcka import CKAResult, FlashCKAWarning, compare
from flashcka.models.selection import select_points


def default_layers(model):
    return [p.label for p in select_points(model, None, "layers_a")]


def select_layers(model, spec, arg):
    return [p.label for p in select_points(model, spec, arg)]


# ------------------------------------------------------------------ float64 reference

def ref_minibatch_cka(batches_a, batches_b, unbiased=True):
    """tests/reference.py's minibatch CKA on lists (batches) of lists (layers) of tensors."""
    def as_np(batches):
        return [[t.detach().double().numpy() for t in layers] for layers in batches]
    return torch.from_numpy(reference.minibatch_cka(as_np(batches_a), as_np(batches_b),
                                                    unbiased=unbiased))


def mlp(seed, widths=(5, 7, 3), act=nn.Tanh):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(widths[0], widths[1]), act(),
                         nn.Linear(widths[1], widths[2])).double()


def mlp_acts(model, x):
    """The three layer outputs of mlp(), computed by hand in float64."""
    l1, act, l2 = model
    a1 = x @ l1.weight.T + l1.bias
    a2 = act(a1)
    return [a1, a2, a2 @ l2.weight.T + l2.bias]


def batches(sizes, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=dtype) for n in sizes]


# ------------------------------------------------------------------ numbers

@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_two_models_match_reference(backend, unbiased):
    a, b = mlp(0), mlp(1, widths=(5, 9, 4), act=nn.ReLU)
    data = batches([37, 37, 20])
    r = compare(a, b, data, progress=False, backend=backend, unbiased=unbiased)
    ref = ref_minibatch_cka([mlp_acts(a, x) for x in data], [mlp_acts(b, x) for x in data],
                            unbiased)
    assert r.names_a == ["0", "1", "2"] and r.names_b == ["0", "1", "2"]
    assert r.num_samples == 94 and r.num_batches == 3
    torch.testing.assert_close(r.matrix, ref, rtol=0, atol=1e-10)


def test_float32_inputs_close_to_float64_reference():
    a, b = mlp(0).float(), mlp(1).float()
    data = batches([50, 41], dtype=torch.float32)
    r = compare(a, b, data, progress=False)
    ref = ref_minibatch_cka([mlp_acts(a.double(), x.double()) for x in data],
                            [mlp_acts(b.double(), x.double()) for x in data])
    torch.testing.assert_close(r.matrix, ref, rtol=0, atol=1e-5)


def test_self_comparison_equals_copy():
    a = mlp(0)
    data = batches([30, 30])
    r_self = compare(a, None, data, progress=False)
    r_copy = compare(a, copy.deepcopy(a), data, progress=False)
    torch.testing.assert_close(r_self.matrix, r_copy.matrix, rtol=0, atol=1e-12)
    assert r_self.names_a == r_self.names_b == r_copy.names_a
    want = ref_minibatch_cka([mlp_acts(a, x) for x in data], [mlp_acts(a, x) for x in data])
    torch.testing.assert_close(r_self.matrix, want, rtol=0, atol=1e-10)  # every entry
    assert r_self.settings["same_model"] is True


def test_same_object_twice_records_each_side_separately():
    a = mlp(0)
    data = batches([20])
    r = compare(a, a, data, layers_a="0", layers_b=["1", "2"], progress=False)
    assert r.matrix.shape == (1, 2)
    ref = ref_minibatch_cka([mlp_acts(a, data[0])[:1]], [mlp_acts(a, data[0])[1:]])
    torch.testing.assert_close(r.matrix, ref, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ selection

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.ReLU()) for _ in range(2)])
        self.stage = nn.Sequential(nn.ModuleList([nn.Linear(6, 6)]), nn.Linear(6, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        x = self.stage[1](self.stage[0][0](x))
        return self.head(x)


def test_default_layers_rule():
    # the "blocks" preset: blocks.* hold composite modules (and no block list themselves);
    # the first block's input comes first; `stage` mixes a leaf with a list: not blocks
    assert default_layers(Net()) == ["blocks.0:input", "blocks.0", "blocks.1"]
    # no block lists: every non-container child of a container, descending the tree
    assert default_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU())) == ["0", "1"]

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)

    assert default_layers(Flat()) == ["a", "b"]
    with pytest.raises(ValueError, match="pass the layers"):
        default_layers(nn.ReLU())


def test_select_by_name_glob_type_and_mix():
    net = Net()
    assert select_layers(net, "head", "layers_a") == ["head"]
    assert select_layers(net, "blocks.*.0", "layers_a") == ["blocks.0.0", "blocks.1.0"]
    assert select_layers(net, nn.ReLU, "layers_a") == ["blocks.0.1", "blocks.1.1"]
    assert select_layers(net, ["head", nn.ReLU, "embed", "head"], "layers_a") == \
        ["embed", "blocks.0.1", "blocks.1.1", "head"]


def test_no_match_lists_close_names():
    with pytest.raises(ValueError, match=r"layers_b.*'blocks\.0\.O'.*close names.*blocks\.0\.0"):
        compare(Net(), Net(), [torch.randn(8, 4)], layers_b=["blocks.0.O"], progress=False)
    with pytest.raises(ValueError, match="no module.*Conv2d"):
        select_layers(Net(), nn.Conv2d, "layers_a")
    with pytest.raises(TypeError, match="layers_a items"):
        select_layers(Net(), [3], "layers_a")


def test_hook_never_fired_is_an_error():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    m = Unused()
    with pytest.raises(ValueError, match=r"\['spare'\] never fired"):
        compare(m, None, [torch.randn(8, 4)], layers_a=["used", "spare"], progress=False)
    assert not m.used._forward_hooks and not m.spare._forward_hooks


# ------------------------------------------------------------------ hooks and outputs

class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(5, 5).double()

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


def test_module_called_twice_gives_two_layers():
    m = Twice()
    data = batches([25, 19])
    r = compare(m, None, data, layers_a="lin", progress=False)
    assert r.names_a == ["lin#0", "lin#1"]
    W, bias = m.lin.weight, m.lin.bias
    acts = [[x @ W.T + bias, torch.tanh(x @ W.T + bias) @ W.T + bias] for x in data]
    torch.testing.assert_close(r.matrix, ref_minibatch_cka(acts, acts), rtol=0, atol=1e-10)


def test_call_count_changing_after_first_batch_is_an_error():
    class Varying(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            for _ in range(1 if x.shape[0] > 10 else 2):
                x = self.lin(x)
            return x

    with pytest.raises(ValueError, match="lin was called more than 1"):
        compare(Varying(), None, [torch.randn(12, 3), torch.randn(8, 3)], layers_a="lin",
                progress=False)


class Outputs(nn.Module):
    """Submodules returning a tuple, a dict and a ModelOutput-like object."""

    class Tup(nn.Module):
        def forward(self, x):
            return (x * 2.0, "aux")

    class Dic(nn.Module):
        def forward(self, x):
            return {"pooler": x[:, 0], "last_hidden_state": x + 1.0}

    class FirstValue(nn.Module):
        def forward(self, x):
            return {"meta": 3, "hidden": x.square()}

    class ModelOutput(dict):
        def __init__(self, h):
            super().__init__(last_hidden_state=h)
            self.last_hidden_state = h

    class HF(nn.Module):
        def forward(self, x):
            return Outputs.ModelOutput(torch.sin(x))

    def __init__(self):
        super().__init__()
        self.tup, self.dic, self.first, self.hf = self.Tup(), self.Dic(), self.FirstValue(), self.HF()

    def forward(self, x):
        return self.tup(x)[0] + self.dic(x)["last_hidden_state"] + self.first(x)["hidden"] \
            + self.hf(x)["last_hidden_state"]


@pytest.mark.parametrize("tokens", ["flatten", "cls", "mean", "callable"])
def test_output_kinds_and_tokens(tokens):
    data = batches([21, 18], d=15)
    data = [x.reshape(-1, 5, 3) for x in data]     # 5 tokens: room for a class token
    fn = {"flatten": lambda t: t.reshape(t.shape[0], -1), "cls": lambda t: t[:, 0],
          "mean": lambda t: t.mean(1), "callable": lambda t: t[:, 1:].amax(1)}[tokens]
    tok = (lambda t: t[:, 1:].amax(1)) if tokens == "callable" else tokens
    r = compare(Outputs(), None, data, layers_a=["tup", "dic", "first", "hf"], tokens=tok,
                progress=False)
    acts = [[fn(x * 2.0), fn(x + 1.0), fn(x.square()), fn(torch.sin(x))] for x in data]
    torch.testing.assert_close(r.matrix, ref_minibatch_cka(acts, acts), rtol=0, atol=1e-10)
    assert r.settings["tokens"] == tokens


def test_conv_maps_are_flattened_and_dict_batches_are_kwargs():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1).double()

        def forward(self, image, scale=1.0):
            return self.conv(image) * scale

    m = Conv()
    g = torch.Generator().manual_seed(5)
    data = [{"image": torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64), "scale": 2.0}
            for n in (16, 13)]
    r = compare(m, None, data, layers_a=["conv"], progress=False)
    acts = [[m.conv(b["image"]).detach()] for b in data]
    torch.testing.assert_close(r.matrix, ref_minibatch_cka(acts, acts), rtol=0, atol=1e-10)


def test_small_batches_skipped_and_max_batches():
    a = mlp(0)
    data = batches([20, 3, 20, 20])
    with pytest.warns(FlashCKAWarning, match="skipping batch 1 with n = 3"):
        r = compare(a, None, data, progress=False, max_batches=3)
    assert r.num_batches == 2 and r.num_samples == 40
    with pytest.raises(ValueError, match="no usable batches"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(a, None, batches([2, 3]), progress=False)


def test_training_mode_restored_and_hooks_removed_on_error():
    a = mlp(0)
    a.train()
    a[1].eval()                              # mixed flags are restored per module
    seen = []
    a[0].register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    compare(a, None, batches([10]), progress=False)
    assert seen and not any(seen)            # eval mode during every pass
    assert a.training and a[0].training and not a[1].training and a[2].training

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            self.lin(x)
            raise RuntimeError("forward failed")

    m = Boom().train()
    with pytest.raises(RuntimeError, match="forward failed"):
        compare(m, None, [torch.randn(8, 4)], layers_a="lin", progress=False)
    assert not m.lin._forward_hooks and m.training and m.lin.training


def test_non_finite_output_names_the_layer():
    a = mlp(0)
    x = batches([10])[0]
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="layer 0 holds non-finite"):
        compare(a, None, [x], progress=False)
    assert all(not m._forward_hooks for m in a.modules())


def test_bad_arguments():
    a = mlp(0)
    with pytest.raises(ValueError, match="tokens must be"):
        compare(a, None, batches([8]), tokens="first")
    with pytest.raises(ValueError, match="max_batches"):
        compare(a, None, batches([8]), max_batches=0)
    with pytest.raises(TypeError, match="model_b must be"):
        compare(a, "resnet", batches([8]))


# ------------------------------------------------------------------ result

def test_result_round_trip(tmp_path):
    m = torch.tensor([[1.0, 0.1 + 0.2, float("nan")], [-1e-17, 2.0 / 3.0, 0.5]],
                     dtype=torch.float64)
    r = CKAResult(m, ["a", "b#1"], ["x", "y", "z"], {"kernel": "linear", "sigma": None},
                  num_samples=12, num_batches=2)
    for ext in ("json", "npz"):
        path = r.save(tmp_path / f"r.{ext}")
        back = CKAResult.load(path)
        assert back == r and flashcka.load_result(path) == r
        assert math.isnan(back.matrix[0, 2]) and back.matrix[0, 1].item() == 0.1 + 0.2
    with pytest.raises(ValueError, match=".json or .npz"):
        r.save(tmp_path / "r.txt")
    assert "2 layers x" in repr(r)


def test_compare_result_saves_and_plots(tmp_path):
    r = compare(mlp(0), mlp(1), batches([16, 16]), progress=False)
    assert CKAResult.load(r.save(tmp_path / "c.json")) == r
    png = r.plot(tmp_path / "c.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    big = CKAResult(np.random.default_rng(0).random((50, 40)),
                    [f"blocks.{i}.attn" for i in range(50)], [f"layer{i}" for i in range(40)])
    assert big.plot(tmp_path / "big.png").stat().st_size > 5000


def test_dict_batch_size_skips_broadcast_entries():
    """A dict batch whose first entry is position_ids (1, T) is B samples, not "n = 1"
    (the batch was skipped as too small)."""
    from torch import nn

    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.pos = nn.Embedding(50, 8), nn.Embedding(16, 8)
            self.out = nn.Linear(8, 4)

        def forward(self, position_ids, input_ids):
            return self.out(self.emb(input_ids) + self.pos(position_ids))
    g = torch.Generator().manual_seed(1)
    loader = [{"position_ids": torch.arange(16)[None],
               "input_ids": torch.randint(0, 50, (12, 16), generator=g)} for _ in range(2)]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "skipping batch ... n = 1"
        r = flashcka.compare(Tok(), None, loader, layers_a=["emb", "out"], tokens="mean",
                             progress=False)
    assert r.num_samples == 24 and r.num_batches == 2
