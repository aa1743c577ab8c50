"""Row sources: any (n, ...) representation read a block of rows at a time (issue 19).

Every input of the tiled route, the streamed kNN measures, ``MinibatchCKA`` and the CLI's
feature files goes through ``open_rows`` (one layer) or ``open_layers`` (a tensor, list,
dict, file or folder of layers). A source has ``n``, ``d`` (features per sample, trailing
dimensions flattened as ``validate.representations`` does), ``dtype`` (torch), ``name``
(the layer, as ``validate.representations`` names it: a mapping's key, ``arg[i]`` in a
sequence), ``arg`` (the argument), ``shape == (n, d)``, ``device``, ``in_memory`` and
``read(start, stop)``: rows ``start..stop`` as a ``(stop − start, d)`` tensor. ``read``
checks finiteness of what it returns and raises ``ValueError`` naming the argument, the
layer and the first bad entry.

Accepted, for one layer:

- a ``torch.Tensor`` of shape (n, ...), any device; rows are views (no copy);
- a NumPy array, ``np.memmap`` included (a read copies its rows out of the map);
- a path (str or ``os.PathLike``) to a ``.npy`` file, or to a ``.safetensors`` or HDF5
  (``.h5``/``.hdf5``) file holding one tensor;
- one tensor of a ``.safetensors`` or HDF5 file: ``"file.safetensors::key"`` or the pair
  ``(path, key)`` (for HDF5 the key is the dataset's path in the file);
- an ``h5py.Dataset``, or any array-like with ``shape``, ``dtype`` and row slicing
  (``x[a:b]``) such as a zarr array;
- a source returned by ``open_rows``.

``.npy`` and ``.safetensors`` files are read with positional reads of the rows asked for,
from their headers (no memory map), so a read leaves nothing resident in the process
beyond the returned tensor (the pages stay in the OS page cache, not in its RSS).
HDF5 files are read through ``h5py`` (imported only then; ``pip install h5py``).

``open_layers`` also takes a whole file or folder as several layers: every tensor of a
``.safetensors`` file, every dataset of an HDF5 file, every ``.npy`` file of a folder,
named by key / dataset path / file stem, in natural order (``layer2`` before ``layer10``).
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64) + tuple(
    getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))

# safetensors dtype names -> (torch dtype, NumPy storage dtype of the same width)
_ST_DTYPES = {"F64": ("float64", "<f8"), "F32": ("float32", "<f4"), "F16": ("float16", "<f2"),
              "BF16": ("bfloat16", "<u2"), "F8_E4M3": ("float8_e4m3fn", "u1"),
              "F8_E5M2": ("float8_e5m2", "u1")}
_SEP = "::"
_H5_SUFFIXES = (".h5", ".hdf5", ".he5")


def open_rows(x, arg: str, name: str | None = None):
    """One layer ``x`` (see the module docstring) as a row source named ``name`` within the
    argument ``arg`` (a source is returned as it is). Its shape and dtype are checked
    here, before any row is read; finiteness as rows are read."""
    name = arg if name is None else str(name)
    if isinstance(x, Source):
        return x
    if isinstance(x, torch.Tensor):
        src = TensorRows(x, name)
    elif type(x).__module__ == "numpy" and type(x).__name__ in ("ndarray", "memmap"):
        src = ArrayRows(x, name)
    elif isinstance(x, (str, os.PathLike)):
        src = _open_file(*_split_key(x), name)
    elif isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], (str, os.PathLike)) \
            and isinstance(x[1], str):
        src = _open_file(os.fspath(x[0]), x[1], name)
    elif hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "__getitem__"):
        src = ArrayRows(x, name)
    else:
        raise TypeError(f"{name} must be a tensor, a NumPy array, a path to a .npy/.safetensors/"
                        f".h5 file, 'file.safetensors::key', (path, key) or a row-sliceable array; "
                        f"got {type(x).__name__}")
    src.arg = arg
    return src


def open_layers(xs, arg: str) -> list:
    """Every layer of ``xs`` as a row source, all checked before any work: a supported
    floating dtype, at least one sample and one feature, and the same n everywhere (the
    first layer that differs is named). ``xs``: one layer, a sequence or a name -> layer
    mapping of layers, or a file/folder of several layers (module docstring). Names: the
    mapping's keys, ``arg[i]`` for a sequence, the keys/stems of a file or folder."""
    if isinstance(xs, (str, os.PathLike)) and _SEP not in os.fspath(xs):
        items = _file_layers(os.fspath(xs), arg)
    elif isinstance(xs, Mapping):
        items = [(str(k), v) for k, v in xs.items()]
    elif isinstance(xs, Sequence) and not isinstance(xs, (str, bytes)) \
            and not _is_key_pair(xs):
        items = [(f"{arg}[{i}]", v) for i, v in enumerate(xs)]
    else:
        items = [(arg, xs)]
    if not items:
        raise ValueError(f"{arg} is empty: give at least one representation")
    sources = [open_rows(v, arg, k) for k, v in items]
    same_n([sources])
    return sources


def load(xs, arg: str):
    """``xs`` with every layer that is not in memory (a path, a memmap, an h5py dataset, a
    source) read whole into a tensor, for the routes that hold a batch in memory
    (``MinibatchCKA.update``, RSA, the subspace measures). Tensors and NumPy arrays are
    returned as they are, so ``validate.representations`` sees them unchanged. The
    structure is kept (a mapping stays a mapping, a sequence a list); a file or folder
    given alone holding several layers becomes a name -> tensor dict (``open_layers``'s
    names). Dtypes, shapes and the common n of the layers read are checked first."""
    if _in_memory(xs):
        return xs
    if isinstance(xs, Mapping):
        read = _read_all({k: open_rows(v, arg, str(k)) for k, v in xs.items()
                          if not _in_memory(v)})
        return {k: read.get(k, v) for k, v in xs.items()}
    if isinstance(xs, Sequence) and not isinstance(xs, (str, bytes)) \
            and not _is_key_pair(xs):
        read = _read_all({i: open_rows(v, arg, f"{arg}[{i}]") for i, v in enumerate(xs)
                          if not _in_memory(v)})
        return [read.get(i, v) for i, v in enumerate(xs)]
    srcs = open_layers(xs, arg)
    if len(srcs) == 1 and srcs[0].name == arg:
        return srcs[0].read(0, srcs[0].n)
    return _read_all({s.name: s for s in srcs})


def _in_memory(v) -> bool:
    return isinstance(v, torch.Tensor) or type(v).__module__ == "numpy" \
        and type(v).__name__ == "ndarray"


def _read_all(sources: dict) -> dict:
    """Each source read whole, under its key, after checking they share one n."""
    same_n([list(sources.values())])
    return {k: s.read(0, s.n) for k, s in sources.items()}


def same_n(groups: Sequence[Sequence]) -> int:
    """The common n of every source in ``groups`` (lists of sources); the first that differs
    is named with the first one."""
    n, first = None, None
    for sources in groups:
        for s in sources:
            if n is None:
                n, first = s.n, s.name
            elif s.n != n:
                raise ValueError(f"{s.name} has {s.n} samples but {first} has {n}: every "
                                 f"representation must hold the same samples (dimension 0)")
    return n


class Source:
    """Base of the row sources: ``n``, ``d``, ``dtype``, ``name`` (the layer, as messages
    name it), ``arg`` (the argument it came in), ``device``, ``in_memory``; subclasses
    implement ``_rows``."""
    device = torch.device("cpu")
    in_memory = False

    def __init__(self, name: str, shape, dtype: torch.dtype):
        self.name = self.arg = name
        shape = tuple(int(s) for s in shape)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {dtype}; CKA needs real floating-point "
                            f"activations (float16, bfloat16, float32 or float64)")
        if not shape:
            raise ValueError(f"{name} is a scalar; a representation has shape (n, ...)")
        if shape[0] == 0 or math.prod(shape[1:]) == 0:
            raise ValueError(f"{name} is empty (shape {shape}): a representation needs at "
                             f"least one sample and one feature")
        self.n, self.d, self.dtype = shape[0], math.prod(shape[1:]), dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={self.n}, d={self.d}, {self.dtype})"

    def read(self, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows ``start..stop`` (0 <= start < stop <= n) as a (stop − start, d) tensor, in
        ``dtype`` if given (else the source's); non-finite values raise ValueError."""
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= self.n:
            raise IndexError(f"{self.name}: rows {start}..{stop} outside 0..{self.n}")
        t = self._rows(start, stop)
        check_finite(t, self.name, start, self.arg)
        return t if dtype is None else t.to(dtype)

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError


def check_finite(t: torch.Tensor, name: str, row0: int = 0, arg: str | None = None) -> None:
    """Raise ValueError naming the layer ``name`` (of argument ``arg``) and the first
    NaN/Inf of rows ``t`` (rows of the layer from ``row0``)."""
    u = t.float() if t.element_size() == 1 else t  # float8: no isfinite kernel
    lo, hi = torch.aminmax(u)       # propagates NaN; many times faster than isfinite().all()
    if math.isfinite(lo.item()) and math.isfinite(hi.item()):
        return
    r, c = (int(i) for i in (~torch.isfinite(u)).nonzero()[0])
    where = "" if arg in (None, name) or name.startswith(f"{arg}[") else f"{arg}, "
    raise ValueError(f"{name} holds non-finite values: {u[r, c].item()} at row {row0 + r}, "
                     f"feature {c} ({where}found reading rows {row0}..{row0 + t.shape[0]})")


class TensorRows(Source):
    """A torch tensor (n, ...): rows are views, flattened to (m, d)."""
    in_memory = True

    def __init__(self, x: torch.Tensor, name: str):
        if x.layout != torch.strided:
            raise TypeError(f"{name} is a sparse tensor (layout {x.layout}); pass "
                            f"{name}.to_dense()")
        if x.is_meta:
            raise ValueError(f"{name} is a meta tensor: it has a shape but no values")
        super().__init__(name, x.shape, x.dtype)
        self.x, self.device = x, x.device

    def _rows(self, start, stop):
        return self.x[start:stop].reshape(stop - start, self.d)


class ArrayRows(Source):
    """A NumPy array (a memmap included) or any row-sliceable array-like (h5py, zarr)."""

    def __init__(self, a, name: str):
        import numpy as np
        self.a = a
        self.in_memory = isinstance(a, np.ndarray) and not isinstance(a, np.memmap)
        super().__init__(name, a.shape, _numpy_dtype(np.dtype(a.dtype), name))

    def _rows(self, start, stop):
        import numpy as np
        rows = np.asarray(self.a[start:stop])
        native = rows.dtype.newbyteorder("=")
        # a memmap's rows are copied, so the returned tensor holds no file pages
        copy = isinstance(self.a, np.memmap) or not rows.flags.c_contiguous \
            or rows.dtype != native
        rows = np.array(rows, dtype=native, order="C") if copy else rows
        if isinstance(self.a, np.memmap):
            _drop_pages(self.a, start, stop)
        return torch.from_numpy(rows.reshape(stop - start, self.d))


def _drop_pages(a, start: int, stop: int) -> None:
    """Unmap rows start..stop of a read-only, C-contiguous memmap from this process once
    they are copied out (``MADV_DONTNEED``): the pages stay in the OS page cache but leave
    the process's RSS, which otherwise grows to the whole file as it is streamed. Only a
    hint: where it does not apply, nothing changes but the RSS."""
    import mmap
    import numpy as np
    mm = getattr(a, "_mmap", None)
    if mm is None or getattr(a, "mode", None) != "r" or not a.flags.c_contiguous \
            or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        base = np.frombuffer(mm, np.uint8).ctypes.data
        row = a.strides[0] if a.ndim else a.itemsize
        lo = a.ctypes.data - base + start * row
        hi = min(len(mm), a.ctypes.data - base + stop * row)
        lo -= lo % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (OSError, ValueError, BufferError):
        pass


class FileRows(Source):
    """Rows stored C-contiguously in a file from byte ``offset``: read with positional
    reads of exactly the rows asked for (.npy, .safetensors)."""

    def __init__(self, path: str, offset: int, shape, dtype: torch.dtype, storage: str,
                 name: str):
        super().__init__(name, shape, dtype)
        self.path, self.offset, self.storage = path, offset, storage
        import numpy as np
        self.row_bytes = self.d * np.dtype(storage).itemsize
        size = os.path.getsize(path)
        if offset + self.n * self.row_bytes > size:
            raise ValueError(f"{name}: {path} is truncated ({size} bytes; its header "
                             f"describes {offset + self.n * self.row_bytes})")

    def _rows(self, start, stop):
        import numpy as np
        out = np.empty((stop - start, self.d), dtype=self.storage)
        view = memoryview(out.reshape(-1).view(np.uint8))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            pos, got = self.offset + start * self.row_bytes, 0
            while got < len(view):
                k = os.preadv(fd, [view[got:]], pos + got)
                if k <= 0:
                    raise OSError(f"{self.name}: {self.path} ended while reading rows "
                                  f"{start}..{stop}")
                got += k
        finally:
            os.close(fd)
        native = out.dtype.newbyteorder("=")
        if out.dtype != native:
            out = out.astype(native)
        t = torch.from_numpy(out)
        return t if out.dtype.kind == "f" else t.view(self.dtype)


def _numpy_dtype(dt, name: str) -> torch.dtype:
    if dt.kind != "f" or dt.itemsize not in (2, 4, 8):
        raise TypeError(f"{name} has dtype {dt}; CKA needs real floating-point activations "
                        f"(float16, float32 or float64)")
    return {2: torch.float16, 4: torch.float32, 8: torch.float64}[dt.itemsize]


def _is_key_pair(xs) -> bool:
    return isinstance(xs, tuple) and len(xs) == 2 and isinstance(xs[0], (str, os.PathLike)) \
        and isinstance(xs[1], str) and _kind(os.fspath(xs[0])) in ("safetensors", "h5")


def _split_key(x) -> tuple[str, str | None]:
    s = os.fspath(x)
    if _SEP in s:
        path, key = s.split(_SEP, 1)
        return path, key
    return s, None


def _kind(path: str) -> str:
    low = path.lower()
    if low.endswith(".npy"):
        return "npy"
    if low.endswith(".safetensors"):
        return "safetensors"
    if low.endswith(_H5_SUFFIXES):
        return "h5"
    if os.path.isdir(path):
        return "dir"
    return "?"


def _open_file(path: str, key: str | None, name: str):
    kind = _kind(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no such file {path!r}")
    if kind == "npy":
        if key is not None:
            raise ValueError(f"{name}: a .npy file holds one array; drop '::{key}'")
        return _open_npy(path, name)
    if kind == "safetensors":
        header, offset = _safetensors_header(path, name)
        if key is None:
            key = _only_key(sorted(header), path, name)
        if key not in header:
            raise KeyError(f"{name}: {path} has no tensor {key!r}; it holds "
                           f"{_natural(header)[:20]}")
        return _safetensors_rows(path, header[key], offset, key, name)
    if kind == "h5":
        f = _h5py(name).File(path, "r")
        if key is None:
            key = _only_key(_h5_datasets(f), path, name)
        if key not in f:
            raise KeyError(f"{name}: {path} has no dataset {key!r}; it holds "
                           f"{_h5_datasets(f)[:20]}")
        return ArrayRows(f[key], name)
    raise ValueError(f"{name}: {path!r} is not a .npy, .safetensors or .h5/.hdf5 file"
                     + (" (a folder of .npy files is several layers: pass it alone, "
                        "not as one layer)" if kind == "dir" else ""))


def _open_npy(path: str, name: str):
    import numpy as np
    try:  # the header only: the map is dropped unread
        m = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise ValueError(f"{name}: {path} is not a valid .npy file ({e})") from None
    tdtype = _numpy_dtype(m.dtype, name)
    if not m.flags.c_contiguous:  # Fortran order: rows are not contiguous, read the map
        return ArrayRows(m, name)
    return FileRows(path, m.offset, m.shape, tdtype, m.dtype.str, name)


def _safetensors_header(path: str, name: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{name}: {path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise ValueError(f"{name}: {path} is not a safetensors file (header size {size})")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise ValueError(f"{name}: {path} is not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def _safetensors_rows(path, info, offset, key, name):
    dt = info.get("dtype")
    if dt not in _ST_DTYPES:
        raise TypeError(f"{name} ({path}::{key}) has dtype {dt}; CKA needs real "
                        f"floating-point activations (F16, BF16, F32 or F64)")
    tname, storage = _ST_DTYPES[dt]
    if not hasattr(torch, tname):
        raise TypeError(f"{name}: this torch has no {tname} for {path}::{key}")
    begin, end = info["data_offsets"]
    import numpy as np
    if end - begin != math.prod(info["shape"]) * np.dtype(storage).itemsize:
        raise ValueError(f"{name}: {path}::{key} has inconsistent data offsets")
    return FileRows(path, offset + begin, info["shape"], getattr(torch, tname), storage, name)


def _only_key(keys: list, path: str, name: str) -> str:
    if len(keys) == 1:
        return keys[0]
    what = "no tensor" if not keys else f"{len(keys)} tensors ({_natural(keys)[:10]})"
    raise ValueError(f"{name}: {path} holds {what}; name one as '{path}{_SEP}KEY' or "
                     f"(path, KEY), or pass the file alone to take every tensor as a layer")


def _h5py(name: str):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{name}: reading HDF5 files needs the h5py package "
                          f"(pip install h5py)") from None
    return h5py


def _h5_datasets(f) -> list[str]:
    import h5py
    names = []
    f.visititems(lambda k, v: names.append(k) if isinstance(v, h5py.Dataset) else None)
    return _natural(names)


def _natural(keys) -> list[str]:
    """Keys in natural order: digit runs compare as numbers (layer2 < layer10)."""
    return sorted(keys, key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p)
                                       for p in re.split(r"(\d+)", k)])


def _file_layers(path: str, arg: str) -> list[tuple[str, object]]:
    """(name, layer) for every layer of a file or folder given alone."""
    kind = _kind(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{arg}: no such file or folder {path!r}")
    if kind == "dir":
        files = _natural(f for f in os.listdir(path) if f.lower().endswith(".npy"))
        if not files:
            raise ValueError(f"{arg}: the folder {path!r} holds no .npy files")
        return [(os.path.splitext(f)[0], os.path.join(path, f)) for f in files]
    if kind == "safetensors":
        keys = _natural(_safetensors_header(path, arg)[0])
        if not keys:
            raise ValueError(f"{arg}: {path} holds no tensor")
        return [(k, (path, k)) for k in keys] if len(keys) > 1 else [(arg, path)]
    if kind == "h5":
        with _h5py(arg).File(path, "r") as f:
            keys = _h5_datasets(f)
        if not keys:
            raise ValueError(f"{arg}: {path} holds no dataset")
        return [(k, (path, k)) for k in keys] if len(keys) > 1 else [(arg, path)]
    return [(arg, path)]
