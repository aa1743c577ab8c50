"""Data as users name it on the command line, batched for one or two models.

``load_data(spec)`` understands:

- ``digits`` — scikit-learn's bundled 8×8 digits (1,797 images, shipped with scikit-learn:
  nothing is downloaded), as grayscale images.
- ``imagefolder:PATH`` — torchvision-style class folders (``PATH/<class>/<image>``) or a
  flat folder of images, read with PIL, in sorted order (class, then file name).
- ``npz:PATH`` — arrays of inputs with the samples in dimension 0. ``uint8`` arrays of
  shape (n, H, W), (n, H, W, C) or (n, C, H, W) with C in {1, 3} are images (each model's
  own preprocessing applies); any other array is passed to the models as is. Several
  arrays become dict batches (the model's keyword arguments, e.g. ``input_ids`` and
  ``attention_mask``); arrays named ``labels``, ``label``, ``y`` or ``targets`` are left out.
- ``module:factory`` — a zero-argument callable returning an iterable of batches, passed
  to ``compare`` as they are.

``batches(source, models, ...)`` cuts a source into batches: for images a tuple holding
each model's preprocessed tensor (so two models with different preprocessing see the same
images), else the arrays themselves.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .specs import SpecError, _factory

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm")
_LABEL_KEYS = ("labels", "label", "y", "targets")


@dataclass
class Images:
    """Images by index: PIL images in memory, or files read on demand."""
    items: list
    name: str

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i):
        from PIL import Image
        it = self.items[i]
        if isinstance(it, (str, Path)):
            try:
                with Image.open(it) as im:
                    im.load()
                    return im.copy()
            except Exception as e:  # noqa: BLE001 - PIL raises many kinds
                raise ValueError(f"--data: cannot read image {it}: {e}") from None
        return it


@dataclass
class Arrays:
    """Model-ready arrays: one tensor, or a dict of tensors with the same length."""
    data: object
    name: str

    def __len__(self) -> int:
        first = self.data if isinstance(self.data, torch.Tensor) else \
            next(iter(self.data.values()))
        return int(first.shape[0])

    def take(self, start: int, stop: int):
        if isinstance(self.data, torch.Tensor):
            return self.data[start:stop]
        return {k: v[start:stop] for k, v in self.data.items()}


@dataclass
class Batches:
    """An iterable of batches from a factory, used as it is."""
    iterable: object
    name: str


def load_data(spec: str, arg: str = "--data"):
    """Resolve a data spec (see the module docstring) -> ``Images``, ``Arrays`` or
    ``Batches``."""
    if not isinstance(spec, str) or not spec:
        raise SpecError(f"{arg} must be digits, imagefolder:PATH, npz:PATH or "
                        f"module:factory, got {spec!r}")
    if spec == "digits":
        return _digits()
    prefix, _, rest = spec.partition(":")
    if prefix == "imagefolder":
        return _imagefolder(Path(rest).expanduser(), arg)
    if prefix == "npz":
        return _npz(Path(rest).expanduser(), arg)
    if ":" in spec:
        return Batches(_factory(spec, arg), spec)
    raise SpecError(f"{arg} must be digits, imagefolder:PATH, npz:PATH or "
                    f"package.module:factory, got {spec!r}"
                    + (f" (for the folder write imagefolder:{spec})" if Path(spec).is_dir()
                       else ""))


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the demo/test extras
        raise SpecError("--data digits needs scikit-learn (pip install 'flashcka[demo]')") from e
    from PIL import Image
    imgs = (load_digits().images * (255.0 / 16.0)).round().astype(np.uint8)
    return Images([Image.fromarray(a, mode="L") for a in imgs], "digits")


def _imagefolder(path: Path, arg: str):
    if not path.is_dir():
        raise SpecError(f"{arg}: imagefolder:{path} is not a folder")
    def is_image(p):
        return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    flat = sorted(p for p in path.iterdir() if is_image(p))
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = flat + [f for c in classes for f in sorted(c.iterdir()) if is_image(f)]
    if not files:
        raise SpecError(f"{arg}: imagefolder:{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}) "
                        f"directly or in class subfolders")
    return Images(files, f"imagefolder:{path.name}")


def _npz(path: Path, arg: str):
    if not path.is_file():
        raise SpecError(f"{arg}: npz:{path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in _LABEL_KEYS}
    except Exception as e:  # noqa: BLE001
        raise SpecError(f"{arg}: cannot read {path} as .npz: {e}") from None
    if not arrays:
        raise SpecError(f"{arg}: {path} holds no input arrays")
    lens = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if None in lens.values() or len(set(lens.values())) != 1:
        raise SpecError(f"{arg}: the arrays of {path} must share their first dimension (the "
                        f"samples); got {({k: arrays[k].shape for k in arrays})}")
    if len(arrays) == 1:
        a = next(iter(arrays.values()))
        if a.dtype == np.uint8 and _image_layout(a) is not None:
            from PIL import Image
            a = _image_layout(a)
            return Images([Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x) for x in a],
                          f"npz:{path.name}")
        return Arrays(torch.from_numpy(np.ascontiguousarray(a)), f"npz:{path.name}")
    return Arrays({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                  f"npz:{path.name}")


def _image_layout(a):
    """uint8 images as (n, H, W, C) with C in {1, 3}, or None when ``a`` is not images."""
    if a.ndim == 3:
        return a[..., None]
    if a.ndim == 4 and a.shape[-1] in (1, 3):
        return a
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return a.transpose(0, 2, 3, 1)
    return None


def count_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


class ImageBatches:
    """Batches of images, each a tuple with one preprocessed tensor per model. ``batch_ids``
    restricts to some batches (e.g. a rank's round-robin share under torch.distributed)."""

    def __init__(self, images: Images, preprocess: list, batch_size: int,
                 num_samples: int | None = None, batch_ids=None):
        self.images, self.preprocess, self.batch_size = images, preprocess, batch_size
        self.n = len(images) if num_samples is None else min(num_samples, len(images))
        total = count_batches(self.n, batch_size)
        self.batch_ids = list(range(total)) if batch_ids is None else list(batch_ids)

    def __len__(self) -> int:
        return len(self.batch_ids)

    def __getitem__(self, j: int):
        """The j-th batch (a map-style dataset of batches for a DataLoader's workers)."""
        start = self.batch_ids[j] * self.batch_size
        imgs = [self.images.image(i) for i in range(start, min(start + self.batch_size,
                                                                self.n))]
        return tuple(p(imgs) for p in self.preprocess)

    def __iter__(self):
        for j in range(len(self.batch_ids)):
            yield self[j]


class ArrayBatches:
    """Slices of model-ready arrays."""

    def __init__(self, arrays: Arrays, batch_size: int, num_samples: int | None = None,
                 batch_ids=None):
        self.arrays, self.batch_size = arrays, batch_size
        self.n = len(arrays) if num_samples is None else min(num_samples, len(arrays))
        total = count_batches(self.n, batch_size)
        self.batch_ids = list(range(total)) if batch_ids is None else list(batch_ids)

    def __len__(self) -> int:
        return len(self.batch_ids)

    def __iter__(self):
        for b in self.batch_ids:
            start = b * self.batch_size
            yield self.arrays.take(start, min(start + self.batch_size, self.n))
