"""What ``compare(..., permutations=P, bootstrap=R)`` adds to each batch of its run: the
permutation null of every pair (``calibrate.PermutationNull``, permuted within each batch)
and, for a run of one batch, bootstrap intervals from that batch's rows
(``bootstrap.bootstrap_rows``). Fed the rows the hooks built, after the accumulator."""
from __future__ import annotations

from . import engine as _engine
from .bootstrap import bootstrap_rows, check_args
from .calibrate import PermutationNull


ONE_BATCH = ("bootstrap= needs the full-batch estimator, a run of one batch: make the "
             "loader's batch_size at least the number of samples (or leave bootstrap out: "
             "permutations= works with minibatches)")


class CalibratedRun:
    def __init__(self, permutations: int, bootstrap: int, seed: int, same: bool,
                 unbiased: bool, level: float = 0.95, method: str = "bca",
                 progress: bool | None = None):
        for arg, v in (("permutations", permutations), ("bootstrap", bootstrap)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{arg} must be a non-negative int, got {v!r}")
        self.level = check_args(bootstrap, seed, level, method, "bootstrap") if bootstrap \
            else float(level)
        self.null = PermutationNull(permutations, seed, same, unbiased, progress=progress) \
            if permutations else None
        self.bootstrap, self.seed, self.method = bootstrap, seed, method
        self.same, self.unbiased, self.progress = same, unbiased, progress
        self.kept = None     # (be, rows a, rows b, n) of the one batch, for the bootstrap
        self.batches = 0

    def add_rows(self, be, ra: _engine.Rows, rb: _engine.Rows, n: int, names_a, names_b,
                 batch: int) -> None:
        """One batch's rows (``batch``: its loader index, which seeds its permutations)."""
        self.check_batches(self.batches + 1)
        if self.null is not None:
            self.null.add_rows(be, ra, rb, n, names_a, names_b, batch=batch)
        if self.bootstrap:
            copy = lambda r: _engine.Rows(r.g.clone(), r.sq_c.clone(), r.sq.clone(),  # noqa: E731
                                          None if r.scale is None else r.scale.clone())
            ka = copy(ra)
            self.kept = (be, ka, ka if self.same else copy(rb), n)
        self.batches += 1

    def check_batches(self, count: int) -> None:
        """Raise (``ONE_BATCH``) when a bootstrap run would have ``count`` > 1 batches."""
        if self.bootstrap and count > 1:
            raise ValueError(ONE_BATCH)

    def all_reduce(self, group=None) -> None:
        """Sum the permutation null over torch.distributed ranks (no bootstrap there: a
        run of one batch has one rank doing the work)."""
        if self.bootstrap:
            raise ValueError("bootstrap= is for runs of one batch in one process, not "
                             "under torch.distributed")
        if self.null is not None:
            self.null.all_reduce(group)

    def fields(self, names_a, names_b) -> tuple[dict, dict]:
        """(CKAResult keyword arguments, settings entries) of what was computed."""
        extra, settings = {}, {}
        if self.null is not None:
            p = self.null.result(names_a, names_b)
            extra.update(pvalue=p.pvalue, null_mean=p.null_mean, null_std=p.null_std)
            settings["permutations"] = {
                "num_permutations": p.num_permutations, "seed": self.seed,
                "batch_size": "within each batch of the run",
                "pvalue": "(1 + #{null >= observed}) / (1 + P), one-sided"}
        if self.bootstrap and self.kept is not None:
            be, ra, rb, n = self.kept
            b = bootstrap_rows(be, ra, rb, n, self.unbiased, self.same, names_a, names_b,
                               self.bootstrap, self.seed, self.level, self.method,
                               self.progress)
            extra.update(ci_low=b.low, ci_high=b.high)
            settings["bootstrap"] = {"num_resamples": self.bootstrap, "seed": self.seed,
                                     "level": self.level, "method": self.method}
        return extra, settings
