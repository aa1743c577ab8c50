"""The feature store (flashcka.store, flashcka.extract): similarity from the store equals
the float64 reference and cka_matrix in memory; extraction resumes with the same bytes;
sample IDs, corrupt shards and stale cache entries are caught; adding a model computes
only its pairs."""
from pathlib import Path

import numpy as np
import pytest
import torch

import flashcka
from flashcka.cli.demo import load_digits_split
from flashcka.models import TinyResNet, TinyViT
from flashcka.store import Store, StoreError, remove_model, write_store

import reference as ref

pytest.importorskip("safetensors")
pytest.importorskip("sklearn")

QUIET = {"log": lambda msg: None, "progress": False}


def _digits(n, batch, seed=0):
    _, _, x, _ = load_digits_split(test_size=500, seed=seed)
    x = x[:n]
    return [(x[i:i + batch],) for i in range(0, n, batch)]


def _models(seed=0):
    torch.manual_seed(seed)
    vit = TinyViT(dim=32, depth=2)
    torch.manual_seed(seed + 1)
    res = TinyResNet(widths=(6, 12, 16), blocks=1)
    return {"vit": vit, "res": res}


def _all_features(store, models=None):
    return {f"{m}/{lay}": store.features(m, lay) for m in (models or store.models)
            for lay in store.layers(m)}


@pytest.mark.parametrize("kernel,unbiased", [("linear", True), ("linear", False),
                                             ("rbf", True), ("rbf", False)])
def test_similarity_equals_float64_reference(tmp_path, rng, kernel, unbiased):
    n = int(rng.integers(90, 140))              # awkward: neither batch nor shard multiple
    store = write_store(_models(int(rng.integers(1000))), _digits(n, 23), out=tmp_path / "s",
                        dtype="float64", shard_size=41, **QUIET)
    r = store.similarity(kernel=kernel, unbiased=unbiased, dtype=torch.float64)
    feats = _all_features(store)
    names = list(feats)
    assert r.names_a == names and r.names_b == names and r.num_samples == n
    # The reference gets column-centred features: CKA is exactly invariant to X - 1μᵀ, and
    # its raw Gram of a residual stream with a large mean loses ~1e-10 to cancellation.
    cen = {k: (v - v.mean(0)).numpy() for k, v in feats.items()}
    want = np.array([[ref.cka(cen[a], cen[b], kernel, unbiased) for b in names]
                     for a in names])
    np.testing.assert_allclose(r.matrix.numpy(), want, rtol=1e-10, atol=1e-12)
    mem = flashcka.cka_matrix(feats, kernel=kernel, unbiased=unbiased, dtype=torch.float64)
    np.testing.assert_allclose(r.matrix.numpy(), mem.numpy(), rtol=1e-12, atol=1e-13)
    # a memory budget below the Grams: the tiled route, the same numbers
    (tmp_path / "s/cache").rename(tmp_path / "old_cache")
    tiled = store.similarity(kernel=kernel, unbiased=unbiased, dtype=torch.float64,
                             max_memory=1 << 16)
    assert store.last["computed_pairs"] == len(names) * (len(names) + 1) // 2
    np.testing.assert_allclose(tiled.matrix.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("measure,settings", [("rsa", {}), ("rsa", {"rsa_method": "pearson"}),
                                              ("mutual_knn", {"topk": 7})])
def test_other_measures_equal_similarity_matrix(tmp_path, measure, settings):
    store = write_store(_models(), _digits(120, 32), out=tmp_path / "s", dtype="float64",
                        **QUIET)
    r = store.similarity(measure, **settings)
    want = flashcka.similarity_matrix(_all_features(store), measure=measure, **settings)
    np.testing.assert_allclose(r.matrix.numpy(), want.numpy(), rtol=1e-12, atol=1e-13)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


class _Stops:
    """The batches of ``batches``, raising KeyboardInterrupt before batch ``at`` once."""

    def __init__(self, batches, at):
        self.batches, self.at, self.armed = batches, at, True

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b, batch in enumerate(self.batches):
            if self.armed and b == self.at:
                self.armed = False
                raise KeyboardInterrupt
            yield batch


def test_interrupted_extraction_resumes_with_the_same_bytes(tmp_path):
    data = _digits(150, 16)
    write_store(_models(), data, out=tmp_path / "whole", shard_size=37, **QUIET)
    stops = _Stops(data, at=6)             # 96 samples: shards 0, 1 written, 22 buffered
    ran = []
    models = _models()
    models["vit"].register_forward_pre_hook(lambda m, a: ran.append(a[0].shape[0]))
    with pytest.raises(KeyboardInterrupt):
        write_store(models, stops, out=tmp_path / "resumed", shard_size=37, **QUIET)
    assert (tmp_path / "resumed/models/vit/progress.json").is_file()
    ran.clear()
    write_store(models, stops, out=tmp_path / "resumed", shard_size=37, **QUIET)
    assert sum(ran[:1]) == 16 and sum(ran) == 150 - 64   # batches 0-3 (shards 0, 1) skipped
    assert _files(tmp_path / "whole") == _files(tmp_path / "resumed")
    assert not (tmp_path / "resumed/models/vit/progress.json").exists()


def test_calling_again_skips_finished_models_and_adds_new_ones(tmp_path):
    data = _digits(64, 32)
    models = _models()
    write_store({"vit": models["vit"]}, data, out=tmp_path / "s", **QUIET)
    before = _files(tmp_path / "s/models/vit")
    logs = []
    store = write_store(models, data, out=tmp_path / "s", log=logs.append, progress=False)
    assert store.models == ["vit", "res"]
    assert any("vit: already in the store, skipped" in m for m in logs)
    assert _files(tmp_path / "s/models/vit") == before
    torch.manual_seed(5)
    with pytest.raises(StoreError, match=r"'vit' is already in .* with other settings "
                                         r"\(weights_sha256 differ\)"):
        write_store({"vit": TinyViT(dim=32, depth=2)}, data, out=tmp_path / "s", **QUIET)


def test_misordered_sample_ids_are_refused_naming_the_first_mismatch(tmp_path):
    data = _digits(40, 20)
    ids = [f"img{i}" for i in range(40)]
    models = _models()
    write_store({"vit": models["vit"]}, data, out=tmp_path / "s", sample_ids=ids, **QUIET)
    swapped = ids[:3] + [ids[4], ids[3]] + ids[5:]
    with pytest.raises(StoreError, match=r"model 'res' \(samples 0\.\.39\) has 'img4' at "
                                         r"position 3 where the store has 'img3'"):
        write_store({"res": models["res"]}, data, out=tmp_path / "s", sample_ids=swapped,
                    **QUIET)
    assert Store(tmp_path / "s").models == ["vit"]
    # two stores of the same samples in another order
    write_store({"res": models["res"]}, data, out=tmp_path / "t", sample_ids=swapped, **QUIET)
    with pytest.raises(StoreError, match=r"store .*t has 'img4' at position 3 where store "
                                         r".*s has 'img3'"):
        Store(tmp_path / "s", tmp_path / "t")
    write_store({"res": models["res"]}, data, out=tmp_path / "u", sample_ids=ids, **QUIET)
    both = Store(tmp_path / "s", tmp_path / "u")
    assert both.models == ["vit", "res"]
    assert both.similarity().names_a[0] == "vit/" + both.layers("vit")[0]
    # a model whose own sample IDs were edited in the manifest's back
    sid = tmp_path / "u/models/res/sample_ids.json"
    sid.write_text(sid.read_text().replace('"img0"', '"imgX"'))
    man = tmp_path / "u/manifest.json"
    man.write_text(man.read_text().replace('"sample_ids_sha256": "', '"sample_ids_sha256": "0'))
    with pytest.raises(StoreError, match=r"model 'res' has 'imgX' at position 0 where store "
                                         r".*u has 'img0'"):
        Store(tmp_path / "u")


def test_a_changed_setting_or_reextracted_model_is_never_served_from_the_cache(tmp_path):
    data = _digits(100, 25)
    store = write_store(_models(), data, out=tmp_path / "s", dtype="float64", **QUIET)
    L = sum(len(store.layers(m)) for m in store.models)
    pairs = L * (L + 1) // 2
    unb = store.similarity(dtype=torch.float64)
    assert store.last["computed_pairs"] == pairs
    again = store.similarity(dtype=torch.float64)
    assert store.last == {**store.last, "computed_pairs": 0, "cached_pairs": pairs}
    assert torch.equal(again.matrix, unb.matrix)
    biased = store.similarity(unbiased=False, dtype=torch.float64)
    assert store.last["computed_pairs"] == pairs
    feats = _all_features(store)
    want = flashcka.cka_matrix(feats, unbiased=False, dtype=torch.float64)
    np.testing.assert_allclose(biased.matrix.numpy(), want.numpy(), rtol=1e-12, atol=1e-13)
    assert not np.allclose(biased.matrix.numpy(), unb.matrix.numpy(), rtol=1e-6, atol=0)
    # the same name extracted again with other weights: its pairs are new keys
    remove_model(tmp_path / "s", "vit")
    torch.manual_seed(123)
    store = write_store({"vit": TinyViT(dim=32, depth=2)}, data, out=tmp_path / "s",
                        dtype="float64", **QUIET)
    r = store.similarity(dtype=torch.float64)
    lv, lr = len(store.layers("vit")), len(store.layers("res"))
    assert store.last["computed_pairs"] == lv * (lv + 1) // 2 + lv * lr
    want = flashcka.cka_matrix(_all_features(store), dtype=torch.float64)
    np.testing.assert_allclose(r.matrix.numpy(), want.numpy(), rtol=1e-12, atol=1e-13)


def test_corrupt_shards_raise_naming_the_file(tmp_path):
    store = write_store(_models(), _digits(60, 30), out=tmp_path / "s", shard_size=25, **QUIET)
    lay = store.layers("vit")[-1]
    shard = tmp_path / "s/models/vit/shard-00001.safetensors"
    good = shard.read_bytes()
    bad = bytearray(good)
    bad[-3] ^= 0x40                                     # one bit of the last value
    shard.write_bytes(bytes(bad))
    with pytest.raises(StoreError, match=f"shard {shard}: layer '{lay}' does not match its "
                                         f"recorded hash"):
        store.features("vit", lay)
    with pytest.raises(StoreError, match=f"shard {shard}"):
        store.similarity()
    shard.write_bytes(good[: len(good) // 2])           # truncated
    with pytest.raises(StoreError, match=f"shard {shard} cannot be read"):
        Store(tmp_path / "s").features("vit", lay)
    shard.unlink()
    with pytest.raises(StoreError, match=f"shard {shard} cannot be read"):
        Store(tmp_path / "s").features("vit", lay)
    (tmp_path / "s/manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest .*manifest.json cannot be read"):
        Store(tmp_path / "s")


@pytest.mark.parametrize("keep_grams", [None, False])
def test_adding_a_model_computes_only_its_pairs(tmp_path, monkeypatch, keep_grams):
    data = _digits(100, 50)
    store = write_store(_models(), data, out=tmp_path / "s", dtype="float64", **QUIET)
    first = store.similarity(dtype=torch.float64, keep_grams=keep_grams)
    assert (tmp_path / "s/cache/grams").is_dir() == (keep_grams is None)
    torch.manual_seed(9)
    store = write_store({"vit2": TinyViT(dim=16, depth=3)}, data, out=tmp_path / "s",
                        dtype="float64", **QUIET)
    read, calls = [], []
    real_features = Store.features
    monkeypatch.setattr(Store, "features", lambda self, m, lay: read.append(m)
                        or real_features(self, m, lay))
    import flashcka.store.store as store_mod
    real = store_mod.cka_matrix
    monkeypatch.setattr(store_mod, "cka_matrix", lambda xs, ys=None, **kw: calls.append(
        (list(xs), list(ys))) or real(xs, ys, **kw))
    r = store.similarity(dtype=torch.float64, keep_grams=keep_grams)
    old = len(first.names_a)
    new = len(store.layers("vit2"))
    assert store.last["computed_pairs"] == new * old + new * (new + 1) // 2
    if keep_grams is None:          # the old layers' Grams are read, not their features
        assert set(read) == {"vit2"} and len(read) == new and not calls
    else:                           # one block: the new layers against every layer
        assert [rows for rows, _ in calls] == [[f"vit2/{lay}" for lay in store.layers("vit2")]]
        assert len(calls[0][1]) == old + new
    assert torch.equal(r.matrix[:old, :old], first.matrix)
    want = flashcka.cka_matrix(_all_features(store), dtype=torch.float64)
    np.testing.assert_allclose(r.matrix.numpy(), want.numpy(), rtol=1e-12, atol=1e-13)


def test_a_damaged_gram_file_is_recomputed(tmp_path):
    store = write_store(_models(), _digits(60, 30), out=tmp_path / "s", dtype="float64",
                        **QUIET)
    want = store.similarity(dtype=torch.float64)
    files = sorted((tmp_path / "s/cache/grams").rglob("*.safetensors"))
    assert len(files) == len(want.names_a)
    raw = bytearray(files[0].read_bytes())
    raw[-5] ^= 1
    files[0].write_bytes(bytes(raw))
    for f in (tmp_path / "s/cache").glob("cka-*.json"):
        f.unlink()
    with pytest.warns(flashcka.FlashCKAWarning, match=f"Gram cache file {files[0]} is "
                                                      f"damaged; recomputing it"):
        got = store.similarity(dtype=torch.float64)
    assert torch.equal(got.matrix, want.matrix)


def test_bad_arguments_say_what_to_change(tmp_path):
    data = _digits(40, 20)
    with pytest.raises(ValueError, match="model names must be non-empty strings without '/'"):
        write_store({"a/b": TinyViT()}, data, out=tmp_path / "s", **QUIET)
    with pytest.raises(ValueError, match="dtype must be one of"):
        write_store({"a": TinyViT()}, data, out=tmp_path / "s", dtype="int8", **QUIET)
    store = write_store({"a": TinyViT()}, data, out=tmp_path / "s", **QUIET)
    with pytest.raises(TypeError, match=r"takes settings \['rsa_method', 'dtype'\], not "
                                        r"\['kernel'\]"):
        store.similarity("rsa", kernel="rbf")
    with pytest.raises(KeyError, match="no model 'b' in the store"):
        store.similarity(models=["b"])
    with pytest.raises(StoreError, match="is not a feature store"):
        Store(tmp_path)


class _Text(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(50, 8)
        self.mix = torch.nn.Linear(8, 6)

    def forward(self, input_ids, attention_mask, doc_id):
        return self.mix(self.emb(input_ids))


def test_text_masked_mean_and_a_user_id_column(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = []
    for b in range(3):
        ids = torch.randint(0, 50, (10, 7), generator=g)
        mask = (torch.arange(7)[None] < torch.randint(1, 8, (10, 1), generator=g)).long()
        batches.append({"input_ids": ids, "attention_mask": mask,
                        "doc_id": torch.arange(10) * 7 + 1000 * b})
    model = _Text().double()
    store = write_store({"t": model}, batches, out=tmp_path / "s", layers=["emb", "mix"],
                        mask="attention_mask", sample_ids="doc_id", dtype="float64", **QUIET)
    assert store.sample_ids[:3] == [0, 7, 14] and store.sample_ids[10] == 1000
    with torch.no_grad():
        for lay, f in (("emb", lambda b: model.emb(b["input_ids"])),
                       ("mix", lambda b: model(**b))):
            want = []
            for b in batches:
                x, m = f(b).double(), b["attention_mask"].double()[:, :, None]
                want.append((x * m).sum(1) / m.sum(1))
            torch.testing.assert_close(store.features("t", lay), torch.cat(want), rtol=1e-12,
                                       atol=1e-12)
