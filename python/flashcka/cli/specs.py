"""Models as users name them on the command line, with their own preprocessing.

``load_model(spec)`` understands:

- ``timm:NAME`` — ``timm.create_model(NAME, pretrained=False, **kwargs)``; preprocessing from
  timm's data config of the model (``resolve_model_data_config`` + ``create_transform``).
- ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None, **kwargs)``;
  preprocessing from the default weights' ``transforms()`` (ImageNet's where the model has no
  weights enum).
- ``hf:DIR`` — a saved transformers model or config directory: ``AutoModel.from_pretrained``
  when DIR holds weights, else ``AutoModel.from_config`` (random). Preprocessing from DIR's
  image processor (``preprocessor_config.json``) when it has one; otherwise a vision config
  gets a resize to its ``image_size`` and ViT's normalisation (mean = std = 0.5). Vision
  models are called as ``model(pixel_values=x)``.
- ``module:factory`` — any zero-argument callable (the current directory is importable);
  images reach it as (n, C, H, W) float tensors in [0, 1], C from the image mode.

A bare name (``resnet18``) is refused with a message that names the prefix(es) under which
it exists: the same name can be different architectures in timm and torchvision.
Nothing is downloaded: weights are random unless ``weights`` names a local file
(``torch.load(..., weights_only=True)``, or ``.safetensors``), loaded strictly.
``image_size`` overrides the input resolution (and, for timm/torchvision ViTs, the model's
``img_size``/``image_size`` when it accepts one).
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

PREFIXES = ("timm", "torchvision", "hf")
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class SpecError(ValueError):
    """A model or data spec that cannot be resolved; the message says what to write."""


@dataclass
class LoadedModel:
    """A model and how a batch of images becomes its arguments."""
    model: nn.Module
    name: str
    preprocess: Callable | None = None   # list of PIL images -> (n, C, H, W) tensor
    wrap: Callable | None = None         # tensor batch -> the model's arguments
    info: dict = field(default_factory=dict)

    def inputs(self, x):
        return x if self.wrap is None else self.wrap(x)


def load_model(spec: str, *, weights=None, image_size: int | None = None,
               kwargs: dict | None = None, arg: str = "--model-a") -> LoadedModel:
    """Resolve ``spec`` (see the module docstring) into a ``LoadedModel`` in eval mode."""
    if not isinstance(spec, str) or not spec:
        raise SpecError(f"{arg} must be a model spec such as timm:NAME, torchvision:NAME, "
                        f"hf:DIR or module:factory, got {spec!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise SpecError(f"--image-size must be a positive int, got {image_size!r}")
    kwargs = dict(kwargs or {})
    prefix, _, rest = spec.partition(":")
    if prefix in PREFIXES and not rest:
        raise SpecError(f"{arg}: {spec!r} names no model after '{prefix}:'")
    if prefix == "timm":
        lm = _timm(rest, image_size, kwargs, arg)
    elif prefix == "torchvision":
        lm = _torchvision(rest, image_size, kwargs, arg)
    elif prefix == "hf":
        lm = _hf(rest, image_size, kwargs, arg)
    elif ":" in spec:
        if kwargs:
            raise SpecError(f"{arg}: model kwargs apply to timm:/torchvision:/hf: models, not "
                            f"to a factory ({spec!r})")
        lm = LoadedModel(_factory(spec, arg), spec, _plain_images(image_size))
        if not isinstance(lm.model, nn.Module):
            raise SpecError(f"{arg}: {spec!r} returned {type(lm.model).__name__}, not a "
                            f"torch.nn.Module")
    else:
        raise SpecError(_bare_name_message(spec, arg))
    if weights is not None:
        load_weights(lm.model, weights, arg.replace("model", "weights"))
        lm.info["weights"] = "trained"       # a state dict from a file: taken as trained
    lm.model.eval()
    return lm


# ------------------------------------------------------------------ per library

def _timm(name, image_size, kwargs, arg):
    timm = _import("timm", arg)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise SpecError(f"{arg}: timm has no model {name!r}; similar: {close or 'none'}")
    model = None
    if image_size is not None and "img_size" not in kwargs:
        try:                                  # ViT-like models are built for one size
            model = timm.create_model(name, pretrained=False, img_size=image_size, **kwargs)
        except TypeError:
            model = None                      # CNNs take any size and no img_size
    if model is None:
        model = _build(timm.create_model, name, kwargs, f"timm.create_model({name!r})", arg,
                       pretrained=False)
    from timm.data import create_transform, resolve_model_data_config
    cfg = resolve_model_data_config(model)
    if image_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], image_size, image_size)
    tf = create_transform(**cfg, is_training=False)
    mode = "RGB" if cfg["input_size"][0] == 3 else "L"
    return LoadedModel(model, f"timm:{name}", _per_image(tf, mode),
                       info={"preprocess": _describe(cfg), "weights": "random"})


def _torchvision(name, image_size, kwargs, arg):
    tv = _import("torchvision", arg)
    models = tv.models
    if name not in models.list_models():
        import difflib
        close = difflib.get_close_matches(name, models.list_models(), n=6)
        raise SpecError(f"{arg}: torchvision has no model {name!r}; similar: {close or 'none'}")
    model = None
    if image_size is not None and "image_size" not in kwargs:
        try:
            model = models.get_model(name, weights=None, image_size=image_size, **kwargs)
        except TypeError:
            model = None
    if model is None:
        model = _build(models.get_model, name, kwargs,
                       f"torchvision.models.get_model({name!r})", arg, weights=None)
    try:
        default = models.get_model_weights(name).DEFAULT
        tf = default.transforms()
        if image_size is not None:
            crop, resize = tf.crop_size[0], tf.resize_size[0]
            tf = default.transforms(crop_size=image_size,
                                    resize_size=max(image_size, round(image_size * resize / crop)))
    except (ValueError, KeyError, AttributeError, TypeError):
        T = tv.transforms
        s = image_size or 224
        tf = T.Compose([T.Resize(round(s / 0.875)), T.CenterCrop(s), T.ToTensor(),
                        T.Normalize(*_IMAGENET)])
    return LoadedModel(model, f"torchvision:{name}", _per_image(tf, "RGB"),
                       info={"preprocess": repr(tf).replace("\n", " "), "weights": "random"})


def _hf(path, image_size, kwargs, arg):
    transformers = _import("transformers", arg)
    d = Path(path).expanduser()
    if not (d / "config.json").is_file():
        raise SpecError(f"{arg}: hf:{path} is not a saved transformers model or config "
                        f"(no config.json in {d}); save one with model.save_pretrained(DIR) "
                        f"or config.save_pretrained(DIR)")
    has_weights = any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))
    if has_weights:
        model = transformers.AutoModel.from_pretrained(d, local_files_only=True, **kwargs)
    else:
        config = transformers.AutoConfig.from_pretrained(d, local_files_only=True, **kwargs)
        if image_size is not None and hasattr(config, "image_size"):
            config.image_size = image_size        # random weights: build it at that size
        model = transformers.AutoModel.from_config(config)
    config = model.config
    import inspect
    interpolate = (image_size is not None and has_weights and "interpolate_pos_encoding"
                   in inspect.signature(model.forward).parameters)
    vision = hasattr(config, "image_size") or (d / "preprocessor_config.json").is_file()
    preprocess = wrap = None
    info = {"weights": "trained" if has_weights else "random"}   # (saved weights: trained)
    if (d / "preprocessor_config.json").is_file():
        proc = transformers.AutoImageProcessor.from_pretrained(d, local_files_only=True)
        over = {}
        if image_size is not None:
            size = getattr(proc, "size", None) or {}
            over["size"] = ({"shortest_edge": image_size} if "shortest_edge" in size
                            else {"height": image_size, "width": image_size})
            if getattr(proc, "crop_size", None):
                over["crop_size"] = {"height": image_size, "width": image_size}

        def preprocess(images, proc=proc, over=over):
            return proc(images=[im.convert("RGB") for im in images], return_tensors="pt",
                        **over)["pixel_values"]
        info["preprocess"] = f"{type(proc).__name__} from {d}"
    elif vision:
        s = image_size or int(_first(config.image_size))
        gray = getattr(config, "num_channels", 3) == 1      # one channel: one mean and std
        half = (0.5,) if gray else (0.5, 0.5, 0.5)
        preprocess = _resize_normalise(s, half, half, "L" if gray else "RGB")
        info["preprocess"] = f"resize to {s}x{s}, mean = std = 0.5"
    if vision:
        def wrap(x):   # saved weights at another size: interpolate the position embeddings
            return {"pixel_values": x, **({"interpolate_pos_encoding": True} if interpolate
                                          else {})}
    return LoadedModel(model, f"hf:{d.name}", preprocess, wrap, info)


def _factory(spec, arg):
    mod_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise SpecError(f"{arg}: cannot import module {mod_name!r}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{arg}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{arg}: {spec!r} is not callable")
    return obj()


def load_weights(model: nn.Module, path, arg: str = "--weights") -> None:
    """Load a local state dict into ``model`` (strict): ``.safetensors``, or a torch file
    read with ``weights_only=True`` holding a state dict (or one under "state_dict" /
    "model")."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{arg}: no such file {str(p)!r}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickles with code, corrupt files
            raise SpecError(f"{arg}: cannot read {p} with torch.load(weights_only=True): "
                            f"{e}") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise SpecError(f"{arg}: {p} does not hold a state dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SpecError(f"{arg}: {p} does not fit {type(model).__name__}: "
                        f"{str(e).splitlines()[0]} …") from None


# ------------------------------------------------------------------ preprocessing

def _per_image(tf, mode):
    def preprocess(images):
        return torch.stack([tf(im.convert(mode)) for im in images])
    return preprocess


def _resize_normalise(size, mean, std, mode):
    import numpy as np
    from PIL import Image
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)

    def one(im):
        im = im.convert(mode).resize((size, size), Image.BILINEAR)
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        a = a[None] if a.dim() == 2 else a.permute(2, 0, 1)
        return (a - m) / s
    return lambda images: torch.stack([one(im) for im in images])


def _plain_images(image_size):
    """Factory models: (n, C, H, W) in [0, 1], C from the image mode, resized (bilinear)
    to image_size when given (else the images must share one size)."""
    import numpy as np
    from PIL import Image

    def one(im):
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        if image_size is not None:
            im = im.resize((image_size, image_size), Image.BILINEAR)
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        return a[None] if a.dim() == 2 else a.permute(2, 0, 1)

    def preprocess(images):
        xs = [one(im) for im in images]
        channels = sorted({x.shape[0] for x in xs})
        if len(channels) > 1:
            raise ValueError(f"--data: the images mix grayscale and colour ({channels} channels) "
                             f"for a factory model, which takes one kind; convert them to one "
                             f"mode (e.g. all RGB)")
        if len({tuple(x.shape) for x in xs}) > 1:
            raise ValueError(f"--data: images of different sizes {sorted({tuple(x.shape) for x in xs})} "
                             f"for a factory model: pass --image-size")
        return torch.stack(xs)
    return preprocess


def _describe(cfg) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def _first(v):
    return v[0] if isinstance(v, (tuple, list)) else v


# ------------------------------------------------------------------ helpers

def _build(fn, name, kwargs, desc, arg, **fixed):
    try:
        return fn(name, **fixed, **kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{arg}: {desc} with kwargs {kwargs} failed: {e}") from None


def _import(name, arg):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name and e.name != "torchvision":
            raise SpecError(f"{arg}: {name} does not import: {e}") from None
        missing = e.name
        raise SpecError(f"{arg}: {name} models need {missing}, which is not installed; "
                        f"{install_hint(missing)}") from None
    except Exception as e:  # noqa: BLE001 - e.g. torchvision's compiled ops not loading
        if _torchvision_broken(e):
            raise SpecError(f"{arg}: {name} models need torchvision, and torchvision "
                            f"{_version('torchvision')} is installed but was built for "
                            f"another torch: its compiled ops do not load next to torch "
                            f"{torch.__version__} ({type(e).__name__}: {e}). Install the "
                            f"torchvision built for this torch: "
                            f"{torchvision_command(reinstall=True)}") from None
        raise SpecError(f"{arg}: {name} is installed but does not import: "
                        f"{type(e).__name__}: {e}") from None


def matching_torchvision() -> str | None:
    """The torchvision release made for the installed torch: 0.(m+15).p for torch 2.m.p."""
    base = torch.__version__.split("+")[0].split(".")
    if len(base) < 3 or base[0] != "2" or not (base[1].isdigit() and base[2].isdigit()):
        return None
    return f"0.{int(base[1]) + 15}.{base[2]}"


def torchvision_command(reinstall: bool = False) -> str:
    """The pip command that installs the torchvision matching this torch without replacing
    it: a CPU or +cuXXX torch from PyTorch's wheel index (PyPI's Linux torchvision is built
    for PyPI's CUDA torch), a plain PyPI torch from PyPI."""
    tv = matching_torchvision()
    pin = f"torchvision=={tv}" if tv else "torchvision"
    local = torch.__version__.partition("+")[2]
    index = f" --index-url https://download.pytorch.org/whl/{local}" if local else ""
    again = " --force-reinstall --no-deps" if reinstall else ""
    return f"pip install{again} {pin}{index}"


def install_hint(name: str) -> str:
    """How to install ``name`` (timm, torchvision, transformers) without pip replacing the
    installed torch (README: 'Hub models')."""
    tv = torchvision_command()
    if name == "torchvision":
        return f"install the build made for torch {torch.__version__}: {tv}"
    if name == "timm":
        return (f"install the torchvision built for torch {torch.__version__} first ({tv}), "
                f"then pip install timm: with both in place pip keeps your torch (alone, "
                f"pip install timm pulls the newest torchvision and the torch it needs; "
                f"README, 'Hub models')")
    return f"pip install {name}"


def hub_status() -> dict:
    """What ``timm:``, ``torchvision:`` and ``hf:`` specs need, as ``flashcka info`` says it:
    each library's version, or how to install it without replacing torch; torchvision
    also imported, as its compiled ops may be built for another torch."""
    out = {}
    for name in ("timm", "torchvision", "transformers"):
        v = _version(name)
        out[name] = v if v else f"not installed: {install_hint(name)}"
    if _version("torchvision"):
        try:
            importlib.import_module("torchvision")
        except Exception as e:  # noqa: BLE001
            out["torchvision"] += (" — built for another torch, does not import "
                                   f"({type(e).__name__}: {e}); fix: "
                                   f"{torchvision_command(reinstall=True)}"
                                   if _torchvision_broken(e) else f" — does not import: {e}")
    return out


def _torchvision_broken(e: BaseException) -> bool:
    text = str(e)
    return _version("torchvision") is not None and (
        "torchvision::" in text or "torchvision._C" in text
        or ("torchvision" in text and "undefined symbol" in text))


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _bare_name_message(name: str, arg: str) -> str:
    found = []
    try:
        import timm
        if timm.is_model(name):
            found.append(f"timm:{name}")
    except Exception:  # noqa: BLE001
        pass
    try:
        import torchvision
        if name in torchvision.models.list_models():
            found.append(f"torchvision:{name}")
    except Exception:  # noqa: BLE001
        pass
    if Path(name).is_dir() and (Path(name) / "config.json").is_file():
        found.append(f"hf:{name}")
    if found:
        return (f"{arg}: say which library {name!r} comes from: {' or '.join(found)} "
                f"(bare names are not guessed: the same name can be different models)")
    return (f"{arg} must be timm:NAME, torchvision:NAME, hf:DIR or package.module:factory; "
            f"got {name!r}, which is none of these")
