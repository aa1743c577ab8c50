"""``CKAResult``: a layer-by-layer CKA matrix with its names, settings and error bars;
saves (JSON/NPZ), loads (checking every field) and plots (PNG/SVG/PDF heatmaps)."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

_FORMAT = "flashcka.CKAResult"
_REQUIRED = ("names_a", "names_b", "matrix")
_MAX_PANEL_IN = 16.0       # heatmap side in inches (1,920 px at 120 dpi); ticks thin past it


class CKAResult:
    """CKA between the layers of two models.

    Attributes:
        matrix: (L_A, L_B) float64 tensor (CPU); ``matrix[i, j]`` is the CKA of layer
            ``names_a[i]`` with ``names_b[j]``. NaN where CKA is undefined.
        names_a, names_b: layer names (``name#k`` for the k-th call of a module).
        stderr: (L_A, L_B) float64 jackknife standard errors over batches (see
            ``flashcka.core.jackknife``), or None when not computed.
        pvalue, null_mean, null_std: (L_A, L_B) float64 permutation test of every pair
            (``flashcka.permutation_test``; ``calibrate`` or ``compare(...,
            permutations=N)``), or None; ``calibrated`` (observed − null mean) and
            ``zscore`` follow from them; ``settings["permutations"]`` says how.
        ci_low, ci_high: (L_A, L_B) float64 bootstrap interval over samples
            (``flashcka.bootstrap_interval``), or None; ``settings["bootstrap"]`` says how.
        settings: kernel, unbiased, sigma, threshold, tokens (a mode or "callable"),
            backend, dtype, model_a, model_b (class names), same_model.
        num_samples, num_batches: how much data went in.

    Every argument is checked: names must be sequences of names (a ``str`` is refused,
    not split into characters), the matrix must already have the shape
    ``(len(names_a), len(names_b))`` (never reshaped), and a bad field raises a
    ValueError/TypeError naming it.
    """

    _EXTRA = ("pvalue", "null_mean", "null_std", "ci_low", "ci_high")  # saved when present

    def __init__(self, matrix, names_a, names_b, settings=None, *, num_samples: int = 0,
                 num_batches: int = 0, stderr=None, pvalue=None, null_mean=None,
                 null_std=None, ci_low=None, ci_high=None):
        self.names_a = _names(names_a, "names_a")
        self.names_b = _names(names_b, "names_b")
        self.matrix = _matrix(matrix, "matrix", len(self.names_a), len(self.names_b))
        self.stderr = None if stderr is None else _matrix(stderr, "stderr", len(self.names_a),
                                                          len(self.names_b))
        if settings is not None and not isinstance(settings, Mapping):
            raise TypeError(f"settings must be a dict, got {type(settings).__name__}")
        self.settings = dict(settings or {})
        self.num_samples = _count(num_samples, "num_samples")
        self.num_batches = _count(num_batches, "num_batches")
        given = dict(pvalue=pvalue, null_mean=null_mean, null_std=null_std, ci_low=ci_low,
                     ci_high=ci_high)
        for k, v in given.items():
            setattr(self, k, None if v is None else _matrix(v, k, len(self.names_a),
                                                            len(self.names_b)))
        for group in (("pvalue", "null_mean", "null_std"), ("ci_low", "ci_high")):
            have = [k for k in group if given[k] is not None]
            if have and len(have) != len(group):
                raise ValueError(f"{', '.join(have)} given without "
                                 f"{', '.join(k for k in group if k not in have)}")

    @property
    def calibrated(self):
        """``matrix − null_mean`` (L_A, L_B), the score with its chance level removed
        (Gröger et al. 2026's baseline correction; ``permutation_test``), or None."""
        return None if self.null_mean is None else self.matrix - self.null_mean

    @property
    def zscore(self):
        """``(matrix − null_mean) / null_std`` (L_A, L_B), or None."""
        return None if self.null_mean is None else self.calibrated / self.null_std

    def calibrate(self, xs, ys=None, *, num_permutations: int = 1000, bootstrap: int = 0,
                  seed: int = 0, level: float = 0.95, method: str = "bca",
                  batch_size: int | None = None, dtype=None, backend: str = "auto",
                  progress: bool | None = None) -> "CKAResult":
        """This result with a permutation test of every pair (and, with ``bootstrap=R``,
        R-resample bootstrap intervals) -> a new ``CKAResult``.

        A result holds numbers, not Grams, so the data goes in again: ``xs``/``ys`` the
        representations the matrix was computed from (one tensor (n, ...) a layer, in
        ``names_a``/``names_b`` order, or dicts keyed by those names; ``ys=None`` when one
        model was compared with itself), run with this result's kernel, estimator, σ and
        threshold (``settings``). ``batch_size``: the minibatches the matrix was summed
        over (None: one batch). The recomputed CKA must equal ``matrix`` (within 1e-4):
        other data raises a ValueError. Results of ``compare`` (models and a loader, whose
        batches are gone) get theirs from ``compare(..., permutations=N)``. Bootstrap
        intervals are for full-batch results only (``batch_size=None``)."""
        from .core.bootstrap import bootstrap_interval
        from .core.calibrate import permutation_test
        st = {k: self.settings[k] for k in ("kernel", "unbiased", "sigma", "threshold")
              if k in self.settings}
        xs, ys = self._inputs(xs, "xs", self.names_a), (
            None if ys is None else self._inputs(ys, "ys", self.names_b))
        if ys is None and self.names_a != self.names_b:
            raise ValueError("ys=None (one model with itself) but names_a and names_b "
                             "differ: pass ys")
        perm = permutation_test(xs, ys, num_permutations=num_permutations, seed=seed,
                                batch_size=batch_size, dtype=dtype, backend=backend,
                                progress=progress, **st)
        self._check_same(perm.observed, "calibrate")
        settings = {**self.settings, "permutations": {
            "num_permutations": num_permutations, "seed": seed, "batch_size": batch_size,
            "pvalue": "(1 + #{null >= observed}) / (1 + P), one-sided"}}
        extra = dict(pvalue=perm.pvalue, null_mean=perm.null_mean, null_std=perm.null_std)
        if bootstrap:
            if batch_size is not None:
                raise ValueError("bootstrap intervals are for full-batch results: pass "
                                 "batch_size=None with bootstrap=")
            bs = bootstrap_interval(xs, ys, num_resamples=bootstrap, seed=seed, level=level,
                                    method=method, dtype=dtype, backend=backend,
                                    progress=progress, **st)
            settings["bootstrap"] = {"num_resamples": bootstrap, "seed": seed,
                                     "level": level, "method": method}
            extra.update(ci_low=bs.low, ci_high=bs.high)
        return CKAResult(self.matrix, self.names_a, self.names_b, settings,
                         num_samples=self.num_samples, num_batches=self.num_batches,
                         stderr=self.stderr, **extra)

    @staticmethod
    def _inputs(xs, arg, names):
        """xs as a list in ``names`` order (a dict is matched by key)."""
        if isinstance(xs, Mapping):
            missing = [k for k in names if k not in xs]
            unknown = [k for k in xs if k not in set(names)]
            if missing or unknown:
                raise ValueError(f"{arg} keys do not match this result's layers: missing "
                                 f"{missing}, unknown {unknown}")
            return {k: xs[k] for k in names}
        if isinstance(xs, (list, tuple)) and len(xs) != len(names):
            raise ValueError(f"{arg} has {len(xs)} representations for this result's "
                             f"{len(names)} layers")
        return xs

    def _check_same(self, observed, what: str) -> None:
        obs = observed.detach().cpu().to(torch.float64)
        both = torch.isfinite(obs) & torch.isfinite(self.matrix)
        if tuple(obs.shape) != tuple(self.matrix.shape) or not torch.equal(
                torch.isnan(obs), torch.isnan(self.matrix)) or bool(
                ((obs - self.matrix).abs() > 1e-4)[both].any()):
            diff = float((obs - self.matrix)[both].abs().max()) if bool(both.any()) else 0.0
            raise ValueError(f"{what}: the inputs give a different CKA matrix than this "
                             f"result's (largest difference {diff:.3g}); pass the data (and "
                             f"batch_size) the result was computed from")

    def __repr__(self) -> str:
        a, b = self.settings.get("model_a", "model_a"), self.settings.get("model_b", "model_b")
        return (f"CKAResult({a} {len(self.names_a)} layers x {b} {len(self.names_b)} layers, "
                f"kernel={self.settings.get('kernel')!r}, unbiased={self.settings.get('unbiased')}, "
                f"{self.num_samples} samples in {self.num_batches} batches"
                + (", with jackknife stderr" if self.stderr is not None else "")
                + (f", permutation p-values ({_count_of(self.settings, 'permutations')})"
                   if self.pvalue is not None else "")
                + (", bootstrap intervals" if self.ci_low is not None else "") + ")")

    def numpy(self) -> np.ndarray:
        return self.matrix.numpy()

    def __eq__(self, other) -> bool:
        if not isinstance(other, CKAResult):
            return NotImplemented
        return (self.names_a == other.names_a and self.names_b == other.names_b
                and self.settings == other.settings and self.num_samples == other.num_samples
                and self.num_batches == other.num_batches
                and _same(self.matrix, other.matrix) and _same(self.stderr, other.stderr)
                and all(_same(getattr(self, k), getattr(other, k)) for k in self._EXTRA))

    # ------------------------------------------------------------------ save / load
    def to_dict(self) -> dict:
        """JSON-ready: floats keep repr precision (exact round trip); NaN -> null,
        ±Inf -> "inf"/"-inf"."""
        extra = [k for k in self._EXTRA if getattr(self, k) is not None]
        d = {"format": _FORMAT, "version": 2 if extra else 1, "names_a": self.names_a,
             "names_b": self.names_b, "settings": self.settings,
             "num_samples": self.num_samples, "num_batches": self.num_batches,
             "matrix": _encode(self.matrix)}
        if self.stderr is not None:
            d["stderr"] = _encode(self.stderr)
        for k in extra:  # (version 2: a reader of version 1 would drop them silently)
            d[k] = _encode(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, d) -> "CKAResult":
        """Inverse of ``to_dict``; a malformed dict raises a ValueError/TypeError naming the
        field (never a KeyError or AttributeError)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a saved CKAResult is a dict (JSON object), got {type(d).__name__}")
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a saved CKAResult (format {d.get('format')!r}, expected "
                             f"{_FORMAT!r})")
        if d.get("version", 1) not in (1, 2):
            raise ValueError(f"CKAResult version {d.get('version')!r} is not supported (1, 2)")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"saved CKAResult is missing field(s) {missing}")
        names_a, names_b = _names(d["names_a"], "names_a"), _names(d["names_b"], "names_b")
        stderr = d.get("stderr")
        return cls(_decode(d["matrix"], "matrix", len(names_a), len(names_b)), names_a,
                   names_b, d.get("settings", {}), num_samples=d.get("num_samples", 0),
                   num_batches=d.get("num_batches", 0),
                   stderr=None if stderr is None else _decode(stderr, "stderr", len(names_a),
                                                              len(names_b)),
                   **{k: _decode(d[k], k, len(names_a), len(names_b))
                      for k in cls._EXTRA if d.get(k) is not None})

    def save(self, path) -> Path:
        """Write to ``path``: ``.json`` (text, exact) or ``.npz`` (numpy arrays plus the
        settings as a JSON string). Returns the path."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        elif path.suffix == ".npz":
            extra = {k: getattr(self, k).numpy() for k in ("stderr",) + self._EXTRA
                     if getattr(self, k) is not None}
            with open(path, "wb") as f:
                np.savez(f, format=np.array(_FORMAT), matrix=self.matrix.numpy(),
                         names_a=np.array(self.names_a, dtype=str).reshape(-1),
                         names_b=np.array(self.names_b, dtype=str).reshape(-1),
                         settings=np.array(json.dumps(self.settings)),
                         num_samples=np.array(self.num_samples),
                         num_batches=np.array(self.num_batches), **extra)
        else:
            raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")
        return path

    @classmethod
    def load(cls, path) -> "CKAResult":
        """Read a result written by ``save`` (.json or .npz); a file that is not one raises
        a ValueError naming the file and the field."""
        path = Path(path)
        if path.suffix == ".json":
            try:
                d = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
            try:
                return cls.from_dict(d)
            except (ValueError, TypeError) as e:
                raise type(e)(f"{path}: {e}") from None
        if path.suffix == ".npz":
            return cls._load_npz(path)
        raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")

    @classmethod
    def _load_npz(cls, path: Path) -> "CKAResult":
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - zip/format errors of all kinds
            raise ValueError(f"{path} is not a readable .npz file: {e}") from None
        with z:
            if "format" not in z or str(z["format"]) != _FORMAT:
                raise ValueError(f"{path} is not a saved CKAResult (no format={_FORMAT!r})")
            missing = [k for k in _REQUIRED + ("settings",) if k not in z]
            if missing:
                raise ValueError(f"{path}: saved CKAResult is missing field(s) {missing}")
            try:
                names_a = [str(s) for s in z["names_a"].reshape(-1)]
                names_b = [str(s) for s in z["names_b"].reshape(-1)]
                try:
                    settings = json.loads(str(z["settings"]))
                except json.JSONDecodeError as e:
                    raise ValueError(f"settings is not JSON: {e}") from None
                count = lambda k: int(z[k]) if k in z and z[k].shape == () else \
                    _bad_count(k, z[k] if k in z else None)  # noqa: E731
                return cls(z["matrix"], names_a, names_b, settings,
                           num_samples=count("num_samples"), num_batches=count("num_batches"),
                           stderr=z["stderr"] if "stderr" in z else None,
                           **{k: z[k] for k in cls._EXTRA if k in z})
            except (ValueError, TypeError) as e:
                raise type(e)(f"{path}: {e}") from None

    # ------------------------------------------------------------------ plot
    def plot(self, path, title: str | None = None, *, annotate: bool | None = None,
             stderr: bool = False, blocks: bool | None = None, cmap: str = "magma",
             dpi: int = 120, significance: float | bool | None = None,
             calibrated: bool = False) -> Path:
        """Write a heatmap: rows = model_a layers (bottom to top), columns = model_b layers,
        with a colorbar. The format follows the extension: ``.png``, ``.svg`` or ``.pdf``.
        ``title`` defaults to ``self.title()`` (estimator, models, data set, samples,
        weights, tokens); margins are cut to the drawing (``bbox_inches="tight"``).

        Readable at any size: the figure grows with the layer counts up to 16 inches a
        side; past the room for one label per layer, tick labels are thinned (the first
        layer of each block is preferred, and the label step is said in the axis label).
        ``blocks`` draws thin lines between blocks, a block being the layers that share the
        name up to their first numeric part (``blocks.3``, ``layer2.1``,
        ``encoder.layer.5``); default: on each side that has 2 or more blocks of several
        layers.
        ``annotate`` prints the values in the cells (default: both sides ≤ 12 layers).
        ``stderr=True`` adds a second panel with the jackknife standard errors (and ``±``
        in annotated cells); it needs a result that has them.
        ``significance``: the false discovery rate at which pairs are tested (default
        0.05 when the result has permutation p-values; False: no marks): pairs not
        significant under Benjamini–Hochberg over all L_A·L_B pairs are hatched, and the
        legend says so. ``calibrated=True`` adds a panel with ``matrix − null_mean``
        (diverging colours around 0); both need ``calibrate`` or ``compare(...,
        permutations=N)``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        if path.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ValueError(f"path must end in .png, .svg or .pdf, got {str(path)!r}")
        la, lb = len(self.names_a), len(self.names_b)
        if la == 0 or lb == 0:
            raise ValueError(f"nothing to plot: this result has {la} layer(s) in names_a and "
                             f"{lb} in names_b")
        if stderr and self.stderr is None:
            raise ValueError("stderr=True but this result has no stderr (compare(..., "
                             "jackknife=True) computes it)")
        if (calibrated or significance not in (None, False)) and self.pvalue is None:
            raise ValueError("calibrated=True or significance= needs permutation p-values: "
                             "result.calibrate(xs, ys) or compare(..., permutations=N)")
        if significance is None or significance is True:
            significance = 0.05 if self.pvalue is not None else False
        keep = None
        if significance is not False:
            from .core.calibrate import benjamini_hochberg
            keep = benjamini_hochberg(self.pvalue, significance).numpy()
        big = max(la, lb)
        font = 8 if big <= 40 else 6
        shown_a, shown_b = _shown_labels(self.names_a), _shown_labels(self.names_b)
        longest = max(len(n) for n in shown_a + shown_b)
        label_in = min(longest, 40) * font * 0.6 / 72 + 0.6      # inches taken by tick labels
        cell = 0.22 if big <= 40 else 0.16
        pw = min(max(lb * cell, 3.0), _MAX_PANEL_IN)
        ph = min(max(la * cell, 3.0), _MAX_PANEL_IN)
        panels = 1 + bool(stderr) + bool(calibrated)
        w = panels * (pw + label_in + 1.6)
        h = ph + label_in + 0.8
        fig = Figure(figsize=(w, h))
        FigureCanvasAgg(fig)
        if title is None:
            title = self.title()
        if annotate is None:
            annotate = la <= 12 and lb <= 12
        lines = (blocks if blocks is not None else _wants_blocks(self.names_a),
                 blocks if blocks is not None else _wants_blocks(self.names_b))
        data = self.matrix.numpy()
        finite = data[np.isfinite(data)]
        vmin = min(0.0, float(finite.min())) if finite.size else 0.0
        vmax = max(1.0, float(finite.max())) if finite.size else 1.0
        se = self.stderr.numpy() if stderr else None
        frames = [(data, title, "CKA", cmap, vmin, vmax)]
        if stderr:
            fse = se[np.isfinite(se)]
            frames.append((se, "jackknife standard error", "stderr", "viridis", 0.0,
                           float(fse.max()) if fse.size and fse.max() > 0 else 1.0))
        if calibrated:
            cal = self.calibrated.numpy()
            fc = np.abs(cal[np.isfinite(cal)])
            top = float(fc.max()) if fc.size and fc.max() > 0 else 1.0
            frames.append((cal, "calibrated: CKA − permutation null mean", "CKA − null mean",
                           "RdBu_r", -top, top))
        for p, (values, ttl, clabel, cm, lo, hi) in enumerate(frames):
            x0 = p * (pw + label_in + 1.6)
            ax = fig.add_axes([(x0 + label_in) / w, label_in / h, pw / w, ph / h])
            im = ax.imshow(values, origin="lower", aspect="auto", cmap=cm, vmin=lo, vmax=hi,
                           interpolation="nearest")
            self._ticks(ax, font, pw, ph, lines)
            ax.set_title(ttl, fontsize=9, parse_math=False)   # names are text, not TeX
            if annotate:
                for i in range(la):
                    for j in range(lb):
                        v = values[i, j]
                        txt = "nan" if math.isnan(v) else _cell(v)
                        if p == 0 and se is not None and not math.isnan(se[i, j]):
                            txt += f"\n±{se[i, j]:.2f}"
                        dark = (abs(v) > 0.6 * hi if clabel == "CKA − null mean"  # diverging
                                else v <= lo + 0.6 * (hi - lo))
                        ax.text(j, i, txt, ha="center", va="center", fontsize=6,
                                color="white" if np.isfinite(v) and dark else "black")
            if keep is not None and clabel != "stderr":
                self._hatch(ax, keep, significance, label_in / ph if p == 0 else None)
            cax = fig.add_axes([(x0 + label_in + pw + 0.3) / w, label_in / h, 0.18 / w, ph / h])
            fig.colorbar(im, cax=cax, label=clabel)
        fig.savefig(path, dpi=dpi, format=path.suffix.lower()[1:], bbox_inches="tight",
                    pad_inches=0.05)
        return path

    def _hatch(self, ax, keep, level, below: float | None) -> None:
        """Hatch the pairs not significant (``keep`` False, p-value not NaN) and, with
        ``below`` (the tick labels' height in axes units), say so in a legend under them."""
        from matplotlib.patches import Patch, Rectangle
        pv = self.pvalue.numpy()
        for i, j in zip(*np.nonzero(~keep & np.isfinite(pv))):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                   edgecolor="0.6", lw=0))
        if below is None:
            return
        perm = self.settings.get("permutations") or {}
        count = f", {perm['num_permutations']} permutations" if isinstance(
            perm, dict) and "num_permutations" in perm else ""
        tests = int(np.isfinite(pv).sum())
        ax.legend(handles=[Patch(facecolor="none", edgecolor="0.4", hatch="///",
                                 label=f"not significant: Benjamini–Hochberg FDR {level:g} "
                                       f"over all {tests} pairs (permutation p-values"
                                       f"{count})")],
                  loc="upper center", bbox_to_anchor=(0.5, -below - 0.02), fontsize=7,
                  frameon=False)

    def title(self) -> str:
        """The plots' title: estimator and models, then data set and sample count, the
        weights (trained or random) and the tokens setting, each where the settings say it
        (``settings["data"]``, ``settings["weights"]``: set by the CLI and the demo)."""
        return plot_title(self.settings, self.num_samples, self.num_batches)

    def _ticks(self, ax, font, pw, ph, lines):
        s = self.settings
        for axis, names, inches, side in ((ax.xaxis, self.names_b, pw, "b"),
                                          (ax.yaxis, self.names_a, ph, "a")):
            room = max(1, int(inches * 72 / (font * 1.3)))
            idx = _tick_positions(names, room)
            labels = _shown_labels(names)
            axis.set_ticks(idx)
            axis.set_ticklabels([labels[i] for i in idx], fontsize=font,
                                rotation=90 if side == "b" else 0, parse_math=False)
            every = "" if len(idx) == len(names) else f" ({len(idx)} of {len(names)} labelled)"
            axis.set_label_text(f"{s.get('model_' + side, 'model_' + side)} layers{every}",
                                parse_math=False)
            if lines[0 if side == "a" else 1]:
                for edge in _block_edges(names):
                    (ax.axvline if side == "b" else ax.axhline)(edge - 0.5, color="white",
                                                                lw=0.5, alpha=0.8)


def plot_title(settings: dict, num_samples: int = 0, num_batches: int = 0) -> str:
    """One title style for every heatmap: ``debiased linear CKA (minibatch): A vs B`` and
    a second line ``digits, 500 samples in 2 batches · trained weights · tokens: cls``."""
    s = settings
    kind = "debiased" if s.get("unbiased", True) else "biased"
    est = f"{kind} {s.get('kernel', 'linear')} CKA" + (" (minibatch)" if num_batches > 1 else "")
    a, b = s.get("model_a", "A"), s.get("model_b", "B")
    head = f"{est}: {a}" + (" with itself" if s.get("same_model") or a == b and
                            s.get("same_model") is None else f" vs {b}")
    data = s.get("data")
    samples = (f"{num_samples} samples" + (f" in {num_batches} batches" if num_batches > 1
                                           else "")) if num_samples else ""
    tokens = s.get("tokens")
    if isinstance(tokens, (list, tuple)):
        tokens = " / ".join(map(str, tokens))
    parts = [", ".join(p for p in (data, samples) if p),
             f"{s['weights']} weights" if s.get("weights") else "",
             f"tokens: {tokens}" if tokens else ""]
    return head + ("\n" + " · ".join(p for p in parts if p) if any(parts) else "")


def _count_of(settings: dict, key: str) -> str:
    """``"1000 permutations"`` from ``settings["permutations"]`` (``"?"`` when absent)."""
    info = settings.get(key)
    count = info.get("num_permutations") if isinstance(info, dict) else None
    return f"{count if count is not None else '?'} permutations"


def _cell(v: float) -> str:
    """A cell value to two decimals, never ``-0.00``."""
    txt = f"{v:.2f}"
    return "0.00" if txt == "-0.00" else txt


def load_result(path) -> CKAResult:
    """``CKAResult.load(path)``."""
    return CKAResult.load(path)


# ---------------------------------------------------------------------- field checks

def _names(names, field: str) -> list[str]:
    if isinstance(names, (str, bytes)):
        raise TypeError(f"{field} must be a list of layer names, got a single string "
                        f"{names!r} (it would be split into characters)")
    if isinstance(names, np.ndarray):
        if names.ndim != 1:
            raise ValueError(f"{field} must be 1-D, got an array of shape {names.shape}")
        names = names.tolist()
    if not isinstance(names, Sequence):
        raise TypeError(f"{field} must be a list of layer names, got {type(names).__name__}")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, bool) or not isinstance(n, (str, int, np.str_, np.integer)):
            raise TypeError(f"{field}[{i}] must be a layer name (str), got "
                            f"{type(n).__name__} {n!r}")
        out.append(str(n))
    return out


def _matrix(m, field: str, la: int, lb: int) -> torch.Tensor:
    if isinstance(m, torch.Tensor):
        t = m.detach()
    else:
        try:
            arr = np.asarray(m)
        except Exception as e:  # noqa: BLE001 - ragged lists and the like
            raise ValueError(f"{field} is not a rectangular array of numbers: {e}") from None
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise TypeError(f"{field} must hold real numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{field} must hold real numbers, got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{field} must be 2-D (L_A, L_B), got shape {tuple(t.shape)}")
    if tuple(t.shape) != (la, lb):
        hint = " (transposed?)" if tuple(t.shape) == (lb, la) else ""
        raise ValueError(f"{field} has shape {tuple(t.shape)} but there are {la} names_a and "
                         f"{lb} names_b: it must be ({la}, {lb}){hint}")
    return t.to(device="cpu", dtype=torch.float64).clone()


def _count(v, field: str) -> int:
    if isinstance(v, (np.integer,)):
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{field} must be a non-negative int, got {v!r}")
    return v


def _bad_count(field, v):
    raise ValueError(f"{field} must be a non-negative int, got {v!r}")


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (a.shape == b.shape and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


def _encode(m: torch.Tensor) -> list:
    return [[_enc(v) for v in row] for row in m.tolist()]


def _decode(rows, field: str, la: int, lb: int) -> torch.Tensor:
    """The JSON rows of a matrix, checked row by row: exactly la rows of lb entries."""
    if not isinstance(rows, list):
        raise TypeError(f"{field} must be a list of rows, got {type(rows).__name__}")
    if len(rows) != la:
        raise ValueError(f"{field} has {len(rows)} rows but there are {la} names_a")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise TypeError(f"{field}[{i}] must be a list of numbers, got {type(row).__name__}")
        if len(row) != lb:
            raise ValueError(f"{field}[{i}] has {len(row)} entries but there are {lb} names_b")
        out.append([_dec(v, f"{field}[{i}][{j}]") for j, v in enumerate(row)])
    return torch.tensor(out, dtype=torch.float64).reshape(la, lb)


def _enc(v: float):
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _dec(v, where: str) -> float:
    if v is None:
        return float("nan")
    if v in ("inf", "-inf"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{where} must be a number, null, \"inf\" or \"-inf\", got {v!r}")
    return float(v)


# ---------------------------------------------------------------------- plot helpers

def _block_key(name: str) -> str:
    """``blocks.3.attn`` -> ``blocks.3``; ``layer2.1.conv1`` -> ``layer2.1``; a name
    without a numeric part is its own block."""
    parts = name.split(" = ")[0].split(":")[0].split("#")[0].split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i + 1])
    return name


def _block_edges(names) -> list[int]:
    keys = [_block_key(n) for n in names]
    return [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]


def _wants_blocks(names) -> bool:
    """Lines between blocks help when there are at least 2 blocks of several layers."""
    keys = [_block_key(n) for n in names]
    runs = len(_block_edges(names)) + 1
    return len(names) >= 8 and runs >= 2 and runs <= len(keys) / 1.5


def _tick_positions(names, room: int) -> list[int]:
    """All positions when they fit, else an even step (block starts preferred)."""
    L = len(names)
    if L <= room:
        return list(range(L))
    starts = [0] + _block_edges(names)
    if 2 <= len(starts) <= room and len(starts) < L:
        step = -(-len(starts) // room)
        return starts[::step]
    step = -(-L // room)
    return list(range(0, L, step))


def _shown_labels(names) -> list[str]:
    """Labels cut to 40 characters (the middle elided) so one long name cannot take the
    whole figure."""
    return [n if len(n) <= 40 else n[:18] + "…" + n[-21:] for n in names]
