"""torch-cka 0.21's ``CKA`` class on flashcka (``from flashcka.compat.torch_cka import CKA``).

Same constructor, ``compare(dataloader1, dataloader2=None)``, ``export()`` and
``plot_results(save_path=None, title=None)`` as torch-cka (Subramanian, "torch_cka",
github.com/AntixK/PyTorch-Model-Compare). The measure is the original's: minibatch CKA
(Nguyen, Raghu & Kornblith 2021) with the unbiased HSIC of linear Grams, batch i of
``dataloader1`` through model1 paired with batch i of ``dataloader2`` through model2::

    CKA_ij = Σ_b HSIC₁(K_i^b, L_j^b) / sqrt(Σ_b HSIC₁(K_i^b, K_i^b) · Σ_b HSIC₁(L_j^b, L_j^b))

Differences from the original (each where it gives a wrong number or an error):

* Numbers: Grams of centered features, float64 accumulators (the original forms raw
  float32 Grams; its cancellation error was measured at 0.13-0.16 on torchvision
  ResNet-18 vs 34 and 2.3e-2 in issue 21's run: README's drop-in table), each hooked
  output turned into its Gram at once and released, under ``torch.no_grad()``.
* Each output is used as its module returned it. The original stores the output itself,
  which a later in-place op (``ReLU(inplace=True)``, ``out += identity``) overwrites: on a
  torchvision ResNet every BatchNorm layer is off by ~0.1 even in float64.
* Rows and columns follow the exported layer order (``named_modules()`` order). The original
  orders them by which module fires first, but exports the names in ``named_modules()``
  order: where the two differ (e.g. the root module, hooked by default, fires last) its
  labels are wrong.
* ``export()["CKA"]`` is float64 on the CPU (the original: float32); NaN with a
  ``FlashCKAWarning`` for a zero-variance layer (the original asserts).
* A batch with fewer than 4 samples is skipped with a warning (the original divides by
  n − 3 = 0); paired batches of different sizes raise ``ValueError``; a name in
  ``model1_layers``/``model2_layers`` that is not a module raises ``ValueError`` (the
  original ignores it and then fails on NaN).
* Hooks are registered for the duration of ``compare`` and removed after it (the
  original leaves them on the models). As in the original, the constructor moves both
  models to ``device`` and puts them in eval mode.
* A batch may be a tensor (the input itself) or a tuple/list whose first element is the
  input; the original accepts only the latter. Tuple outputs use their first tensor.
* ``model1_features`` / ``model2_features`` (the original fills them during ``compare``
  with every hooked output of the last batch): flashcka keeps Grams, not activations, so
  they are computed on first access by running the last batch through the model once
  more (no_grad; outputs cloned as their modules return them). Assigning to them works.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import torch
import torch.nn as nn

from ...core.engine import Settings
from ..._warning import FlashCKAWarning
from ...core.minibatch import MinibatchCKA
from .._hooked import LastCallRecorder, forward_pass

__all__ = ["CKA"]


class CKA:
    def __init__(self,
                 model1: nn.Module,
                 model2: nn.Module,
                 model1_name: str = None,
                 model2_name: str = None,
                 model1_layers: List[str] = None,
                 model2_layers: List[str] = None,
                 device: str = 'cpu'):
        """Compare the layers ``model1_layers`` of model1 with ``model2_layers`` of model2
        (None: every module, the model itself included, as in torch-cka)."""
        self.model1, self.model2, self.device = model1, model2, device
        self.model1_info = {"Name": model1_name if model1_name is not None
                            else model1.__repr__().split('(')[0]}
        self.model2_info = {"Name": model2_name if model2_name is not None
                            else model2.__repr__().split('(')[0]}
        if self.model1_info['Name'] == self.model2_info['Name']:
            warn_name = self.model2_info['Name']
            warnings.warn(f"Both model have identical names - {warn_name}. It may cause "
                          f"confusion when interpreting the results. Consider giving unique "
                          f"names to the models :)")
        for i, (model, layers) in enumerate(((model1, model1_layers),
                                             (model2, model2_layers)), 1):
            if len(list(model.modules())) > 150 and layers is None:
                warnings.warn(f"Model {i} seems to have a lot of layers. Consider giving a list "
                              f"of layers whose features you are concerned with through the "
                              f"'model{i}_layers' parameter. Your CPU/GPU will thank you :)")
        self.model1_layers, self.model2_layers = model1_layers, model2_layers
        self._features = [None, None]     # user-set model1/2_features, else computed
        self._last_batch = None           # (x1, x2) of the last batch compared
        self.model1_info['Layers'] = _layers(model1, model1_layers, "model1_layers")
        self.model2_info['Layers'] = _layers(model2, model2_layers, "model2_layers")
        self.model1 = self.model1.to(self.device)
        self.model2 = self.model2.to(self.device)
        self.model1.eval()
        self.model2.eval()

    def compare(self, dataloader1, dataloader2=None) -> None:
        """Minibatch CKA of every layer pair over the paired batches of the two loaders
        (``dataloader2=None``: the same loader for both models); stored in
        ``self.hsic_matrix`` ((L1, L2) float64, as in torch-cka's attribute name)."""
        if dataloader2 is None:
            warnings.warn("Dataloader for Model 2 is not given. Using the same dataloader "
                          "for both models.")
            dataloader2 = dataloader1
        self.model1_info['Dataset'] = _dataset_name(dataloader1)
        self.model2_info['Dataset'] = _dataset_name(dataloader2)
        names1, names2 = self.model1_info['Layers'], self.model2_info['Layers']
        s = Settings("linear", True)
        acc = MinibatchCKA(len(names1), len(names2), names_a=names1, names_b=names2)
        rec1 = rec2 = None
        try:
            rec1 = LastCallRecorder(self.model1, names1, s, None, "auto", "model1")
            rec2 = LastCallRecorder(self.model2, names2, s, None, "auto", "model2")
            total = min(_len(dataloader1), _len(dataloader2))
            from tqdm.auto import tqdm
            with torch.no_grad():
                for b, (batch1, batch2) in enumerate(tqdm(
                        zip(dataloader1, dataloader2), desc="| Comparing features |",
                        total=total)):
                    x1, x2 = _input(batch1, b), _input(batch2, b)
                    n = int(x1.shape[0])
                    if int(x2.shape[0]) != n:
                        raise ValueError(f"batch {b}: dataloader1 gave {n} samples but "
                                         f"dataloader2 gave {int(x2.shape[0])}; paired "
                                         f"batches must hold the same number")
                    if n < 4:
                        warnings.warn(f"skipping batch {b} with n = {n} samples (unbiased "
                                      f"HSIC needs n >= 4)", FlashCKAWarning, stacklevel=2)
                        continue
                    r1 = forward_pass(self.model1, rec1, x1.to(self.device), n)
                    r2 = forward_pass(self.model2, rec2, x2.to(self.device), n)
                    acc.add_rows(rec1.be, r1, r2, n, rec1.ct)
                    self._last_batch, self._features = (x1, x2), [None, None]
        finally:
            for r in (rec1, rec2):
                if r is not None:
                    r.remove()
        if acc.num_batches == 0:
            raise ValueError("the dataloaders gave no batch with at least 4 samples")
        self.hsic_matrix = acc.compute().cpu()

    @property
    def model1_features(self) -> Dict[str, torch.Tensor]:
        """Output of each hooked module of model1 (firing order) on the last batch of
        ``compare`` ({} before it). flashcka keeps Grams, not activations: on first
        access the last batch is run through model1 once more (no_grad, eval mode), and
        each output is cloned as its module returns it (the original's dict holds views
        that later in-place ops may have overwritten)."""
        return self._features_of(0)

    @model1_features.setter
    def model1_features(self, value) -> None:
        self._features[0] = value

    @property
    def model2_features(self) -> Dict[str, torch.Tensor]:
        """As ``model1_features``, for model2 and its batch (``dataloader2``'s)."""
        return self._features_of(1)

    @model2_features.setter
    def model2_features(self, value) -> None:
        self._features[1] = value

    def _features_of(self, i: int) -> Dict[str, torch.Tensor]:
        if self._features[i] is None:
            self._features[i] = {} if self._last_batch is None else _outputs(
                (self.model1, self.model2)[i], (self.model1_info, self.model2_info)[i]['Layers'],
                self._last_batch[i].to(self.device))
        return self._features[i]

    def export(self) -> Dict:
        """The CKA matrix with the model and layer names (torch-cka's keys)."""
        return {
            "model1_name": self.model1_info['Name'],
            "model2_name": self.model2_info['Name'],
            "CKA": self.hsic_matrix,
            "model1_layers": self.model1_info['Layers'],
            "model2_layers": self.model2_info['Layers'],
            "dataset1_name": self.model1_info['Dataset'],
            "dataset2_name": self.model2_info['Dataset'],
        }

    def plot_results(self, save_path: str = None, title: str = None):
        """Heatmap of the CKA matrix in torch-cka's layout (model1 layers on y from the
        bottom, magma, colorbar by ``utils.add_colorbar``), drawn by flashcka's heatmap
        helper; saved at 300 dpi when ``save_path`` is given, then ``plt.show()``."""
        import matplotlib.pyplot as plt
        from .._plot import heatmap, limits, to_numpy
        from .utils import add_colorbar
        m = to_numpy(self.hsic_matrix, "hsic_matrix", ndim=2)
        fig, ax = plt.subplots()
        im = heatmap(ax, m, cmap='magma', origin='lower', vmin=limits(m, None, None)[0],
                     vmax=limits(m, None, None)[1])
        ax.set_aspect("equal")                       # imshow's default, as the original
        ax.set_xlabel(f"Layers {self.model2_info['Name']}", fontsize=15, parse_math=False)
        ax.set_ylabel(f"Layers {self.model1_info['Name']}", fontsize=15, parse_math=False)
        ax.set_title(title if title is not None else
                     f"{self.model1_info['Name']} vs {self.model2_info['Name']}", fontsize=18,
                     parse_math=False)
        add_colorbar(im)
        plt.tight_layout()
        if save_path is not None:
            plt.savefig(save_path, dpi=300)
        plt.show()


def _outputs(model, names, x) -> Dict[str, torch.Tensor]:
    """{name: output} of the named modules on one forward pass of ``x`` (first-firing
    order; a module called twice keeps its last output, as the original's dict does)."""
    modules, out = dict(model.named_modules()), {}

    def hook(name):
        def record(module, inputs, output):
            out[name] = output.clone() if isinstance(output, torch.Tensor) else output
        return record
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def _layers(model, wanted, arg) -> list[str]:
    names = [name for name, _ in model.named_modules()]
    if wanted is None:
        return names
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(f"{arg}: {missing} are not modules of {type(model).__name__} "
                         f"(names as in model.named_modules(), e.g. {names[1:6]})")
    return [name for name in names if name in wanted]


def _input(batch, b):
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise TypeError(f"batch {b}: expected a tensor or a tuple/list whose first element "
                        f"is the input tensor, got {type(x).__name__}")
    return x


def _len(loader):
    try:
        return len(loader)
    except TypeError:
        return None


def _dataset_name(loader) -> str:
    ds = getattr(loader, "dataset", None)
    return (ds if ds is not None else loader).__repr__().split('\n')[0]
