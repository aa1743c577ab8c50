"""Property-based fuzzing (hypothesis) of every public function on every backend present.

Property: for any input the call either
  * returns the float64 reference's value (tests/reference.py, on the same input values)
    within the error model below, NaN plus a FlashCKAWarning only where CKA is undefined or
    ill-conditioned, or
  * raises ValueError/TypeError whose message names the offending argument or layer, and
    only for input that is invalid (wrong dtype, empty, NaN/Inf, n mismatch, n too small,
    bad settings, RBF median bandwidth 0, a Gram that cannot be held in the compute dtype).
Never a crash, a hang (faulthandler kills the run after 120 s in one example), another
exception type, or an error for valid input.

Error model (docs/design.md, "Accuracy"): with u = eps of the compute dtype, a
representation's centered Gram Û_K has rounding error at most ``u·g·S_K`` where
``g = √d + √n`` (blocked sums) and ``S_K = ‖X_c‖²_F`` (linear) or
``‖K‖_F·(1 + max_a ‖x_a − μ‖²/σ²)`` (RBF). Then
``|Δ⟨Û_K, Û_L⟩| ≤ C·u·(g_K S_K ‖Û_L‖ + g_L S_L ‖Û_K‖ + n ‖Û_K‖ ‖Û_L‖ + n S_K S_L)`` (the last
term: the linear feature route, whose debiasing terms cancel to first order), and CKA's error follows
by dividing by ``‖Û_K‖ ‖Û_L‖`` (relative condition numbers ``κ = S/‖Û‖``); C = TOL_C.

Inputs: n 0..200, d 0..2000 (plus extra dims), int/bool/complex/fp16/bf16/fp32/fp64,
contiguous/transposed/sliced/expanded/unfolded/zero-stride/permuted layouts, offsets up to
1e8, scales 1e-30..1e30, NaN/Inf, constant and duplicated rows, every kernel and setting;
float64 layers times 2^k up to the type's limits on every route, MinibatchCKA and the
compiled cka_matrix (test_fuzz_float64_scales).
Triton runs through the interpreter at tiny sizes only.

Profiles: FLASHCKA_FUZZ unset or "ci": fixed seed (derandomize), >= 2,000 examples in all;
FLASHCKA_FUZZ=deep: random seeds, >= 20,000 examples; "quick": fixed seed, 500 examples (CI's
sanitizer run, .ci/sanitize).

Exclusions of known bugs being fixed elsewhere are listed in KNOWN_BUGS (empty when all fixed).
"""
from __future__ import annotations

import faulthandler
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import flashcka
import reference as ref
from flashcka.backends import get

PROFILE = os.environ.get("FLASHCKA_FUZZ", "ci")
_common = dict(deadline=None, print_blob=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_common)
settings.register_profile("deep", derandomize=False, **_common)
settings.load_profile("deep" if PROFILE == "deep" else "ci")
# examples per test: N[test] * SCALE ("quick": the sanitizer run in .ci/sanitize)
SCALE = {"deep": 10, "quick": 0.25}.get(PROFILE, 1)

TOL_C = 16.0
# Known bugs owned by other helpers: input classes excluded until fixed (name -> reason).
KNOWN_BUGS: dict[str, str] = {
    # name: "owner (bugs.md): what is excluded"; the strategies below honour these names.
    "float64_top": "owner of the pre-Gram centring (native chunk pass, _engine.gram_row): "
                   "column sums and x − μ are formed in float64 before any scale, so a layer "
                   "with max|x|·2n >= 2^1023 (within 2^(1 + log2 n) of float64's largest "
                   "number) overflows there and raises 'overflows torch.float64' "
                   "(test_fuzz_float64_scales keeps below it)",
    # Fixed on 2026-12-04: float64_sq_c_range (‖X_c‖², ‖X‖² held within [2^-1000, 2^1000] in
    # the inputs' units, pow2_scale capped within the dtype's range). Fixed on 2026-11-23 and
    # checked again: zero_variance_offset, gram_zero_bw_unnamed,
    # rbf_duplicate_noise, gram_rbf_scale, pair_stage_overflow, inf_column, center_overflow,
    # cka_denominator_underflow, float32_near_max (last: float64 layers far from 0 computed
    # in float32 on the torch path are centred in float64 first; tests/test_scale.py).
}

BACKENDS = ["auto", "torch"]
if get("native").usable()[0]:
    BACKENDS.append("native")
try:
    TRITON = get("triton").usable()[0]
except ImportError:
    TRITON = False

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BAD_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]
STATS = {"calls": 0, "errors": 0, "nan": 0, "max_err_over_tol": 0.0}  # hypothesis examples: 2,000 (ci)


HANG_S = 120  # one call running longer than this is a hang: the run dies with a traceback


# ---------------------------------------------------------------- input strategies
def rare(draw, percent):
    """True with about `percent` % probability; shrinks towards False (the common case)."""
    return draw(st.integers(0, 99)) >= 100 - percent


@st.composite
def rep_spec(draw, tiny=False):
    """How to build one representation (everything but n)."""
    ndim = draw(st.sampled_from([1, 2, 2, 2, 3, 4]))      # total dims incl. n
    dmax = 24 if tiny else draw(st.sampled_from([8, 64, 2000]))
    tail = []
    for _ in range(ndim - 1):
        tail.append(draw(st.integers(1, max(1, int(round(dmax ** (1 / (ndim - 1))))))))
    if rare(draw, 3):
        tail = tail[:-1] + [0] if tail else [0]            # an empty feature dim
    if tiny:
        dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64,
                                      torch.float16]))
    else:
        dtype = draw(st.sampled_from(BAD_DTYPES)) if rare(draw, 4) else \
            draw(st.sampled_from(FLOATS[:2] * 3 + FLOATS[2:]))
    return dict(
        tail=tail, dtype=dtype,
        layout=draw(st.sampled_from(["contiguous", "contiguous", "transposed", "sliced",
                                     "unfolded", "expand_rows", "expand_feature",
                                     "zero_stride", "permuted"])),
        values=draw(st.sampled_from(["latent", "latent", "gauss", "lowrank", "integer",
                                     "constant", "duplicated", "sparse", "heavy"])),
        scale=10.0 ** draw(st.sampled_from([0, 0, 0, -30, -12, -3, 3, 9, 15, 30])),
        offset=draw(st.sampled_from([0.0, 0.0, 1.0, 123.456, 1e4, 1e8])),
        poison=draw(st.sampled_from(["nan", "inf", "-inf"])) if rare(draw, 3) else None,
        seed=draw(st.integers(0, 2 ** 31 - 1)),
    )


def build(spec, n, latent):
    """The tensor described by spec with n samples (values from its own seeded rng)."""
    rng = np.random.default_rng(spec["seed"])
    tail, D = spec["tail"], math.prod(spec["tail"])
    shape = (n, *tail)
    if n == 0 or D == 0:
        v = np.zeros((n, D))
    else:
        kind = spec["values"]
        if kind == "latent":
            w = rng.standard_normal((latent.shape[1], D))
            v = np.tanh(latent[:n] @ w) + 0.3 * rng.standard_normal((n, D))
        elif kind == "lowrank":
            v = rng.standard_normal((n, 2)) @ rng.standard_normal((2, D))
        elif kind == "integer":
            v = rng.integers(-3, 4, size=(n, D)).astype(np.float64)
        elif kind == "constant":
            v = np.broadcast_to(rng.standard_normal((1, D)), (n, D)).copy()
        elif kind == "duplicated":
            v = rng.standard_normal((max(1, n // 3), D))[rng.integers(0, max(1, n // 3), n)]
        elif kind == "sparse":
            v = rng.standard_normal((n, D)) * (rng.random((n, D)) < 0.05)
        elif kind == "heavy":
            v = rng.standard_cauchy((n, D))
        else:
            v = rng.standard_normal((n, D))
        off = spec["offset"] * rng.uniform(0.5, 1.0, size=D) * rng.choice([-1, 1], size=D)
        v = (v + off) * spec["scale"]
        if spec["poison"]:
            v[rng.integers(0, n), rng.integers(0, D)] = float(spec["poison"])
    dtype = spec["dtype"]
    x = _layout(torch.from_numpy(np.ascontiguousarray(v).reshape(shape)), spec, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 overflow to inf, complex casts
        if dtype == torch.bool:
            return x > 0
        if dtype.is_complex:
            return x.to(dtype) * (1 + 1j)
        if not dtype.is_floating_point:
            return x.clamp(-100, 100).round().to(dtype)
        return x.to(dtype)


def _layout(x, spec, rng):
    """Same shape, awkward strides (values may change where the layout implies it)."""
    n, tail = x.shape[0], list(x.shape[1:])
    kind = spec["layout"]
    if x.numel() == 0 or kind == "contiguous":
        return x
    if kind == "transposed":
        return x.permute(*reversed(range(x.dim()))).contiguous().permute(
            *reversed(range(x.dim())))
    if kind == "sliced":
        big = torch.zeros([2 * s + 1 for s in x.shape], dtype=x.dtype)
        view = big[tuple(slice(1, None, 2) for _ in x.shape)]
        view.copy_(x)
        return view
    if kind == "expand_rows":          # every row the same storage: constant representation
        return x[:1].expand(*x.shape)
    if kind == "expand_feature":       # stride 0 along the last feature dim
        if not tail:
            return x
        return x[..., :1].expand(*x.shape)
    if kind == "zero_stride":          # as_strided with a zero stride in a random dim
        strides = list(x.stride())
        strides[int(rng.integers(0, x.dim()))] = 0
        return torch.as_strided(x.contiguous(), x.shape, strides)
    if kind == "unfolded":             # overlapping rows: row i starts at i·step
        D = math.prod(tail)
        step = int(rng.integers(1, D + 1))
        flat = x.reshape(-1)[: (n - 1) * step + D]
        if flat.numel() < (n - 1) * step + D:
            flat = torch.cat([flat, x.reshape(-1)])[: (n - 1) * step + D]
        return flat.unfold(0, D, step).view(n, *tail)
    if kind == "permuted":             # trailing dims not mergeable into one stride
        if len(tail) < 2:
            return x.T.contiguous().T if x.dim() == 2 else x
        perm = [0] + list(range(x.dim() - 1, 0, -1))
        return x.permute(*perm).contiguous().permute(*perm)
    raise AssertionError(kind)


@st.composite
def kernel_settings(draw):
    kernel = "poly" if rare(draw, 2) else draw(st.sampled_from(["linear", "rbf"]))
    sigma = draw(st.sampled_from([0.0, -1.0, float("nan")])) if rare(draw, 3) else \
        draw(st.sampled_from([None, None, None, 0.5, 3.0, 1e-3, 1e3]))
    threshold = draw(st.sampled_from([0.0, float("inf")])) if rare(draw, 2) else \
        draw(st.sampled_from([1.0, 1.0, 0.5, 2.0]))
    unbiased = draw(st.sampled_from([True, True, False]))
    dtype = torch.float16 if rare(draw, 2) else \
        draw(st.sampled_from([None, None, None, torch.float32, torch.float64]))
    return dict(kernel=kernel, sigma=sigma, threshold=threshold, unbiased=unbiased,
                dtype=dtype)


def sizes(tiny):
    @st.composite
    def n(draw):
        if rare(draw, 6):
            return draw(st.integers(0, 3))
        top = 12 if tiny else draw(st.sampled_from([16, 64, 200]))
        return draw(st.integers(4, top))
    return n()


# ---------------------------------------------------------------- expected outcome
def _is_float(t):
    return t.dtype.is_floating_point


def compute_dtype(tensors, dtype):
    if dtype is not None:
        return dtype
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def setting_errors(kw, route=None, backend="auto"):
    """Acceptable (type, words) for invalid settings; [] when the settings are fine."""
    errs = []
    if kw.get("kernel", "linear") not in ("linear", "rbf"):
        errs.append((ValueError, ["kernel"]))
    s = kw.get("sigma")
    if s is not None and not (s > 0 and math.isfinite(s)):
        errs.append((ValueError, ["sigma"]))
    th = kw.get("threshold", 1.0)
    if not (th > 0 and math.isfinite(th)):
        errs.append((ValueError, ["threshold"]))
    if kw.get("dtype") not in (None, torch.float32, torch.float64):
        errs.append((ValueError, ["dtype"]))
    if route == "feature" and kw.get("kernel") == "rbf":
        errs.append((ValueError, ["route"]))
    return errs


class Excused(Exception):
    """An input class excluded by KNOWN_BUGS: the example is not checked."""


def excusable(test):
    """Run test; an Excused input class (KNOWN_BUGS) ends the example unchecked."""
    import functools

    @functools.wraps(test)
    def wrapper(data):
        try:
            return test(data)
        except Excused:
            return None
    return wrapper


class Rep:
    """The float64 reference's view of one representation (n, d)."""

    def __init__(self, x, name, kw):
        self.x, self.name = x, name
        self._stats, self._dist, self.K_full = {}, None, None
        self.n = x.shape[0]
        self.d = x[0].numel() if self.n else 0
        self.errors = []
        if not _is_float(x):
            self.errors.append((TypeError, [name]))
            return
        if self.n == 0 or self.d == 0:
            self.errors.append((ValueError, [name]))
            return
        self.x64 = x.detach().to(torch.float64).reshape(self.n, -1).numpy()
        if not np.isfinite(self.x64).all():
            self.errors.append((ValueError, [name]))
            if "inf_column" in KNOWN_BUGS and (np.isinf(self.x64).all(0)).any():
                STATS["excused"] = STATS.get("excused", 0) + 1
                raise Excused()
            return
        self.xc = self.x64 - self.x64.mean(0)
        self.constant = bool((self.x64 == self.x64[:1]).all())
        self.sq_c = float((self.xc ** 2).sum())
        self.sq = float((self.x64 ** 2).sum())
        self.g = math.sqrt(self.d) + math.sqrt(self.n)
        self.amax = float(np.abs(self.x64).max())

    def kernel(self, kw, u=0.0):
        """Reference kernel of the centered features (distances are invariant to it, and
        float64 centering first keeps the reference exact at large offsets), minus 11ᵀ for
        RBF (``expm1``: both centerings remove 11ᵀ exactly, and an RBF kernel near 11ᵀ keeps
        its digits), and the error scale S. (None, S) when the median bandwidth is 0."""
        if kw["kernel"] == "linear":
            k = self.xc @ self.xc.T
            # + the rounding residue of the column mean (a shift of every row by up to
            # g·u·|μ|: no change in exact arithmetic, but rounding is relative to it)
            # (+ rounding a float64 input to a float32 compute dtype: X + E, |E| <= u|X|)
            return k, self.sq_c + (self.g * u) ** 2 * self.sq + self._down(u) * 2 * math.sqrt(
                self.sq_c * self.sq) / self.g
        sq = (self.xc ** 2).sum(1)
        dist = self.distances()
        s2 = kw["sigma"] ** 2 if kw["sigma"] is not None else \
            kw["threshold"] ** 2 * np.median(dist)   # numpy's median of all n² entries
        if s2 == 0:
            if dist.max() == 0:      # constant representation: K = 11ᵀ
                self.K_full = np.ones((self.n, self.n))
                return np.zeros((self.n, self.n)), float(self.n)
            return None, max(sq.max(), 1e-300)
        # K − 11ᵀ by expm1 keeps the digits of K near 1; K itself keeps those of tiny K (near
        # I): both centre to the same Û, take the form whose typical entry is better held.
        kk = np.exp(-dist / (2 * s2))
        k1 = kk if np.median(kk) < 0.5 else np.expm1(-dist / (2 * s2))
        self.K_full = kk
        raw = (self.x64 ** 2).sum(1).max()
        return k1, float(np.linalg.norm(kk)) * (
            1 + (sq.max() + self.sq * u + self._down(u) * 2 * math.sqrt(sq.max() * raw)) / s2)

    def tiny_self(self, kw):
        """Known bug cka_denominator_underflow: this layer's self-HSIC is below 1e-150."""
        st = self.stats(kw, 0.0)
        n = self.n
        return "cka_denominator_underflow" in KNOWN_BUGS and st is not None and \
            st["U"] ** 2 / (n * (n - 3) if kw["unbiased"] else (n - 1) ** 2) < 1e-150

    def _down(self, u):
        """1 when the input is rounded to a narrower compute dtype (float64 -> float32)."""
        return 1.0 if self.x.dtype == torch.float64 and u > 1e-10 else 0.0

    def distances(self):
        """Squared pairwise distances (n, n) of the float64 rows, exactly 0 between equal
        rows (the formula ‖a‖² + ‖b‖² − 2a·b alone leaves rounding noise there)."""
        if self._dist is None:
            xc = self.xc
            if self.n * self.n * self.d <= 4_000_000:
                d = ((xc[:, None, :] - xc[None, :, :]) ** 2).sum(-1)
            else:
                sq = (xc ** 2).sum(1)
                d = np.maximum(sq[:, None] + sq[None, :] - 2 * xc @ xc.T, 0)
                _, inv = np.unique(self.x64, axis=0, return_inverse=True)
                inv = inv.reshape(-1)
                d[inv[:, None] == inv[None, :]] = 0
            self._dist = d
        return self._dist

    def stats(self, kw, u):
        """Centered reference kernel C (Û or HKH), its norm U, error scale S and g;
        None when the median bandwidth is 0."""
        key = (kw["kernel"], kw["sigma"], kw["threshold"], kw["unbiased"], u)
        if key not in self._stats:
            self._stats[key] = self._compute_stats(kw, u)
        return self._stats[key]

    def _compute_stats(self, kw, u):
        k, s = self.kernel(kw, u)
        if k is None:
            return None
        c = ref.center_unbiased_fast(k) if kw["unbiased"] else ref.center_biased(k)
        return dict(k=k, C=c, U=float(np.linalg.norm(c)), S=s, g=self.g)


def ref_hsic(sa, sb, n, unbiased):
    """Reference HSIC: ⟨Û_K, Û_L⟩_F / (n(n−3)) or ⟨HKH, HLH⟩_F / (n−1)²."""
    return float(np.sum(sa["C"] * sb["C"])) / (n * (n - 3) if unbiased else (n - 1) ** 2)


def group_errors(reps, kw):
    """(must, may): errors a call on these representations must raise (any one of them:
    the library may find them in any order), and errors it may raise besides."""
    must = [e for r in reps for e in r.errors]
    ns = {r.n for r in reps}
    if len(ns) > 1:
        must.append((ValueError, ["samples"]))
    elif min(ns) < (4 if kw["unbiased"] else 2):
        must.append((ValueError, ["n = "]))
    bw_must, may = [], []
    f32max = float(torch.finfo(torch.float32).max)
    for r in reps:
        if not r.errors and "pair_stage_overflow" in KNOWN_BUGS:
            may.append((ValueError, ["pair stage"]))
        f32 = r.x.dtype != torch.float64 or kw.get("dtype") == torch.float32
        if not r.errors and "float32_near_max" in KNOWN_BUGS and f32 and (
                r.amax * max(r.n, r.d) * 16 > f32max or (r.constant and r.amax > 1e25)):
            may.append((ValueError, [r.name, "overflow"]))
    if kw["kernel"] == "rbf" and kw["sigma"] is None:
        for r in reps:
            if r.errors or r.n < 2:
                continue
            dist = r.distances()
            med = np.median(dist)
            if med == 0 and dist.max() > 0:
                if not must and "rbf_duplicate_noise" in KNOWN_BUGS:  # no claim until fixed
                    STATS["excused"] = STATS.get("excused", 0) + 1
                    raise Excused()
                if kw.get("dtype") == torch.float32 and r.x.dtype == torch.float64:
                    may.append((ValueError, [r.name, "sigma"]))  # rounded: may be constant
                else:
                    bw_must.append((ValueError, [r.name, "sigma"]))
                if "gram_zero_bw_unnamed" in KNOWN_BUGS:
                    bw_must.append((ValueError, ["sigma"]))
            elif med <= 1e4 * np.finfo(np.float32).eps * max(dist.max(), 1e-300):
                may.append((ValueError, [r.name, "sigma"]))  # float32 may round it to 0
            elif kw.get("dtype") == torch.float32 and r.x.dtype == torch.float64 and \
                    med <= 16 * r.d * (np.finfo(np.float32).eps * r.amax) ** 2:
                # float64 input rounded to float32 (dtype=float32): its distinct rows may
                # become duplicates, and the median of the rounded data 0
                may.append((ValueError, [r.name, "sigma"]))
    return must + bw_must, may


def ref_cka(sa, sb):
    """Reference CKA ⟨C_a/‖C_a‖, C_b/‖C_b‖⟩_F (normalised first: no underflow); NaN if a
    centered kernel is 0."""
    if not (sa["U"] > 0 and sb["U"] > 0):
        return math.nan
    return float(np.sum((sa["C"] / sa["U"]) * (sb["C"] / sb["U"])))


def check_raises(call, errors):
    """The call must raise one of `errors` ((type, words): the message names every word of
    at least one of them)."""
    try:
        call()
    except (ValueError, TypeError) as e:
        msg = str(e)
        ok = any(isinstance(e, t) and all(w in msg for w in words) for t, words in errors)
        assert ok, f"{type(e).__name__}({msg!r}) is not one of {errors}"
        STATS["errors"] += 1
        return
    raise AssertionError(f"no error raised; expected one of {errors}")


def run(call, must, may):
    """Run call: when errors are required check them; else return its value, or None when
    it raised an acceptable (may) error."""
    STATS["calls"] += 1
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        if must:
            check_raises(call, must + may)
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = call()
            except (ValueError, TypeError) as e:
                msg = str(e)
                if any(isinstance(e, t) and all(w in msg for w in words) for t, words in may):
                    STATS["errors"] += 1
                    return None
                raise AssertionError(f"valid input raised {type(e).__name__}: {msg}") from e
    finally:
        faulthandler.cancel_dump_traceback_later()
    warned = [w for w in caught if issubclass(w.category, flashcka.FlashCKAWarning)
              and "not usable" not in str(w.message)]
    return out, warned


def cka_tolerance(batches_k, batches_l, cka_ref, u):
    """Allowed |Δ CKA| for one pair over batches, each side a list of (stats, n, norm) per
    batch. inf when a self term is within its own error bound (CKA ill-conditioned)."""
    e_num = e_k = e_l = dk = dl = 0.0
    for (sk, n, norm), (sl, _, _) in zip(batches_k, batches_l):
        # (+ n·S_K·S_L: the feature route's debiasing terms cancel to first order in S)
        e_num += (sk["g"] * sk["S"] * sl["U"] + sl["g"] * sl["S"] * sk["U"]
                  + n * sk["U"] * sl["U"] + n * sk["S"] * sl["S"]) / norm
        e_k += (2 * sk["g"] * sk["S"] * sk["U"] + n * sk["U"] ** 2 + n * sk["S"] ** 2) / norm
        e_l += (2 * sl["g"] * sl["S"] * sl["U"] + n * sl["U"] ** 2 + n * sl["S"] ** 2) / norm
        dk += sk["U"] ** 2 / norm
        dl += sl["U"] ** 2 / norm
    e_num, e_k, e_l = TOL_C * u * e_num, TOL_C * u * e_k, TOL_C * u * e_l
    if not (e_k < dk / 4 and e_l < dl / 4):
        return math.inf
    c = abs(cka_ref) if math.isfinite(cka_ref) else 1.0
    return e_num / math.sqrt(dk) / math.sqrt(dl) + c * (e_k / dk + e_l / dl)


def excused_pair(reps, kw):
    """Whether a known bug (KNOWN_BUGS) excuses this pair's CKA entry."""
    return any(r.tiny_self(kw) for r in reps)


def check_cka_entry(got, want, tol, undefined_required, warned, what, excused=False):
    note(f"{what}: got {got!r} want {want!r} tol {tol:.3g}")
    if excused:
        STATS["excused"] = STATS.get("excused", 0) + 1
        return
    if math.isnan(got):
        STATS["nan"] += 1
        assert warned, f"{what}: NaN without a FlashCKAWarning"
        assert undefined_required or not math.isfinite(tol) or not math.isfinite(want), \
            f"{what}: NaN for a well-conditioned pair (reference {want}, tol {tol:.3g})"
        return
    assert not undefined_required, f"{what}: {got} for a constant representation (want NaN)"
    assert math.isfinite(got), f"{what}: {got}"
    if math.isfinite(tol) and math.isfinite(want):
        err = abs(got - want)
        STATS["max_err_over_tol"] = max(STATS["max_err_over_tol"], err / max(tol, 1e-300))
        assert err <= tol, f"{what}: |{got} - {want}| = {err:.3g} > tol {tol:.3g}"


# ---------------------------------------------------------------- the properties
def _backend(draw_backend, tiny):
    return draw_backend(st.sampled_from(BACKENDS + (["triton"] if TRITON and tiny else [])))


@settings(max_examples=int(400 * SCALE))
@given(data=st.data())
@excusable
def test_fuzz_gram(data):
    tiny = TRITON and rare(data.draw, 10)
    n = data.draw(sizes(tiny))
    spec = data.draw(rep_spec(tiny))
    kw = data.draw(kernel_settings())
    backend = _backend(data.draw, tiny)
    x = build(spec, n, np.random.default_rng(0).standard_normal((max(n, 1), 4)))
    note(f"x {tuple(x.shape)} {x.dtype} stride {x.stride()} {spec} {kw} {backend}")
    call = lambda: flashcka.gram(x, kw["kernel"], sigma=kw["sigma"],  # noqa: E731
                                 threshold=kw["threshold"], dtype=kw["dtype"], backend=backend)
    errs = setting_errors(kw)
    r = Rep(x, "x", kw)
    if errs or r.errors:
        return run(call, errs + r.errors, [])
    ct = compute_dtype([x], kw["dtype"])
    u = float(torch.finfo(ct).eps)
    must, may = group_errors([r], dict(kw, unbiased=False))
    must = [e for e in must if "n = " not in e[1]]
    if kw["kernel"] == "linear":
        want = r.x64 @ r.x64.T
        nrm = np.sqrt((r.x64 ** 2).sum(1))
        tol = TOL_C * u * (math.sqrt(r.d) + 1) * nrm[:, None] * nrm[None, :] \
            + float(torch.finfo(ct).tiny)      # entries below the normal range may flush
        big = np.abs(want).max() if want.size else 0.0
        if big > float(torch.finfo(ct).max) / 4:
            may.append((ValueError, ["x", "overflow"]))
            if big > float(torch.finfo(ct).max):
                must.append((ValueError, ["x", "overflow"]))
        if nrm.max() ** 2 > float(torch.finfo(ct).max) / 4:  # partial sums may overflow
            may.append((ValueError, ["x", "overflow"]))
        if r.amax ** 2 * r.d < 1e4 * float(torch.finfo(ct).tiny):  # every product subnormal
            may.append((ValueError, ["x", "underflow"]))
    else:
        k, s = r.kernel(kw, u)
        if k is None or must:
            return run(call, must, may)
        want = r.K_full
        tol = TOL_C * u * (math.sqrt(r.d) + 1) * s / np.linalg.norm(want) \
            * np.ones_like(k)
        if (r.xc ** 2).sum(1).max() > float(torch.finfo(ct).max) / 4 or (
                "gram_rbf_scale" in KNOWN_BUGS and r.amax > 1e25 and ct == torch.float32):
            may.append((ValueError, ["x", "overflow"]))
    res = run(call, must, may)
    if res is None:
        return
    got, _ = res
    assert got.shape == (r.n, r.n) and got.dtype == ct, (got.shape, got.dtype)
    err = np.abs(got.double().numpy() - want)
    assert np.isfinite(got.double().numpy()).all(), "non-finite Gram for valid input"
    STATS["max_err_over_tol"] = max(STATS["max_err_over_tol"], float((err / tol).max()))
    assert (err <= tol).all(), f"gram: max err {err.max():.3g}, tol there {tol.flat[err.argmax()]:.3g}"


@settings(max_examples=int(300 * SCALE))
@given(data=st.data())
@excusable
def test_fuzz_center(data):
    tiny = TRITON and rare(data.draw, 10)
    n = data.draw(sizes(tiny))
    m = data.draw(st.sampled_from([n, n, n, n + 1]))
    spec = data.draw(rep_spec(tiny))
    spec["tail"] = [m]
    unbiased = data.draw(st.booleans())
    backend = _backend(data.draw, tiny)
    k = build(spec, n, np.random.default_rng(1).standard_normal((max(n, 1), 4)))
    if data.draw(st.booleans()) and k.numel() and k.shape[0] == k.shape[1] and \
            k.dtype.is_floating_point:
        k = k + k.T  # symmetric, as a kernel matrix is
    note(f"k {tuple(k.shape)} {k.dtype} stride {k.stride()} unbiased={unbiased} {backend}")
    call = lambda: flashcka.center(k, unbiased=unbiased, backend=backend)  # noqa: E731
    if not k.dtype.is_floating_point:
        return run(call, [(TypeError, ["k"])], [])
    if k.numel() == 0 or k.shape[0] != k.shape[1]:
        return run(call, [(ValueError, ["k"])], [])
    k64 = k.to(torch.float64).numpy()
    if not np.isfinite(k64).all():
        return run(call, [(ValueError, ["k"])], [])
    if n < (4 if unbiased else 2):
        return run(call, [(ValueError, ["n = "])], [])
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    u = float(torch.finfo(ct).eps)
    want = ref.center_unbiased_fast(k64) if unbiased else ref.center_biased(k64)
    tol = TOL_C * u * (math.sqrt(n) + 2) * np.abs(k64).max() * np.ones_like(k64)
    near_max = np.abs(k64).max() * n > float(torch.finfo(ct).max) / 4
    may = [(ValueError, ["k", "overflow"])] if near_max else []
    if near_max and "center_overflow" in KNOWN_BUGS:
        STATS["excused"] = STATS.get("excused", 0) + 1
        raise Excused()
    res = run(call, [], may)
    if res is None:
        return
    got, _ = res
    assert got.shape == (n, n)
    err = np.abs(got.double().numpy() - want)
    STATS["max_err_over_tol"] = max(STATS["max_err_over_tol"], float((err / tol).max()))
    assert (err <= tol).all(), f"center: max err {err.max():.3g} tol {tol.max():.3g}"


def _pair_inputs(data, tiny, count_a, count_b):
    n = data.draw(sizes(tiny))
    latent = np.random.default_rng(data.draw(st.integers(0, 2 ** 31 - 1))).standard_normal(
        (max(n, 1) + 1, 4))
    mismatch = rare(data.draw, 3)
    xa = []
    for i in range(count_a + count_b):
        ni = n + 1 if (mismatch and i == count_a + count_b - 1) else n
        spec = data.draw(rep_spec(tiny))
        note(f"input {i}: n={ni} {spec}")
        xa.append(build(spec, ni, latent))
    return n, xa[:count_a], xa[count_a:]


@settings(max_examples=int(500 * SCALE))
@given(data=st.data())
@excusable
def test_fuzz_hsic_cka(data):
    """hsic and cka of two representations against the float64 reference."""
    tiny = TRITON and rare(data.draw, 10)
    n, [x], [y] = _pair_inputs(data, tiny, 1, 1)
    kw = data.draw(kernel_settings())
    backend = _backend(data.draw, tiny)
    fn = data.draw(st.sampled_from(["cka", "cka", "hsic"]))
    note(f"{fn} x {tuple(x.shape)} {x.dtype} {x.stride()} y {tuple(y.shape)} {y.dtype} "
         f"{y.stride()} {kw} {backend}")
    call = lambda: getattr(flashcka, fn)(x, y, backend=backend, **kw)  # noqa: E731
    errs = setting_errors(kw)
    reps = [Rep(x, "x", kw), Rep(y, "y", kw)]
    must, may = group_errors(reps, kw)
    if errs or must:
        return run(call, errs + must, may)
    ct = compute_dtype([x, y], kw["dtype"])
    u = float(torch.finfo(ct).eps)
    sx, sy = reps[0].stats(kw, u), reps[1].stats(kw, u)
    if sx is None or sy is None:
        return run(call, [], may + [(ValueError, ["sigma"])])
    n = reps[0].n
    nrm = n * (n - 3) if kw["unbiased"] else (n - 1) ** 2
    h = ref_hsic(sx, sy, n, kw["unbiased"])
    res = run(call, [], may)
    if res is None:
        return
    got, warned = res
    assert got.dtype == torch.float64 and got.dim() == 0, (got.dtype, got.shape)
    got = float(got)
    if fn == "hsic":
        assert math.isfinite(got), f"hsic {got}"
        tol = TOL_C * u * (sx["g"] * sx["S"] * sy["U"] + sy["g"] * sy["S"] * sx["U"]
                           + n * sx["U"] * sy["U"] + n * sx["S"] * sy["S"]
                           + TOL_C * u * sx["g"] * sx["S"] * sy["g"] * sy["S"]) / nrm
        err = abs(got - h)
        STATS["max_err_over_tol"] = max(STATS["max_err_over_tol"], err / max(tol, 1e-300))
        assert err <= tol, f"hsic |{got} - {h}| = {err:.3g} > {tol:.3g}"
        return
    want = ref_cka(sx, sy)
    tol = cka_tolerance([(sx, n, nrm)], [(sy, n, nrm)], want, u)
    check_cka_entry(got, want, tol, reps[0].constant or reps[1].constant, warned, "cka",
                    excused_pair(reps, kw))


@settings(max_examples=int(450 * SCALE))
@given(data=st.data())
@excusable
def test_fuzz_cka_matrix(data):
    tiny = TRITON and rare(data.draw, 10)
    la = data.draw(st.integers(1, 3))
    lb = data.draw(st.integers(0, 3))
    n, xa, xb = _pair_inputs(data, tiny, la, lb)
    kw = data.draw(kernel_settings())
    backend = _backend(data.draw, tiny)
    route = data.draw(st.sampled_from(["auto", "auto", "gram", "feature"]))
    as_dict = data.draw(st.booleans())
    A = {f"a{i}": t for i, t in enumerate(xa)} if as_dict else xa
    B = None if lb == 0 else ({f"b{i}": t for i, t in enumerate(xb)} if as_dict else xb)
    names_a = list(A) if as_dict else [f"xs[{i}]" for i in range(la)]
    names_b = names_a if B is None else (list(B) if as_dict else [f"ys[{i}]" for i in range(lb)])
    note(f"xa {[(tuple(t.shape), t.dtype, t.stride()) for t in xa]} xb "
         f"{[(tuple(t.shape), t.dtype, t.stride()) for t in xb]} {kw} {backend} {route}")
    call = lambda: flashcka.cka_matrix(A, B, backend=backend, route=route, **kw)  # noqa: E731
    errs = setting_errors(kw, route)
    reps_a = [Rep(t, nm, kw) for t, nm in zip(xa, names_a)]
    reps_b = reps_a if B is None else [Rep(t, nm, kw) for t, nm in zip(xb, names_b)]
    allreps = reps_a + ([] if B is None else reps_b)
    must, may = group_errors(allreps, kw)
    if route == "feature" and backend in ("native", "triton"):
        may.append((ValueError, ["route", "backend"]))   # a route the backend cannot run
    if errs or must:
        return run(call, errs + must, may)
    ct = compute_dtype([r.x for r in allreps], kw["dtype"])
    u = float(torch.finfo(ct).eps)
    sa = [r.stats(kw, u) for r in reps_a]
    sb = sa if B is None else [r.stats(kw, u) for r in reps_b]
    if any(s is None for s in sa + sb):
        return run(call, [], may + [(ValueError, ["sigma"])])
    res = run(call, [], may)
    if res is None:
        return
    got, warned = res
    assert got.shape == (la, len(reps_b)) and got.dtype == torch.float64
    n = reps_a[0].n
    nrm = n * (n - 3) if kw["unbiased"] else (n - 1) ** 2
    for i, (ra, si) in enumerate(zip(reps_a, sa)):
        for j, (rb, sj) in enumerate(zip(reps_b, sb)):
            want = ref_cka(si, sj)
            tol = cka_tolerance([(si, n, nrm)], [(sj, n, nrm)], want, u)
            check_cka_entry(float(got[i, j]), want, tol, ra.constant or rb.constant, warned,
                            f"cka_matrix[{i}, {j}]", excused_pair([ra, rb], kw))


@settings(max_examples=int(350 * SCALE))
@given(data=st.data())
@excusable
def test_fuzz_minibatch(data):
    tiny = TRITON and rare(data.draw, 10)
    la = data.draw(st.integers(1, 3))
    lb = data.draw(st.integers(0, 2))
    nb = data.draw(st.integers(1, 4))
    kw = data.draw(kernel_settings())
    kw["dtype"] = data.draw(st.sampled_from([None, torch.float32, torch.float64]))
    backend = _backend(data.draw, tiny)
    specs = [data.draw(rep_spec(tiny)) for _ in range(la + lb)]
    for s in specs:                        # one model's layers keep their shape and dtype
        s["poison"] = None
    as_dict = data.draw(st.booleans())
    resume = data.draw(st.booleans())
    batches = []
    for b in range(nb):
        n = data.draw(sizes(tiny))
        latent = np.random.default_rng(b).standard_normal((max(n, 1), 4))
        layers = []
        for s in specs:
            s = dict(s, seed=s["seed"] + b)
            if rare(data.draw, 2):
                s["poison"] = "nan"
            layers.append(build(s, n, latent))
        batches.append(layers)
    note(f"{nb} batches, shapes {[[tuple(t.shape) for t in bt] for bt in batches]} dtypes "
         f"{[t.dtype for t in batches[0]]} {kw} {backend} dict={as_dict} resume={resume}")
    try:
        m = flashcka.MinibatchCKA(la, lb or None, backend=backend, **kw)
    except (ValueError, TypeError) as e:
        errs = setting_errors(kw)
        assert errs, f"constructor raised {e} for valid settings"
        assert any(all(w in str(e) for w in words) for _, words in errs), str(e)
        return
    assert not setting_errors(kw), "invalid settings accepted by the constructor"
    accepted = []
    for b, layers in enumerate(batches):
        xa, xb = layers[:la], layers[la:]
        # messages name layers by the accumulator's names: dict keys, else xs[i] / ys[i]
        names_a = [f"a{i}" for i in range(la)] if as_dict else [f"xs[{i}]" for i in range(la)]
        names_b = [f"b{i}" for i in range(lb)] if as_dict else [f"ys[{i}]" for i in range(lb)]
        A = dict(reversed(list(zip(names_a, xa)))) if (as_dict and b % 2) else (
            dict(zip(names_a, xa)) if as_dict else xa)
        B = None if lb == 0 else (dict(zip(names_b, xb)) if as_dict else xb)
        reps = [Rep(t, nm, kw) for t, nm in zip(xa + xb, names_a + names_b)]
        must, may = group_errors(reps, kw)
        if not must and any(r.stats(kw, 0.0) is None for r in reps):
            may = may + [(ValueError, ["sigma"])]
        before = (m.num_batches, None if m.cross is None else m.cross.clone())
        res = run(lambda: m.update(A, B), must, may)
        if res is None:    # raised: nothing was added
            assert m.num_batches == before[0]
            assert before[1] is None or torch.equal(m.cross, before[1])
            continue
        accepted.append((reps[:la], reps[la:] if lb else reps[:la]))
        if resume and b == 0:
            m2 = flashcka.MinibatchCKA(la, lb or None, backend=backend, **kw)
            m2.load_state_dict(m.state_dict())
            m = m2
    if not accepted:
        with pytest.raises(RuntimeError, match="before any update"):
            m.compute()
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = m.compute()
    warned = [w for w in caught if issubclass(w.category, flashcka.FlashCKAWarning)]
    lbb = lb or la
    assert got.shape == (la, lbb) and got.dtype == torch.float64
    if as_dict:   # layers are in the order of the names (the first accepted dict's keys)
        keys_a = [f"a{i}" for i in range(la)]
        keys_b = [f"b{i}" for i in range(lb)] if lb else keys_a
        assert sorted(m.names_a) == keys_a and sorted(m.names_b) == sorted(keys_b)
        got = got[[m.names_a.index(k) for k in keys_a]][:, [m.names_b.index(k) for k in keys_b]]
    assert m.num_batches == len(accepted)
    cts = [compute_dtype([r.x for r in a + b_], kw["dtype"]) for a, b_ in accepted]
    u = max(float(torch.finfo(c).eps) for c in cts)
    for i in range(la):
        for j in range(lbb):
            per_k, per_l, num, dk, dl = [], [], 0.0, 0.0, 0.0
            const_i = const_j = True
            for ra, rb in accepted:
                n = ra[0].n
                nrm = n * (n - 3) if kw["unbiased"] else (n - 1) ** 2
                si, sj = ra[i].stats(kw, u), rb[j].stats(kw, u)
                per_k.append((si, n, nrm))
                per_l.append((sj, n, nrm))
                num += ref_hsic(si, sj, n, kw["unbiased"])
                dk += si["U"] ** 2 / nrm
                dl += sj["U"] ** 2 / nrm
                const_i &= ra[i].constant
                const_j &= rb[j].constant
            want = num / math.sqrt(dk) / math.sqrt(dl) if dk > 0 and dl > 0 else math.nan
            tol = cka_tolerance(per_k, per_l, want, u)
            check_cka_entry(float(got[i, j]), want, tol, const_i or const_j, warned,
                            f"minibatch[{i}, {j}]",
                            any(excused_pair([ra[i], rb[j]], kw) for ra, rb in accepted))


def _pow2_range(x):
    """(lo, hi): every k with x·2^k exact in float64's normal range (smallest non-zero
    |x|·2^k >= 2^-1022, largest < 2^1024)."""
    v = x.abs()
    nz = v[v > 0]
    if nz.numel() == 0:
        return 0, 0
    return -1021 - math.frexp(float(nz.min()))[1], 1024 - math.frexp(float(nz.max()))[1]


def _times_pow2(x, k: int):
    """x · 2^k in two exact steps (2^k alone may not exist in float64)."""
    return x * 2.0 ** (k // 2) * 2.0 ** (k - k // 2)


@settings(max_examples=int(200 * SCALE))
@given(data=st.data())
@excusable
def test_fuzz_float64_scales(data):
    """float64 layers times 2^k, k anywhere that keeps them exact in float64's normal range
    (largest |x| from about 2^-1000 to 2^1023): CKA is scale invariant, so cka_matrix on
    every backend and route, MinibatchCKA and (sometimes) the compiled cka_matrix give the
    reference CKA of the unscaled layers within the error model; hsic gives the reference
    HSIC times its scale, or says it is outside float64's range, and only when it is."""
    la, lb = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    n = data.draw(st.integers(4, 40))
    latent = np.random.default_rng(data.draw(st.integers(0, 2 ** 31 - 1))).standard_normal(
        (n, 4))
    kw = dict(kernel=data.draw(st.sampled_from(["linear", "linear", "rbf"])),
              unbiased=data.draw(st.booleans()), sigma=None, threshold=1.0, dtype=None)
    xs, ks, reps = [], [], []
    for i in range(la + lb):
        spec = dict(data.draw(rep_spec(tiny=True)), dtype=torch.float64, poison=None,
                    scale=1.0)
        spec["tail"] = [max(t, 1) for t in spec["tail"]]
        x = build(spec, n, latent)
        lo, hi = _pow2_range(x)
        if "float64_top" in KNOWN_BUGS and lo < hi:            # stay where it holds
            top = math.frexp(float(x.abs().max()))[1]
            hi = max(lo, min(hi, 1022 - top - math.ceil(math.log2(2 * n))))
        k = data.draw(st.sampled_from([lo, hi, lo + 100, hi - 100, 0]) if rare(data.draw, 60)
                      else st.integers(lo, hi))
        k = min(max(k, lo), hi)
        xs.append(_times_pow2(x, k))
        ks.append(k)
        reps.append(Rep(x, f"x{i}", kw))
    assert all(torch.equal(_times_pow2(a, -k), r.x) for a, k, r in zip(xs, ks, reps)), \
        "2^k scaling was not exact"
    backend = _backend(data.draw, False)
    route = data.draw(st.sampled_from(["auto", "gram", "feature"]))
    if kw["kernel"] == "rbf" or backend == "native":
        route = "gram"
    note(f"{kw} {backend} {route} n={n} shapes {[tuple(x.shape) for x in xs]} 2^k {ks}")
    u = float(torch.finfo(torch.float64).eps)
    must, may = group_errors(reps, kw)     # (the unscaled layers' errors: RBF bandwidth 0)
    if must or any(r.stats(kw, u) is None for r in reps):
        return
    nrm = n * (n - 3) if kw["unbiased"] else (n - 1) ** 2
    big = [math.ldexp(r.amax, k) for r, k in zip(reps, ks)]
    dev = [math.ldexp(float(np.abs(r.xc).max()), k) for r, k in zip(reps, ks)]
    if "float64_top" in KNOWN_BUGS and any(b * 2 * r.n >= 2.0 ** 1023 for b, r in zip(big, reps)):
        STATS["excused"] = STATS.get("excused", 0) + 1
        raise Excused()
    xa, xb, ra, rb = xs[:la], xs[la:], reps[:la], reps[la:]

    def check(got, warned, what):
        assert got.shape == (la, lb) and got.dtype == torch.float64
        for i, p in enumerate(ra):
            for j, q in enumerate(rb):
                si, sj = p.stats(kw, u), q.stats(kw, u)
                want = ref_cka(si, sj)
                tol = cka_tolerance([(si, n, nrm)], [(sj, n, nrm)], want, u)
                check_cka_entry(float(got[i, j]), want, tol, p.constant or q.constant, warned,
                                f"{what}[{i}, {j}]")

    res = run(lambda: flashcka.cka_matrix(xa, xb, backend=backend, route=route, **kw), [], may)
    if res is None:                        # an acceptable error (RBF bandwidth near 0)
        return
    check(*res, "cka_matrix")
    m = flashcka.MinibatchCKA(la, lb, backend=backend, **kw)
    res = run(lambda: (m.update(xa, xb), m.compute())[1], [], may)
    if res is not None:
        check(*res, "MinibatchCKA")
    if rare(data.draw, 8):
        torch._dynamo.reset()
        f = torch.compile(lambda a, b: flashcka.cka_matrix(a, b, backend=backend, **kw),
                          fullgraph=True, backend="eager")
        res = run(lambda: f(xa, xb), [], may)
        if res is not None:
            check(res[0], ["(the compiled route does not warn)"], "compiled")
    # hsic of the first pair: the reference times its scale (RBF with the median bandwidth
    # is scale invariant), or "outside float64's range" when it is
    sx, sy = ra[0].stats(kw, u), rb[0].stats(kw, u)
    e = 2 * (ks[0] + ks[la]) if kw["kernel"] == "linear" else 0
    h = ref_hsic(sx, sy, n, kw["unbiased"])
    tol = TOL_C * u * (sx["g"] * sx["S"] * sy["U"] + sy["g"] * sy["S"] * sx["U"]
                       + n * sx["U"] * sy["U"] + n * sx["S"] * sy["S"]) / nrm
    held = sx["U"] > 0 and sy["U"] > 0      # else HSIC is exactly 0 (a constant layer)
    mag = math.log2(sx["U"] * sy["U"] / nrm) + e if held else 0.0   # log2 √(HSIC_xx HSIC_yy)
    outside = held and (mag > 1023 or mag < -1022 or (
        abs(h) > 0 and math.log2(abs(h)) + e > 1023))
    resolved = math.isfinite(cka_tolerance([(sx, n, nrm)], [(sy, n, nrm)], ref_cka(sx, sy), u))
    if outside and not resolved:      # a self term within its error bound: no claim
        return
    if outside:
        run(lambda: flashcka.hsic(xa[0], xb[0], **kw), [(ValueError, ["outside float64"])],
            [])
        return
    res = run(lambda: flashcka.hsic(xa[0], xb[0], **kw),
              [], [(ValueError, ["outside float64"])] if mag > 1020 or mag < -1019 else [])
    if res is None:
        return
    got = float(res[0])
    try:
        tol = math.ldexp(tol, e) + 2.0 ** -1072
    except OverflowError:          # the value fits, its error bound does not: no claim
        return
    want = math.ldexp(h, e)
    assert abs(got - want) <= tol, f"hsic |{got} - {want}| > {tol} (scale 2^{e})"


def test_vectorised_reference_equals_the_definition():
    """reference.center_unbiased_fast (used above for speed) against the loop definition."""
    rng = np.random.default_rng(0)
    for n in (4, 5, 13):
        k = rng.standard_normal((n, n))
        np.testing.assert_allclose(ref.center_unbiased_fast(k), ref.center_unbiased(k),
                                   rtol=0, atol=1e-13)


def test_fuzz_report():
    """Figures of this run (printed with -s; collected last in this module)."""
    print(f"\nfuzz profile {PROFILE}: {STATS}")
