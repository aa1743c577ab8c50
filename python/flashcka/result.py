"""``CKAResult``: a layer-by-layer CKA matrix with its names and settings; plots and saves."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

_FORMAT = "flashcka.CKAResult"


class CKAResult:
    """CKA between the layers of two models.

    Attributes:
        matrix: (L_A, L_B) float64 tensor (CPU); ``matrix[i, j]`` is the CKA of layer
            ``names_a[i]`` with ``names_b[j]``. NaN where CKA is undefined.
        names_a, names_b: layer names (``name#k`` for the k-th call of a module).
        settings: kernel, unbiased, sigma, threshold, tokens (a mode or "callable"),
            backend, dtype, model_a, model_b (class names), same_model.
        num_samples, num_batches: how much data went in.
    """

    def __init__(self, matrix, names_a, names_b, settings=None, *, num_samples: int = 0,
                 num_batches: int = 0):
        m = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
        self.matrix = m.detach().to(device="cpu", dtype=torch.float64)
        if self.matrix.dim() != 2:
            raise ValueError(f"matrix must be 2-D (L_A, L_B), got shape {tuple(self.matrix.shape)}")
        self.names_a, self.names_b = [str(n) for n in names_a], [str(n) for n in names_b]
        if self.matrix.shape != (len(self.names_a), len(self.names_b)):
            raise ValueError(f"matrix has shape {tuple(self.matrix.shape)} but there are "
                             f"{len(self.names_a)} names_a and {len(self.names_b)} names_b")
        self.settings = dict(settings or {})
        self.num_samples, self.num_batches = int(num_samples), int(num_batches)

    def __repr__(self) -> str:
        a, b = self.settings.get("model_a", "model_a"), self.settings.get("model_b", "model_b")
        return (f"CKAResult({a} {len(self.names_a)} layers x {b} {len(self.names_b)} layers, "
                f"kernel={self.settings.get('kernel')!r}, unbiased={self.settings.get('unbiased')}, "
                f"{self.num_samples} samples in {self.num_batches} batches)")

    def numpy(self) -> np.ndarray:
        return self.matrix.numpy()

    def __eq__(self, other) -> bool:
        if not isinstance(other, CKAResult):
            return NotImplemented
        return (self.names_a == other.names_a and self.names_b == other.names_b
                and self.settings == other.settings and self.num_samples == other.num_samples
                and self.num_batches == other.num_batches
                and torch.equal(self.matrix.isnan(), other.matrix.isnan())
                and torch.equal(self.matrix.nan_to_num(0.0), other.matrix.nan_to_num(0.0)))

    # ------------------------------------------------------------------ save / load
    def to_dict(self) -> dict:
        """JSON-ready: floats keep repr precision (exact round trip); NaN -> null."""
        return {"format": _FORMAT, "version": 1, "names_a": self.names_a,
                "names_b": self.names_b, "settings": self.settings,
                "num_samples": self.num_samples, "num_batches": self.num_batches,
                "matrix": [[_enc(v) for v in row] for row in self.matrix.tolist()]}

    @classmethod
    def from_dict(cls, d: dict) -> "CKAResult":
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a saved CKAResult (format {d.get('format')!r}, expected "
                             f"{_FORMAT!r})")
        m = [[_dec(v) for v in row] for row in d["matrix"]]
        matrix = torch.tensor(m, dtype=torch.float64).reshape(len(d["names_a"]),
                                                              len(d["names_b"]))
        return cls(matrix, d["names_a"], d["names_b"], d["settings"],
                   num_samples=d["num_samples"], num_batches=d["num_batches"])

    def save(self, path) -> Path:
        """Write to ``path``: ``.json`` (text, exact) or ``.npz`` (numpy arrays plus the
        settings as a JSON string). Returns the path."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        elif path.suffix == ".npz":
            with open(path, "wb") as f:
                np.savez(f, format=np.array(_FORMAT), matrix=self.matrix.numpy(),
                         names_a=np.array(self.names_a, dtype=str),
                         names_b=np.array(self.names_b, dtype=str),
                         settings=np.array(json.dumps(self.settings)),
                         num_samples=np.array(self.num_samples),
                         num_batches=np.array(self.num_batches))
        else:
            raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")
        return path

    @classmethod
    def load(cls, path) -> "CKAResult":
        """Read a result written by ``save`` (.json or .npz)."""
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z or str(z["format"]) != _FORMAT:
                    raise ValueError(f"{path} is not a saved CKAResult")
                names_a = [str(s) for s in z["names_a"].reshape(-1)]
                names_b = [str(s) for s in z["names_b"].reshape(-1)]
                return cls(torch.from_numpy(z["matrix"].copy()).reshape(len(names_a),
                                                                         len(names_b)),
                           names_a, names_b, json.loads(str(z["settings"])),
                           num_samples=int(z["num_samples"]), num_batches=int(z["num_batches"]))
        raise ValueError(f"path must end in .json or .npz, got {str(path)!r}")

    # ------------------------------------------------------------------ plot
    def plot(self, path, title: str | None = None, *, annotate: bool | None = None,
             cmap: str = "magma", dpi: int = 120) -> Path:
        """Write a heatmap PNG: rows = model_a layers (bottom to top), columns = model_b
        layers, tick labels = layer names, with a colorbar. The figure grows with the layer
        counts (readable up to ~50-100 layers per side). ``annotate`` prints the values in
        the cells (default: when both sides have at most 12 layers)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        la, lb = len(self.names_a), len(self.names_b)
        longest = max(len(n) for n in self.names_a + self.names_b)
        font = 8 if max(la, lb) <= 40 else 6
        label_in = longest * font * 0.6 / 72 + 0.6       # inches taken by tick labels
        cell = 0.22 if max(la, lb) <= 40 else 0.16
        w = min(max(lb * cell, 3.0), 40.0) + label_in + 1.6
        h = min(max(la * cell, 3.0), 40.0) + label_in + 0.8
        fig = Figure(figsize=(w, h))
        FigureCanvasAgg(fig)
        ax = fig.add_axes([label_in / w, label_in / h, 1 - (label_in + 1.4) / w,
                           1 - (label_in + 0.6) / h])
        data = self.matrix.numpy()
        finite = data[np.isfinite(data)]
        vmin = min(0.0, float(finite.min())) if finite.size else 0.0
        vmax = max(1.0, float(finite.max())) if finite.size else 1.0
        im = ax.imshow(data, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_xticks(range(lb))
        ax.set_xticklabels(self.names_b, rotation=90, fontsize=font)
        ax.set_yticks(range(la))
        ax.set_yticklabels(self.names_a, fontsize=font)
        s = self.settings
        ax.set_xlabel(f"{s.get('model_b', 'model_b')} layers")
        ax.set_ylabel(f"{s.get('model_a', 'model_a')} layers")
        if title is None:
            kind = "debiased" if s.get("unbiased", True) else "biased"
            title = (f"{kind} {s.get('kernel', 'linear')} CKA: {s.get('model_a', 'A')} vs "
                     f"{s.get('model_b', 'B')}"
                     + (f" ({self.num_samples} samples)" if self.num_samples else ""))
        ax.set_title(title, fontsize=9)
        if annotate is None:
            annotate = la <= 12 and lb <= 12
        if annotate:
            for i in range(la):
                for j in range(lb):
                    v = data[i, j]
                    ax.text(j, i, "nan" if math.isnan(v) else f"{v:.2f}", ha="center",
                            va="center", fontsize=6,
                            color="black" if np.isfinite(v) and v > 0.6 * vmax else "white")
        cax = fig.add_axes([1 - 1.1 / w, label_in / h, 0.18 / w, 1 - (label_in + 0.6) / h])
        fig.colorbar(im, cax=cax, label="CKA")
        path = Path(path)
        fig.savefig(path, dpi=dpi)
        return path


def load_result(path) -> CKAResult:
    """``CKAResult.load(path)``."""
    return CKAResult.load(path)


def _enc(v: float):
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _dec(v) -> float:
    if v is None:
        return float("nan")
    return float(v)
