"""The run state of one ``compare`` call, owned here and nowhere else.

``RunState`` holds the accumulator (a ``MinibatchCKA``, built on the first usable batch or
restored from the checkpoint), decides for each loader index b whether this process runs
the models on it (not when an earlier run already counted it, nor when it belongs to
another rank's shard), which jackknife slot it feeds, counts the small batches skipped,
writes the checkpoint, and sums the accumulator over torch.distributed ranks at the end.
``compare`` hands it each batch's Gram rows and takes the finished accumulator; the
accumulator itself knows nothing of files or ranks' shards.

Checkpoint file (``torch.save``, read back with ``weights_only=True``): the accumulator's
``MinibatchCKA.state_dict()`` (with its jackknife slots), the loader index of the next
batch, the number of small batches skipped, and a fingerprint of the compare arguments
(settings, tokens, mask, dtype, layer specs, model classes, rank and world size); a
checkpoint written with other arguments is refused with a ValueError naming the
difference. Written atomically (temporary file, fsync, ``os.replace``): a run killed while
writing leaves the previous checkpoint intact. Under torch.distributed each rank writes
``PATH.rank<r>``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core.minibatch import MinibatchCKA

_FORMAT = "flashcka.compare-checkpoint"


def dist_info(distributed):
    """(rank, world_size) when this run reduces over torch.distributed, else None.
    ``distributed=None``: when a process group is initialised with more than one rank."""
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
    if distributed is False:
        return None
    import torch.distributed as dist
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if distributed:
            raise ValueError("distributed=True but no torch.distributed process group is "
                             "initialised (call torch.distributed.init_process_group, or run "
                             "under torchrun)")
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    if world == 1 and distributed is None:
        return None
    return rank, world


class RunState:
    """Per-run bookkeeping of ``compare``'s batch loop (see the module docstring)."""

    def __init__(self, settings, backend: str, jackknife, checkpoint, every: int,
                 fingerprint: dict, dist, shard: bool):
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a path or None, got {type(checkpoint).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint_every must be a positive int, got {every!r}")
        if not isinstance(shard, bool):
            raise TypeError(f"shard must be a bool, got {shard!r}")
        self.dist, self.shard, self.every = dist, shard, every
        self.rank, self.world = dist if dist is not None else (0, 1)
        self.path = None
        if checkpoint is not None:
            p = Path(checkpoint)
            self.path = p.with_name(f"{p.name}.rank{self.rank}") if dist else p
        self.fingerprint = {**fingerprint, "rank": self.rank, "world_size": self.world,
                            "shard": shard}
        self.settings, self.backend, self.jackknife = settings, backend, jackknife
        self.next_batch, self.skipped, self.state = 0, 0, None
        self.saved_batch = 0           # the next_batch of the file on disk (0: none)
        self.since_save = 0
        self.acc: MinibatchCKA | None = None
        self.resumed = False           # the accumulator came from the checkpoint
        if self.path is not None and self.path.exists():
            self._load()
            self.acc = self._restored()
            self.resumed = self.acc is not None
        self._layers_unchecked = self.resumed

    # -- before the loop
    def _load(self):
        try:
            ck = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated or foreign files
            raise ValueError(f"checkpoint {self.path} cannot be read ({e}); delete it to "
                             f"start over") from None
        if not isinstance(ck, dict) or ck.get("format") != _FORMAT:
            raise ValueError(f"checkpoint {self.path} is not a flashcka compare checkpoint")
        missing = [k for k in ("version", "fingerprint", "next_batch", "skipped", "acc")
                   if k not in ck]
        if missing:
            self._bad(missing[0], "is missing")
        if ck["version"] != 1 or isinstance(ck["version"], bool):
            self._bad("version", f"is {ck['version']!r}; this flashcka reads 1")
        old = ck["fingerprint"]
        if not isinstance(old, dict):
            self._bad("fingerprint", f"must be a dict, got {type(old).__name__}")
        diff = sorted(k for k in set(old) | set(self.fingerprint)
                      if old.get(k) != self.fingerprint.get(k))
        if diff:
            said = "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {self.fingerprint.get(k)!r}"
                             for k in diff)
            raise ValueError(f"checkpoint {self.path} was written by a compare() with other "
                             f"arguments ({said}); use another path or delete it")
        for k in ("next_batch", "skipped"):
            v = ck[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                self._bad(k, f"must be a non-negative int, got {v!r}")
        if not isinstance(ck["acc"], dict):
            self._bad("acc", f"must be a MinibatchCKA state dict, got {type(ck['acc']).__name__}")
        self.next_batch, self.skipped = ck["next_batch"], ck["skipped"]
        self.saved_batch = self.next_batch
        self.state = ck["acc"]

    def _bad(self, field: str, what: str):
        raise ValueError(f"checkpoint {self.path}: {field} {what}; it was edited or is "
                         f"corrupt: delete it to start over") from None

    def _new_acc(self, names_a, names_b, dtype) -> MinibatchCKA:
        st = self.settings
        return MinibatchCKA(len(names_a), None if names_b is None else len(names_b),
                            kernel=st.kernel, unbiased=st.unbiased, sigma=st.sigma,
                            threshold=st.threshold, dtype=dtype, backend=self.backend,
                            names_a=names_a, names_b=names_b, jackknife=self.jackknife)

    def _restored(self) -> MinibatchCKA | None:
        """The accumulator of the checkpoint, or None when starting fresh. Every field is
        checked: a bad one raises a ValueError naming the file and the field."""
        if self.state is None:
            return None
        s = self.state
        dtypes = {str(d): d for d in (torch.float32, torch.float64)}
        settings = s.get("settings")
        if not isinstance(settings, dict) or "num_layers_b" not in settings:
            self._bad("acc.settings", f"must be a settings dict, got {settings!r}")
        if s.get("compute_dtype") not in dtypes:
            self._bad("acc.compute_dtype", f"must be one of {sorted(dtypes)}, got "
                                           f"{s.get('compute_dtype')!r}")
        try:
            acc = self._new_acc(s.get("names_a"), None if settings["num_layers_b"] is None
                                else s.get("names_b"), dtypes[s["compute_dtype"]])
            acc.load_state_dict(s)
        except (ValueError, TypeError) as e:
            self._bad("acc", f"is not a valid accumulator state ({e})")
        nb = self.next_batch        # loader indices below it this process runs:
        runs = max(0, nb - self.rank + self.world - 1) // self.world \
            if self.dist and self.shard else nb
        if not acc.num_batches <= runs <= acc.num_batches + self.skipped:
            self._bad("next_batch", f"= {self.next_batch} does not match the counts: "
                                    f"{acc.num_batches} batches counted and {self.skipped} "
                                    f"skipped of the {runs} this process runs below it")
        return acc

    # -- per batch
    def runs(self, b: int) -> bool:
        """Whether this process runs the models on loader index b."""
        if b < self.next_batch:
            return False
        return not (self.dist and self.shard and b % self.world != self.rank)

    def index(self, b: int) -> int:
        """The batch's global index (its jackknife slot key): the loader index when the
        loader is shared (``shard=True``) or there is one process; otherwise a rank's b-th
        batch is taken as global batch ``b·world_size + rank`` (round-robin sharding)."""
        return b if not self.dist or self.shard else b * self.world + self.rank

    def skip(self, b: int) -> None:
        """Batch b is too small for the estimator: counted as skipped, and never run
        again after a resume."""
        self.skipped += 1
        self.next_batch = b + 1

    def add(self, b: int, be, rows_a, rows_b, n: int, dtype, names_a, names_b) -> None:
        """Batch b's Gram rows into the accumulator (built now on the first batch; after a
        resume the layers must be those of the checkpoint); then write the checkpoint every
        ``every`` batches. ``names_b`` is None for one model compared with itself."""
        if self.acc is None:
            self.acc = self._new_acc(names_a, names_b, dtype)
        elif self._layers_unchecked:
            self._check_layers(names_a, names_b)
            self._layers_unchecked = False
        self.acc.add_rows(be, rows_a, rows_b, n, dtype, index=self.index(b))
        self.next_batch = b + 1
        self.since_save += 1
        if self.path is not None and self.since_save >= self.every:
            self.save()

    def _check_layers(self, names_a, names_b) -> None:
        for side, now, then in (("model_a", names_a, self.acc.names_a),
                                ("model_b", names_a if names_b is None else names_b,
                                 self.acc.names_b)):
            if list(now) != list(then):
                raise ValueError(f"checkpoint: {side}'s layers {list(now)} differ from the "
                                 f"checkpoint's {list(then)}; the model changed since it was "
                                 f"written")

    def save(self) -> None:
        if self.path is None or self.acc is None:
            return
        obj = {"format": _FORMAT, "version": 1, "fingerprint": self.fingerprint,
               "next_batch": self.next_batch, "skipped": self.skipped,
               "acc": self.acc.state_dict()}
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.since_save, self.saved_batch = 0, self.next_batch

    # -- after the loop
    def finish(self) -> MinibatchCKA:
        """The accumulator of every batch: checkpoint written, summed over the ranks. A
        run without a usable batch raises a ValueError saying how many were too small."""
        self.save()
        self._reduce(self.acc)
        if self.acc is None:
            need = 4 if self.settings.unbiased else 2
            raise ValueError(f"loader gave no usable batches (skipped {self.skipped} with "
                             f"fewer than {need} samples); give batches of at least {need} "
                             f"samples (the loader's batch_size)"
                             + (", or unbiased=False (n >= 2)" if self.settings.unbiased
                                else ""))
        return self.acc

    def _reduce(self, acc: MinibatchCKA | None) -> None:
        """Sum ``acc`` over the ranks (every rank must call this). A rank without usable
        batches makes every rank raise, rather than one of them hang."""
        if not self.dist:
            return
        import torch.distributed as dist
        have = torch.tensor([0 if acc is None else 1], dtype=torch.int64,
                            device=acc.cross.device if acc is not None and acc.cross is not None
                            else _collective_device())
        dist.all_reduce(have, op=dist.ReduceOp.MIN)
        if int(have) == 0:
            raise ValueError(f"compare: under torch.distributed every rank needs at least "
                             f"one usable batch; rank {self.rank} of {self.world} "
                             f"{'has none' if acc is None else 'has some, another has none'} "
                             f"(give each rank its shard: DistributedSampler, or shard=True)")
        acc.all_reduce()


def _collective_device():
    import torch.distributed as dist
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
