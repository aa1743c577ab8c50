"""pytorch-cka 1.1.3's ``cka.cka`` module on flashcka: ``compute_cka``, ``CKA`` and
``cka_from_features`` (``from flashcka.compat.pytorch_cka import compute_cka, CKA``; the
original's import name is ``cka``).

Same arguments and defaults. ``compute_cka(model1, model2, *dataloaders, ...)`` returns one
(L1, L2) matrix per loader (a single list of loaders is accepted too, as in its README);
each batch runs through both models (once when ``model1 is model2``); ``layers`` /
``model2_layers`` hold module names or int indices into ``named_modules()`` (root
excluded; negative from the end); ``model2_layers=None`` means ``layers``; ``device=None``
picks cuda, then mps, then cpu. The measure is the original's: minibatch CKA (Nguyen, Raghu
& Kornblith 2021) with the unbiased HSIC of linear Grams, summed over batches.

``CKA`` is the context manager: hooks are registered on ``__enter__`` and removed on
``__exit__``, which also restores every module's train/eval flag. Its public
``compare(dataloader, progress=True, verbose=False)`` returns the matrix (inside a ``with``
block, or on its own: it then registers and removes the hooks around the call);
``_compare`` is kept as an alias of the original's private name. ``model1_layer_to_module``
/ ``model2_layer_to_module`` are the original's public name -> module dicts.

Differences from the original:

* Results are **not clamped** to [0, 1]: debiased CKA can be slightly negative (or above 1
  with noise) and the original's ``clamp`` hides that. A layer whose self-HSIC is not
  positive (zero variance) gives NaN with a ``FlashCKAWarning``; the original substitutes
  1e-6 for a zero denominator and clamps, reporting 0.
* Numbers: Grams of centered features, float64 accumulators; the original sums raw float32
  Grams (its cancellation error measured at 0.05-0.07 on random-init ResNet-18 vs
  34 and 1.7e-2 in issue 21's run, README's drop-in table). Matrices are float64 on the
  device of the run (the original: float32).
* Each hooked output becomes its Gram at once and is released (the original keeps every
  hooked activation of the batch); runs under ``torch.no_grad()``. The original stores a
  ``detach()`` view, which a later in-place op (``ReLU(inplace=True)``, ``+=``) overwrites:
  its numbers for such layers (every BatchNorm of a torchvision ResNet) are those of the
  overwritten tensor; here each output is used as it was when its module returned.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Sequence

import torch
import torch.nn as nn

from ...core.engine import Settings
from ...measures.cka import cka_matrix
from ...core.minibatch import MinibatchCKA
from .._hooked import LastCallRecorder, forward_pass, module_states, restore_states

__all__ = ["compute_cka", "cka_from_features", "CKA"]

_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "input_ids", "pixel_values")


class CKA:
    """Minibatch CKA between ``layers`` of model1 and ``model2_layers`` of model2."""

    def __init__(self, model1: nn.Module, model2: nn.Module,
                 layers: Sequence[str | int] | None = None,
                 model2_layers: Sequence[str | int] | None = None,
                 device=None) -> None:
        def unwrap(m):
            if isinstance(m, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
                return m.module
            return m

        self.model1, self.model2 = unwrap(model1), unwrap(model2)
        if model2_layers is None:
            model2_layers = layers
        self.model1_layers = _resolve_layers(self.model1, layers, "model1")
        self.model2_layers = _resolve_layers(self.model2, model2_layers, "model2")
        mods1, mods2 = dict(self.model1.named_modules()), dict(self.model2.named_modules())
        #: name -> module, in the resolved order (the original's public attributes)
        self.model1_layer_to_module = {n: mods1[n] for n in self.model1_layers}
        self.model2_layer_to_module = {n: mods2[n] for n in self.model2_layers}
        self._is_same_model = self.model1 is self.model2
        if device:
            self.device = torch.device(device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            self.device = torch.device("mps")
        else:
            self.device = torch.device("cpu")
        self.model1 = self.model1.to(self.device)
        self.model2 = self.model2.to(self.device)
        self._recorders: list[LastCallRecorder] = []
        self._saved_modes = None

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "CKA":
        if self._recorders:
            return self
        s = Settings("linear", True)
        models = [self.model1] if self._is_same_model else [self.model1, self.model2]
        self._saved_modes = module_states(models)
        try:
            if self._is_same_model:
                union = list(dict.fromkeys(self.model1_layers + self.model2_layers))
                self._recorders = [LastCallRecorder(self.model1, union, s, None, "auto",
                                                    "model")]
            else:
                self._recorders = [LastCallRecorder(self.model1, self.model1_layers, s, None,
                                                    "auto", "model1")]
                self._recorders.append(LastCallRecorder(self.model2, self.model2_layers, s,
                                                        None, "auto", "model2"))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        for m in models:
            m.eval()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> bool:
        for r in self._recorders:
            r.remove()
        self._recorders = []
        if self._saved_modes is not None:
            restore_states(self._saved_modes)
            self._saved_modes = None
        return False

    # ------------------------------------------------------------------ comparison
    def compare(self, dataloader, progress: bool = True, verbose: bool = False) -> torch.Tensor:
        """Minibatch CKA over the batches of ``dataloader`` -> (L1, L2) float64, rows in
        ``layers`` order, columns in ``model2_layers`` order. Not clamped."""
        if not self._recorders:
            with self:
                return self.compare(dataloader, progress, verbose)
        same = self._is_same_model
        if same:
            rec = self._recorders[0]
            acc = MinibatchCKA(len(rec.names), names_a=rec.names)
        else:
            acc = MinibatchCKA(len(self.model1_layers), len(self.model2_layers),
                               names_a=self.model1_layers, names_b=self.model2_layers)
        total = len(dataloader) if hasattr(dataloader, "__len__") else None
        from tqdm.auto import tqdm
        iterator = tqdm(dataloader, total=total, desc="Computing CKA") if progress \
            else dataloader
        with torch.no_grad():
            for batch_idx, batch in enumerate(iterator):
                x = _extract_input(batch)
                n = int(x.shape[0])
                if n <= 3:
                    raise ValueError(f"HSIC requires batch size > 3, got {n}. "
                                     "Increase batch size to at least 4.")
                x = x.to(self.device)
                r1 = forward_pass(self.model1, self._recorders[0], x, n)
                r2 = r1 if same else forward_pass(self.model2, self._recorders[1], x, n)
                acc.add_rows(self._recorders[0].be, r1, r2, n, self._recorders[0].ct)
                if verbose:
                    cur = self._select(acc.compute(), same)
                    print(f"Batch {batch_idx + 1}/{total} - Mean CKA: "
                          f"{cur.nanmean().item():.4f}")
        if acc.num_batches == 0:
            raise ValueError("compare: the dataloader gave no batches")
        return self._select(acc.compute(), same)

    _compare = compare

    def _select(self, matrix, same):
        if not same:
            return matrix
        idx = {name: i for i, name in enumerate(self._recorders[0].names)}
        ia = torch.tensor([idx[n] for n in self.model1_layers], device=matrix.device)
        ib = torch.tensor([idx[n] for n in self.model2_layers], device=matrix.device)
        return matrix[ia][:, ib]


def compute_cka(model1: nn.Module, model2: nn.Module, *dataloaders,
                layers: Sequence[str | int] | None = None,
                model2_layers: Sequence[str | int] | None = None,
                device=None, progress: bool = True, verbose: bool = False) -> List[torch.Tensor]:
    """Minibatch CKA between the layers of two models, one (L1, L2) float64 matrix per
    dataloader (not clamped to [0, 1]). ``compute_cka(m1, m2, [loader_a, loader_b])``
    is the same as ``compute_cka(m1, m2, loader_a, loader_b)``."""
    if len(dataloaders) == 1 and isinstance(dataloaders[0], (list, tuple)):
        dataloaders = tuple(dataloaders[0])
    if not dataloaders:
        raise ValueError("compute_cka requires at least one dataloader.")
    cka = CKA(model1=model1, model2=model2, layers=layers, model2_layers=model2_layers,
              device=device)
    with cka:
        return [cka.compare(d, progress=progress, verbose=verbose) for d in dataloaders]


def cka_from_features(features_x: torch.Tensor | Sequence[torch.Tensor],
                      features_y: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Debiased linear CKA of every pair of pre-extracted features -> (L_x, L_y) float64.

    Each side is one (n, d) tensor (one layer), an (L, n, d) tensor (L layers of equal
    width) or a sequence of (n, d_i) tensors. ``CKA_ij = HSIC₁(K_i, L_j) /
    sqrt(HSIC₁(K_i, K_i) · HSIC₁(L_j, L_j))`` with ``K_i = X_i X_iᵀ`` (unbiased HSIC, Song
    et al. 2012), computed by ``flashcka.cka_matrix`` (centred features, float64 pair
    stage). Not clamped to [0, 1]; a zero-variance layer gives NaN with a warning (the
    original reports 0). Sequence entries of more than 2 dims are flattened to (n, -1).
    """
    xs, ys = _layer_list(features_x, "features_x"), _layer_list(features_y, "features_y")
    for layers, arg in ((xs, "features_x"), (ys, "features_y")):
        for i, f in enumerate(layers):
            # the original takes tensors only (flashcka's own functions also read paths)
            if not isinstance(f, torch.Tensor):
                raise TypeError(f"{arg}[{i}] must be a torch.Tensor, got {type(f).__name__}")
            if f.dim() >= 1 and f.shape[0] <= 3:
                raise ValueError(f"cka_from_features requires n > 3 samples (unbiased HSIC "
                                 f"divides by n(n-3)); {arg} layer {i} has n={f.shape[0]}")
    return cka_matrix({f"features_x[{i}]": f for i, f in enumerate(xs)},
                      {f"features_y[{i}]": f for i, f in enumerate(ys)}, unbiased=True)


def _layer_list(feats, arg: str) -> list:
    if isinstance(feats, torch.Tensor):
        if feats.dim() == 2:
            return [feats]
        if feats.dim() == 3:
            return list(feats.unbind(0))
        raise ValueError(f"{arg} must be (n, d), (L, n, d) or a sequence of (n, d) tensors; "
                         f"got a tensor of shape {tuple(feats.shape)}")
    if isinstance(feats, (list, tuple)):
        return list(feats)
    raise TypeError(f"{arg} must be a tensor or a sequence of tensors, got "
                    f"{type(feats).__name__}")


def _resolve_layers(model: nn.Module, layers, model_name: str) -> list[str]:
    names = [name for name, _ in model.named_modules() if name]
    if layers is None:
        if len(names) > 150:
            warnings.warn(f"{model_name} has {len(names)} layers. "
                          "Consider specifying layers explicitly for faster computation.")
        return names
    known = set(names)
    out: list[str] = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in known:
                raise ValueError(f"Layer '{layer}' not found in {model_name}. "
                                 f"Use model.named_modules() to see available layers.")
            name = layer
        elif isinstance(layer, int) and not isinstance(layer, bool):
            idx = layer if layer >= 0 else len(names) + layer
            if idx < 0 or idx >= len(names):
                raise IndexError(f"Layer index {layer} is out of range for {model_name} with "
                                 f"{len(names)} layers (valid range: {-len(names)} to "
                                 f"{len(names) - 1}).")
            name = names[idx]
        else:
            raise TypeError(f"Layer specification must be str or int, got "
                            f"{type(layer).__name__} in {model_name}_layers.")
        if name not in out:
            out.append(name)
    return out


def _extract_input(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)):
        return batch[0]
    if isinstance(batch, dict):
        for key in _INPUT_KEYS:
            if key in batch:
                return batch[key]
        raise ValueError(f"Cannot find input in dict batch. Keys: {list(batch.keys())}")
    raise TypeError(f"Unsupported batch type: {type(batch)}")
