"""MinibatchCKA against the float64 reference of Nguyen et al. 2021's estimator."""
import numpy as np
import pytest
import torch

import flashcka
import reference as ref


def batches(rng, sizes, dims, latent_dim=5):
    """Per batch, a list of layers (n_b, d) that share a latent."""
    out = []
    ws = [rng.standard_normal((latent_dim, d)) for d in dims]
    for n in sizes:
        z = rng.standard_normal((n, latent_dim))
        out.append([np.tanh(z @ w) + 0.5 * rng.standard_normal((n, w.shape[1])) + 1 for w in ws])
    return out


def t(layers):
    return [torch.tensor(a) for a in layers]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_one_batch_equals_debiased_cka(rng, kernel):
    [xa] = batches(rng, [40], [3, 8])
    [xb] = batches(rng, [40], [5])
    m = flashcka.MinibatchCKA(2, 1, kernel=kernel)
    m.update(t(xa), t(xb))
    # against the float64 reference (not cka_matrix: the same code), with atol=0
    want = np.array([[ref.cka(a, b, kernel) for b in xb] for a in xa])
    np.testing.assert_allclose(m.compute().numpy(), want, rtol=1e-10, atol=0)
    # and equal to cka_matrix on the Gram route, which shares the rows and pair stage
    same = flashcka.cka_matrix(t(xa), t(xb), kernel=kernel, route="gram")
    torch.testing.assert_close(m.compute(), same, rtol=1e-12, atol=0)
    assert m.num_batches == 1 and m.num_samples == 40


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_unequal_batches_equal_reference(rng, unbiased, kernel):
    sizes = [4, 97, 5, 33]
    bx = batches(rng, sizes, [1, 3, 40])
    by = batches(rng, sizes, [7, 2])
    m = flashcka.MinibatchCKA(3, 2, kernel=kernel, unbiased=unbiased)
    for x, y in zip(bx, by):
        m.update(t(x), t(y))
    want = ref.minibatch_cka(bx, by, kernel, unbiased)
    np.testing.assert_allclose(m.compute().numpy(), want, rtol=1e-9)
    assert m.num_samples == sum(sizes)


def test_self_comparison_uses_one_model(rng):
    bx = batches(rng, [20, 31], [4, 9, 2])
    m = flashcka.MinibatchCKA(3)
    for x in bx:
        m.update(t(x))
    np.testing.assert_allclose(m.compute().numpy(), ref.minibatch_cka(bx, bx), rtol=1e-9)


def test_state_dict_round_trip_then_more_updates(rng, tmp_path):
    bx, by = batches(rng, [30, 30, 17, 30], [5, 6]), batches(rng, [30, 30, 17, 30], [3])
    whole = flashcka.MinibatchCKA(2, 1, names_a=["p", "q"])
    for x, y in zip(bx, by):
        whole.update(t(x), t(y))
    first = flashcka.MinibatchCKA(2, 1, names_a=["p", "q"])
    for x, y in zip(bx[:2], by[:2]):
        first.update(t(x), t(y))
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = flashcka.MinibatchCKA(2, 1, names_a=["p", "q"])
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))
    for x, y in zip(bx[2:], by[2:]):
        resumed.update(t(x), t(y))
    assert torch.equal(resumed.compute(), whole.compute())
    assert resumed.num_batches == 4 and resumed.names_a == ["p", "q"]


def test_load_state_dict_refuses_other_settings(rng):
    m = flashcka.MinibatchCKA(2, 1)
    with pytest.raises(ValueError, match="settings"):
        flashcka.MinibatchCKA(2, 1, kernel="rbf").load_state_dict(m.state_dict())


def test_failed_update_keeps_batches(rng):
    bx, by = batches(rng, [25, 25], [4]), batches(rng, [25, 25], [3])
    m = flashcka.MinibatchCKA(1, 1)
    m.update(t(bx[0]), t(by[0]))
    before = m.compute().clone()
    bad = t(by[1])
    bad[0][3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        m.update(t(bx[1]), bad)
    assert m.num_batches == 1 and torch.equal(m.compute(), before)


def test_float32_accumulates_in_float64(rng):
    bx, by = batches(rng, [64] * 3, [300]), batches(rng, [64] * 3, [200])
    m = flashcka.MinibatchCKA(1, 1)
    for x, y in zip(bx, by):
        m.update([torch.tensor(x[0], dtype=torch.float32)], [torch.tensor(y[0]).float()])
    assert m.cross.dtype == torch.float64
    np.testing.assert_allclose(m.compute().numpy(), ref.minibatch_cka(bx, by), atol=1e-5)


def test_all_reduce_single_rank(rng, tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        bx, by = batches(rng, [20], [4]), batches(rng, [20], [3])
        m = flashcka.MinibatchCKA(1, 1)
        m.update(t(bx[0]), t(by[0]))
        before = m.compute()
        m.all_reduce()
        assert torch.equal(m.compute(), before) and m.num_batches == 1
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- dict batches (issue 9, item 2)
def test_dict_batches_are_matched_by_key_not_order(rng):
    """The same layers given in another key order in a later batch must not be mixed."""
    bx = batches(rng, [30, 30, 17], [3, 12, 5])
    by = batches(rng, [30, 30, 17], [4, 2])
    keys = ["conv", "fc", "head"]
    m = flashcka.MinibatchCKA(3, 2)
    for b, (x, y) in enumerate(zip(bx, by)):
        order = keys if b % 2 == 0 else keys[::-1]
        m.update({k: torch.tensor(x[keys.index(k)]) for k in order},
                 {"p": torch.tensor(y[0]), "q": torch.tensor(y[1])} if b % 2 == 0 else
                 {"q": torch.tensor(y[1]), "p": torch.tensor(y[0])})
    assert m.names_a == keys and m.names_b == ["p", "q"]
    np.testing.assert_allclose(m.compute().numpy(), ref.minibatch_cka(bx, by), rtol=1e-9)


def test_dict_batches_matched_to_given_names(rng):
    bx = batches(rng, [20, 21], [3, 6, 40])
    m = flashcka.MinibatchCKA(3, names_a=["b", "c", "a"])
    for x in bx:
        m.update({"a": torch.tensor(x[2]), "b": torch.tensor(x[0]), "c": torch.tensor(x[1])})
    np.testing.assert_allclose(m.compute().numpy(), ref.minibatch_cka(bx, bx), rtol=1e-9)


def test_dict_batch_with_missing_or_unknown_keys_raises_and_keeps_state(rng):
    bx = batches(rng, [20, 20], [3, 6])
    m = flashcka.MinibatchCKA(2)
    m.update({"a": torch.tensor(bx[0][0]), "b": torch.tensor(bx[0][1])})
    before = m.compute().clone()
    with pytest.raises(ValueError, match=r"missing \['b'\]; unknown \['c'\]"):
        m.update({"a": torch.tensor(bx[1][0]), "c": torch.tensor(bx[1][1])})
    with pytest.raises(ValueError, match=r"missing \['a'\]"):
        m.update({"b": torch.tensor(bx[1][0])})
    with pytest.raises(ValueError, match=r"unknown \['z'\]"):
        flashcka.MinibatchCKA(1, names_a=["a"]).update({"a": torch.tensor(bx[0][0]),
                                                        "z": torch.tensor(bx[0][1])})
    assert m.num_batches == 1 and torch.equal(m.compute(), before)
    # positional batches stay allowed once the names are known
    m.update([torch.tensor(a) for a in bx[1]])
    assert m.num_batches == 2


def test_dict_after_sequence_batches_without_names_raises(rng):
    bx = batches(rng, [20, 20], [3, 6])
    m = flashcka.MinibatchCKA(2)
    m.update(t(bx[0]))
    with pytest.raises(ValueError, match="names_a"):
        m.update({"x": torch.tensor(bx[1][0]), "y": torch.tensor(bx[1][1])})


def test_bad_names_arguments():
    with pytest.raises(TypeError, match="names_a must be a sequence"):
        flashcka.MinibatchCKA(2, names_a="ab")
    with pytest.raises(ValueError, match=r"names_a repeats \['x'\]"):
        flashcka.MinibatchCKA(2, names_a=["x", "x"])
    with pytest.raises(ValueError, match="names_b is given"):
        flashcka.MinibatchCKA(2, names_b=["x", "y"])


def test_keys_survive_state_dict(rng):
    bx = batches(rng, [20, 20], [3, 6])
    m = flashcka.MinibatchCKA(2)
    m.update({"a": torch.tensor(bx[0][0]), "b": torch.tensor(bx[0][1])})
    r = flashcka.MinibatchCKA(2)
    r.load_state_dict(m.state_dict())
    r.update({"b": torch.tensor(bx[1][1]), "a": torch.tensor(bx[1][0])})
    np.testing.assert_allclose(r.compute().numpy(), ref.minibatch_cka(bx, bx), rtol=1e-9)


# ---------------------------------------------------------------- load_state_dict (item 8)
def _bad_states(good):
    def edit(**kw):
        s = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in good.items()}
        s.update(kw)
        return s
    drop = dict(good)
    del drop["sq_a"]
    return [
        (edit(cross=good["cross"].T.contiguous()), ValueError, r"cross has shape \(1, 2\)"),
        (edit(cross=good["cross"].reshape(-1)), ValueError, "cross has shape"),
        (edit(hsic_a=good["hsic_a"][:1]), ValueError, "hsic_a has shape"),
        (edit(sq_b=good["sq_b"].float()), TypeError, "sq_b has dtype torch.float32"),
        (edit(hsic_b=[1.0]), TypeError, "hsic_b must be a tensor"),
        (edit(cross=good["cross"] * float("nan")), ValueError, "cross holds non-finite"),
        (edit(sq_c_a=-good["sq_c_a"]), ValueError, "negative"),
        (edit(compute_dtype="torch.float16"), ValueError, "compute_dtype"),
        (edit(compute_dtype="banana"), ValueError, "compute_dtype"),
        (edit(compute_dtype=None), ValueError, "compute_dtype"),
        (edit(num_batches=-1), ValueError, "num_batches"),
        (edit(num_batches=2.5), ValueError, "num_batches"),
        (edit(num_samples=3), ValueError, "num_samples"),
        (edit(num_batches=0), ValueError, "num_batches = 0"),
        (edit(names_a=["p"]), ValueError, "names_a has 1 names"),
        (edit(names_a="pq"), TypeError, "names_a must be a sequence"),
        (edit(version=3), ValueError, "version"),
        (edit(hsic_a=-good["hsic_a"]), ValueError, "hsic_a holds negative"),
        (edit(pow_a=good["pow_a"] + 0.5), ValueError, "pow_a must hold integer"),
        (edit(keyed="yes"), ValueError, "keyed"),
        (drop, ValueError, r"missing \['sq_a'\]"),
        ([1, 2], TypeError, "state must be a dict"),
    ]


def test_load_state_dict_validates_everything_and_applies_nothing_on_error(rng):
    bx, by = batches(rng, [25, 25], [4, 7]), batches(rng, [25, 25], [3])
    m = flashcka.MinibatchCKA(2, 1)
    m.update(t(bx[0]), t(by[0]))
    good = m.state_dict()
    target = flashcka.MinibatchCKA(2, 1)
    target.update(t(bx[1]), t(by[1]))
    before = target.state_dict()
    for state, exc, msg in _bad_states(good):
        with pytest.raises(exc, match=msg):
            target.load_state_dict(state)
        after = target.state_dict()
        for k, v in before.items():
            assert (torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k]), k
    target.load_state_dict(good)
    assert torch.equal(target.compute(), m.compute())


def test_load_state_dict_of_an_empty_accumulator():
    m = flashcka.MinibatchCKA(2, 1)
    r = flashcka.MinibatchCKA(2, 1)
    r.load_state_dict(m.state_dict())
    assert r.num_batches == 0 and r.cross is None
    with pytest.raises(RuntimeError, match="before any update"):
        r.compute()


def test_constant_infinite_layer_is_non_finite_not_zero_variance():
    """A layer whose rows are all ±inf centers to NaN/0: it must be reported as non-finite
    (found by tests/test_fuzz.py: float16 activations that overflowed)."""
    m = flashcka.MinibatchCKA(2)
    ok = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"xs\[1\] holds non-finite"):
        m.update([ok, torch.full((6, 2), float("-inf")).half()])
    assert m.num_batches == 0


@pytest.mark.parametrize("scales", [(1e80, 1.0), (1e-80, 1.0), (1e150, 1e-150),
                                    (1e-300, 1e-300), (1e-150, 1e120)])
@pytest.mark.parametrize("jackknife", [0, 3])
def test_float64_at_extreme_scales_equals_reference(rng, scales, jackknife):
    """Accumulators keep per-layer power-of-two units: x·1e80 gave CKA 0.0 (self-HSIC
    1e320 overflowed), x·1e-80 NaN with a false zero-variance warning. Batches of very
    different scales (1e-150 then 1e120) are summed as the reference sums them."""
    sizes = [30, 17, 25]
    bx, by = batches(rng, sizes, [6, 4]), batches(rng, sizes, [5])
    sa, sb = scales
    m = flashcka.MinibatchCKA(2, 1, jackknife=jackknife)
    for b, (x, y) in enumerate(zip(bx, by)):
        f = sa if b != 1 else sb        # batch 1 at the other scale
        m.update([v * f for v in t(x)], [v * sb for v in t(y)])
    # reference: Σ_b r_b C_b / sqrt(Σ_b r_b² A_b · Σ_b B_b) with the per-batch HSICs of
    # the unscaled data, r_b = (x scale of b) / (largest x scale) (x·r, y·s: HSIC·r·s)
    rs = [(sa if b != 1 else sb) for b in range(3)]
    top = max(rs)
    rs = [r / top for r in rs]
    want = np.empty((2, 1))
    for i in range(2):
        c = sum(r * ref.hsic(x[i], y[0]) for r, x, y in zip(rs, bx, by))
        a = sum(r * r * ref.hsic(x[i], x[i]) for r, x in zip(rs, bx))
        b_ = sum(ref.hsic(y[0], y[0]) for y in by)
        want[i, 0] = c / np.sqrt(a * b_)
    got = m.compute().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
    resumed = flashcka.MinibatchCKA(2, 1, jackknife=jackknife)
    resumed.load_state_dict(m.state_dict())
    assert np.array_equal(resumed.compute().numpy(), got)
    if jackknife and sa == sb:          # the same data unscaled: the same error bars
        plain = flashcka.MinibatchCKA(2, 1, jackknife=jackknife)
        for x, y in zip(bx, by):
            plain.update(t(x), t(y))
        np.testing.assert_allclose(m.stderr().numpy(), plain.stderr().numpy(), rtol=1e-8)


def test_hsic_of_a_batch_out_of_float64_range_raises():
    x = torch.randn(40, 30, dtype=torch.float64)
    with pytest.raises(ValueError, match="HSIC of x and y is about 1e3.. in the inputs' "
                                         "units, outside float64's range"):
        flashcka.hsic(x * 1e80, x * 1e80)
    with pytest.raises(ValueError, match="outside float64's range"):
        flashcka.hsic(x * 1e-80, x * 1e-80)
    np.testing.assert_allclose(float(flashcka.hsic(x * 1e70, x * 1e-70)),
                               ref.hsic(x.numpy(), x.numpy()), rtol=1e-12)


def test_numpy_scalar_settings_are_stored_as_python_numbers(tmp_path):
    m = flashcka.MinibatchCKA(1, kernel="rbf", sigma=np.float64(2.0),
                              threshold=np.float32(0.5))
    m.update([torch.randn(10, 3)])
    torch.save(m.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)      # refused NumPy scalars
    assert type(state["settings"]["sigma"]) is float
    assert type(state["settings"]["threshold"]) is float


def test_interrupted_update_leaves_state_as_before(rng):
    """A KeyboardInterrupt at any line of update() (here raised from a trace function
    at the k-th line executed in minibatch.py and jackknife.py) leaves the accumulators as they were
    before the batch, or with the whole batch in: never half of it (cross updated and
    self terms not gave CKA 0.82 where the state before gave 0.55)."""
    import sys
    bx, by = batches(rng, [20, 20], [4, 6]), batches(rng, [20, 20], [3])
    kw = dict(jackknife=2)

    def fresh():
        m = flashcka.MinibatchCKA(2, 1, **kw)
        m.update(t(bx[0]), t(by[0]))
        return m
    before = fresh().state_dict()
    done = fresh()
    done.update(t(bx[1]) * 1, [v * 1e100 for v in t(by[1])])   # new units too
    after = done.state_dict()

    def same(a, b):
        return all(torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else
                   (same(v, b[k]) if isinstance(v, dict) else v == b[k]) for k, v in a.items())
    interrupted = 0
    for k in range(1, 100000):
        m, count = fresh(), [0]

        def trace(frame, event, arg):     # the accumulator's own lines (the commit is there)
            if not frame.f_code.co_filename.endswith(("minibatch.py", "jackknife.py")):
                return None
            if event == "line":
                count[0] += 1
                if count[0] == k:
                    raise KeyboardInterrupt
            return trace
        sys.settrace(trace)
        try:
            m.update(t(bx[1]), [v * 1e100 for v in t(by[1])])
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            sys.settrace(None)
        state = m.state_dict()
        assert same(state, before) or same(state, after), k
        if count[0] < k:        # ran to the end without reaching line k
            break
    assert interrupted > 30


def test_first_update_under_inference_mode_then_outside(rng):
    bx, by = batches(rng, [20, 15, 18], [4]), batches(rng, [20, 15, 18], [3])
    m = flashcka.MinibatchCKA(1, 1)
    with torch.inference_mode():
        m.update(t(bx[0]), t(by[0]))
    m.update(t(bx[1]), t(by[1]))           # "Inplace update to inference tensor"
    with torch.inference_mode():
        m.update(t(bx[2]), t(by[2]))
    np.testing.assert_allclose(m.compute().numpy(), ref.minibatch_cka(bx, by), rtol=1e-10)


def test_load_state_dict_refuses_other_names_or_dtype(rng):
    bx, by = batches(rng, [20], [4, 5]), batches(rng, [20], [3])
    src = flashcka.MinibatchCKA(2, 1, names_a=["p", "q"], names_b=["r"])
    src.update([v.float() for v in t(bx[0])], [v.float() for v in t(by[0])])
    state = src.state_dict()
    with pytest.raises(ValueError, match=r"names_a \['p', 'q'\] differ from this "
                                         r"MinibatchCKA's names_a \['q', 'p'\]"):
        flashcka.MinibatchCKA(2, 1, names_a=["q", "p"]).load_state_dict(state)
    with pytest.raises(ValueError, match=r"compute_dtype torch.float32 differs from this "
                                         r"MinibatchCKA's dtype=torch.float64"):
        flashcka.MinibatchCKA(2, 1, dtype=torch.float64).load_state_dict(state)
    free = flashcka.MinibatchCKA(2, 1)          # no names given: the state's are taken
    free.load_state_dict(state)
    assert free.names_a == ["p", "q"] and free.compute_dtype == torch.float32


def test_version_1_state_in_input_units_loads(rng):
    """A version-1 state (sums in the inputs' units, no pow_a/pow_b) still resumes."""
    from flashcka.core.engine import ldexp
    bx, by = batches(rng, [20, 30], [4, 6]), batches(rng, [20, 30], [3])
    m = flashcka.MinibatchCKA(2, 1)
    m.update([v * 1e60 for v in t(bx[0])], t(by[0]))
    s = m.state_dict()
    assert bool((s["pow_a"] != 0).any())                    # per-layer units in use
    pa, pb = s.pop("pow_a"), s.pop("pow_b")
    v1 = {**s, "version": 1, "cross": ldexp(s["cross"], pa[:, None] + pb[None, :]),
          "hsic_a": ldexp(s["hsic_a"], 2 * pa), "hsic_b": ldexp(s["hsic_b"], 2 * pb)}
    old = flashcka.MinibatchCKA(2, 1)
    old.load_state_dict(v1)
    np.testing.assert_allclose(old.compute().numpy(), m.compute().numpy(), rtol=1e-14)
    for r in (old, m):
        r.update([v * 1e60 for v in t(bx[1])], t(by[1]))
    np.testing.assert_allclose(old.compute().numpy(), m.compute().numpy(), rtol=1e-14)
