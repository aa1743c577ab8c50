"""The ``flashcka`` command (also ``python -m flashcka``).

    flashcka info                       what is built and usable here
    flashcka demo [--out DIR] [--epochs N] [--quick]
    flashcka extract --models SPEC... | --models-file FILE --out STORE [--data SPEC]
                     [--layers ...] [--tokens mean] [--dtype float32]
    flashcka zoo STORE [STORE...] [--measure cka|rsa|mutual_knn] [--across-datasets]
    flashcka compare --model-a SPEC [--model-b SPEC] [--data SPEC] [--layers-a ...]
                     [--layers-b ...] [--batch-size 64] [--num-samples N] [--image-size S]
                     [--weights-a FILE] [--weights-b FILE] [--checkpoint FILE] [--out DIR]
    flashcka compare --features-a FILE [--features-b FILE] [--layers-a ...] [--out DIR]

Model specs (``flashcka.cli.specs``): ``timm:NAME``, ``torchvision:NAME``, ``hf:DIR`` (a saved
transformers model or config), ``package.module:factory``; random weights unless
``--weights-a/-b`` name a local file. Data specs (``flashcka.cli.data``): ``digits`` (the
default, bundled with scikit-learn), ``imagefolder:PATH``, ``npz:PATH``,
``package.module:factory`` (an iterable of batches). Each model gets the same images through
its own preprocessing. Nothing is downloaded.

Feature files (``--features-a/-b``, ``flashcka.cli.features``): ``.safetensors`` (every
tensor a layer), a folder of ``.npy`` files (every file a layer), HDF5, one ``.npy``, or
``FILE::KEY``; compared by exact full-batch CKA, read a block of rows at a time.

Under ``torchrun --nproc_per_node=N flashcka compare ...`` each rank takes every N-th batch,
the accumulators are summed, and rank 0 writes the outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

from .specs import SpecError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashcka", description="Fast, exact CKA between the "
                                "layers of neural networks.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the backends and compiled features usable here")

    d = sub.add_parser("demo", help="train a tiny ViT and ResNet on 8x8 digits and compare "
                       "all their layers (about a minute on 2 CPU cores)")
    d.add_argument("--out", default="flashcka_demo", help="output folder (default %(default)s)")
    d.add_argument("--epochs", type=int, default=None, help="training epochs for both models")
    d.add_argument("--quick", action="store_true", help="tiny run (1 epoch, few samples)")
    d.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: shown when stderr is a terminal)")

    c = sub.add_parser("compare", help="minibatch CKA between the layers of two models",
                       description="Minibatch CKA between every chosen layer of model A and "
                       "every chosen layer of model B (or of A itself).")
    c.add_argument("--model-a", default=None, metavar="SPEC",
                   help="timm:NAME, torchvision:NAME, hf:DIR or package.module:factory")
    c.add_argument("--features-a", default=None, metavar="FILE",
                   help="instead of a model: saved features, a .safetensors file (a tensor "
                   "per layer), a folder of .npy files (a file per layer), an HDF5 file, one "
                   ".npy or FILE::KEY; exact full-batch CKA, read from disk in blocks")
    c.add_argument("--features-b", default=None, metavar="FILE",
                   help="as --features-a, for side B (omit to compare A's layers with "
                   "each other)")
    c.add_argument("--model-b", default=None, metavar="SPEC",
                   help="as --model-a; omit to compare model A with itself")
    c.add_argument("--data", default="digits", metavar="SPEC",
                   help="digits (default), imagefolder:PATH, npz:PATH or "
                   "package.module:factory (an iterable of batches)")
    c.add_argument("--layers-a", nargs="+", default=None, metavar="PATTERN",
                   help="module names, glob patterns (* within a level, ** across levels, "
                   "NAME:input for a module's input) or the presets blocks / sublayers "
                   "(default: blocks)")
    c.add_argument("--layers-b", nargs="+", default=None, metavar="PATTERN",
                   help="as --layers-a, for model B (default: blocks)")
    c.add_argument("--weights-a", default=None, metavar="FILE",
                   help="local state dict for model A (.pt/.pth via torch.load(weights_only="
                   "True), or .safetensors); default: random initialisation")
    c.add_argument("--weights-b", default=None, metavar="FILE",
                   help="as --weights-a, for model B (default: random initialisation)")
    c.add_argument("--kwargs-a", default=None, metavar="JSON",
                   help='keyword arguments for the model constructor, e.g. \'{"img_size": 32}\'')
    c.add_argument("--kwargs-b", default=None, metavar="JSON",
                   help="as --kwargs-a, for model B")
    c.add_argument("--seed", type=int, default=0,
                   help="random initialisation: model A is built after torch.manual_seed(SEED), "
                   "model B after torch.manual_seed(SEED + 1) (default %(default)s)")
    c.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="input resolution (default: each model's own)")
    c.add_argument("--batch-size", type=int, default=64,
                   help="samples per minibatch; the debiased estimator needs >= 4 "
                   "(default %(default)s)")
    c.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help="use the first N samples (default: all)")
    c.add_argument("--max-batches", type=int, default=None,
                   help="use at most this many batches (default: all)")
    c.add_argument("--workers", type=int, default=0, metavar="W",
                   help="processes reading and preprocessing images (a torch DataLoader; "
                   "default 0: in the main process)")
    c.add_argument("--tokens", choices=("flatten", "cls", "mean"), default="flatten",
                   help="how (n, T, C) tokens and (n, C, H, W) maps become features "
                   "(default %(default)s)")
    c.add_argument("--kernel", choices=("linear", "rbf"), default="linear",
                   help="CKA kernel (default %(default)s)")
    c.add_argument("--sigma", type=float, default=None, help="RBF bandwidth (default: median "
                   "heuristic)")
    c.add_argument("--biased", action="store_true", help="biased HSIC (default: debiased)")
    c.add_argument("--backend", default="auto", choices=("auto", "torch", "native", "triton"),
                   help="compute backend (default %(default)s: the fastest usable here)")
    c.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: cuda:LOCAL_RANK "
                   "under torchrun with CUDA, else the models' device)")
    c.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="resume file: written every --checkpoint-every batches; run the same "
                   "command again to continue where it stopped")
    c.add_argument("--checkpoint-every", type=int, default=10, metavar="K",
                   help="batches between checkpoint writes (default %(default)s)")
    c.add_argument("--no-jackknife", action="store_true",
                   help="no error bars (saves memory with thousands of layers)")
    c.add_argument("--plot-stderr", action="store_true",
                   help="add a panel with the jackknife standard errors to the plot")
    c.add_argument("--permutations", type=int, default=0, metavar="N",
                   help="permutation test of every pair with N permutations (within each "
                   "batch; seeded by --seed): p-values saved, pairs not significant under "
                   "Benjamini-Hochberg at 5%% hatched on the plot")
    c.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="BCa 95%% bootstrap intervals over samples from N resamples (runs of "
                   "one batch: --batch-size at least the number of samples)")
    c.add_argument("--plot-calibrated", action="store_true",
                   help="add a panel with the calibrated score (CKA minus the permutation "
                   "null's mean; needs --permutations)")
    c.add_argument("--format", choices=("png", "svg", "pdf"), default="png",
                   help="heatmap format (default %(default)s)")
    c.add_argument("--out", default="flashcka_out", help="output folder (default %(default)s)")
    c.add_argument("--name", default="cka", help="file stem of the outputs (default %(default)s)")
    c.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: one when stderr is a terminal)")
    from .zoo import add_parsers       # flashcka extract, flashcka zoo
    add_parsers(sub)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        from .capabilities import capabilities, format_capabilities
        print(format_capabilities(capabilities()))
        return 0
    if args.command == "demo":
        from . import demo
        if args.epochs is not None and args.epochs < 1:
            raise SystemExit(f"flashcka: --epochs must be >= 1, got {args.epochs}")
        demo.run(args.out, epochs=args.epochs, quick=args.quick,
                 progress=False if args.no_progress else None)
        return 0
    if args.command in ("extract", "zoo"):
        from .zoo import run
        try:
            return run(args)
        except (ValueError, KeyError) as e:     # spec, data, store and sample-ID errors
            raise SystemExit(f"flashcka: {e.args[0] if isinstance(e, KeyError) else e}") \
                from None
    from ..models.compare import CompareInterrupted
    try:
        return _compare(args)
    except ValueError as e:      # SpecError and compare's argument/data errors: no traceback
        raise SystemExit(f"flashcka: {_in_flags(str(e))}") from None
    except CompareInterrupted as e:
        of = "" if e.total is None else f" of {e.total}"
        again = "flashcka " + " ".join(shlex.quote(a) for a in (
            sys.argv[1:] if argv is None else argv))
        how = (f"run the same command to resume from batch {e.resume_batch}:\n  {again}"
               if e.checkpoint is not None else "without --checkpoint FILE a new run starts "
               "over; add it to make runs resumable")
        print(f"\nflashcka: stopped (Ctrl-C) at batch {e.batch}{of}; {how}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nflashcka: stopped (Ctrl-C)", file=sys.stderr)
        return 130


# compare()'s argument names as the command's flags, in its messages
_FLAGS = {"layers_a": "--layers-a", "layers_b": "--layers-b", "max_batches": "--max-batches",
          "the loader's batch_size": "--batch-size", "checkpoint_every": "--checkpoint-every",
          "unbiased=False": "--biased"}


def _in_flags(msg: str) -> str:
    return re.sub("|".join(re.escape(k) + (r"\b" if k[-1].isalnum() else "")
                           for k in _FLAGS), lambda m: _FLAGS[m.group(0)], msg)


def _compare(args) -> int:
    from ..models.compare import compare
    from .data import ArrayBatches, Arrays, Batches, ImageBatches, Images, count_batches, \
        load_data
    from .specs import load_model

    for opt in ("batch_size", "checkpoint_every"):
        if getattr(args, opt) < 1:
            raise SpecError(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
    for opt, least in (("permutations", 1), ("bootstrap", 2)):
        if getattr(args, opt) and getattr(args, opt) < least:
            raise SpecError(f"--{opt} must be >= {least} (or left out), got {getattr(args, opt)}")
    if args.plot_calibrated and not args.permutations:
        raise SpecError("--plot-calibrated needs --permutations N")
    if args.num_samples is not None and args.num_samples < 1:
        raise SpecError(f"--num-samples must be >= 1, got {args.num_samples}")
    rank, world = _init_distributed()
    out = _check_outputs(args, rank)
    if args.features_a is not None or args.features_b is not None:
        if args.permutations or args.bootstrap:
            raise SpecError("--permutations and --bootstrap run with models; for saved "
                            "features use flashcka.permutation_test / bootstrap_interval")
        from .features import compare_features
        return _write(compare_features(args), args, out)
    if args.model_a is None:
        raise SpecError("give --model-a SPEC (a model to run) or --features-a FILE (saved "
                        "features)")
    device = args.device
    if device is None and world > 1:
        import torch
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    import torch
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"--device {device}: this torch ({torch.__version__}) "
                        f"{'was built without CUDA' if torch.version.cuda is None else 'sees no GPU'}"
                        f"; pass --device cpu or leave --device out")
    torch.manual_seed(args.seed)
    lm_a = load_model(args.model_a, weights=args.weights_a, image_size=args.image_size,
                      kwargs=_json(args.kwargs_a, "--kwargs-a"), arg="--model-a")
    torch.manual_seed(args.seed + 1)
    lm_b = None if args.model_b is None else load_model(
        args.model_b, weights=args.weights_b, image_size=args.image_size,
        kwargs=_json(args.kwargs_b, "--kwargs-b"), arg="--model-b")
    if args.weights_b is not None and lm_b is None:
        raise SpecError("--weights-b is given without --model-b")
    loaded = [lm_a] if lm_b is None else [lm_a, lm_b]
    if device is not None:
        for lm in loaded:
            lm.model.to(device)
    source = load_data(args.data)
    mask = None
    if isinstance(source, Images):
        for lm, opt in zip(loaded, ("--model-a", "--model-b")):
            if lm.preprocess is None:
                raise SpecError(f"{opt} {lm.name} takes no images (it has no image "
                                f"preprocessing); give it model-ready inputs with --data npz:PATH")
        n = len(source) if args.num_samples is None else min(args.num_samples, len(source))
        ids = range(count_batches(n, args.batch_size))[rank::world]
        loader = ImageBatches(source, [lm.preprocess for lm in loaded], args.batch_size,
                              args.num_samples, ids)
        if args.workers > 0:
            from torch.utils.data import DataLoader
            loader = DataLoader(loader, batch_size=None, num_workers=args.workers)
        adapters = [(lambda batch, lm=lm, i=i: lm.inputs(batch[i])) for i, lm in
                    enumerate(loaded)]
    elif isinstance(source, Arrays):
        n = len(source) if args.num_samples is None else min(args.num_samples, len(source))
        ids = range(count_batches(n, args.batch_size))[rank::world]
        loader = ArrayBatches(source, args.batch_size, args.num_samples, ids)
        if isinstance(source.data, dict):
            adapters = [None] * len(loaded)
            mask = "attention_mask" if "attention_mask" in source.data else None
        else:
            adapters = [None if lm.wrap is None else lm.wrap for lm in loaded]
    else:
        assert isinstance(source, Batches)
        loader = source.iterable
        if args.num_samples is not None:
            raise SpecError("--num-samples applies to digits, imagefolder: and npz: data, not "
                            "to a factory's batches (use --max-batches)")
        adapters = [None if lm.wrap is None else
                    (lambda batch, lm=lm: lm.inputs(batch[0] if isinstance(batch, (tuple, list))
                                                    else batch)) for lm in loaded]
    result = compare(lm_a.model, None if lm_b is None else lm_b.model, loader,
                     layers_a=args.layers_a, layers_b=args.layers_b, tokens=args.tokens,
                     mask=mask, inputs_a=adapters[0],
                     inputs_b=None if lm_b is None else adapters[1],
                     max_batches=args.max_batches, device=device,
                     progress=None if not args.no_progress and rank == 0 else False,
                     kernel=args.kernel,
                     unbiased=not args.biased, sigma=args.sigma, backend=args.backend,
                     jackknife=not args.no_jackknife, checkpoint=args.checkpoint,
                     checkpoint_every=args.checkpoint_every,
                     shard=isinstance(source, Batches) and world > 1,
                     permutations=args.permutations, bootstrap=args.bootstrap, seed=args.seed)
    kinds = [lm.info.get("weights") or "factory's" for lm in loaded]   # plot titles
    weights = kinds[0] if len(set(kinds)) == 1 else f"A: {kinds[0]}, B: {kinds[1]}"
    result.settings.update(model_a=lm_a.name, model_b=(lm_b or lm_a).name, data=source.name,
                           weights=weights)
    if rank != 0:
        return 0
    return _write(result, args, out)


def _write(result, args, out: Path) -> int:
    """Print the result, save its JSON and draw its heatmap into ``out``."""
    print(repr(result))
    try:                        # the numbers first: a plot that fails must not lose them
        js = result.save(out / f"{args.name}.json")
    except OSError as e:
        print(json.dumps(result.to_dict(), allow_nan=False))
        print(f"flashcka: cannot write {out / args.name}.json ({e}); the result is printed "
              f"above as JSON", file=sys.stderr)
        return 1
    try:
        fig = result.plot(out / f"{args.name}.{args.format}", stderr=args.plot_stderr
                          and result.stderr is not None,
                          calibrated=getattr(args, "plot_calibrated", False))
    except Exception as e:  # noqa: BLE001 - matplotlib, fonts, disk: the JSON is written
        print(f"flashcka: wrote {js}, but the heatmap could not be drawn "
              f"({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    print(f"wrote {js} and {fig}")
    return 0


def _check_outputs(args, rank: int) -> Path:
    """Before the first batch, not after the run: ``--name`` a plain file stem, ``--out``
    a folder that can be made and written (rank 0), ``--checkpoint`` a file in a writable
    folder. Returns the output folder."""
    name = args.name
    if not name or name in (".", "..") or any(c in name for c in "/\\" + (os.sep or "")):
        raise SpecError(f"--name must be a file stem without a folder, got {name!r} (the "
                        f"folder is --out)")
    out = Path(args.out)
    if rank == 0:
        _writable_folder(out, "--out")
    if args.checkpoint is not None:
        ck = Path(args.checkpoint)
        if ck.is_dir():
            raise SpecError(f"--checkpoint {ck} is a folder; give a file path")
        _writable_folder(ck.parent, "--checkpoint")
    return out


def _writable_folder(path: Path, opt: str) -> None:
    import tempfile
    if path.exists() and not path.is_dir():
        raise SpecError(f"{opt} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise SpecError(f"{opt}: cannot write to the folder {path} ({e.strerror or e})") from None


def _json(text, opt):
    if text is None:
        return None
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{opt} must be a JSON object, e.g. '{{\"img_size\": 32}}': {e}") from None
    if not isinstance(v, dict):
        raise SpecError(f"{opt} must be a JSON object, got {text!r}")
    return v


def _init_distributed():
    """(rank, world_size); joins the process group that torchrun describes in the
    environment (gloo on CPU, nccl with CUDA) when there is one and none is initialised."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    import atexit

    import torch
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    # We created the group, so we tear it down: a group left to the interpreter's exit can
    # abort the process ("terminate called without an active exception") after a clean run.
    atexit.register(dist.destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
