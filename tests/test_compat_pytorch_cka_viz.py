"""pytorch-cka 1.1.3's plot functions in flashcka.compat.pytorch_cka.viz, called as its README
and test_viz.py call them, headless (Agg): each figure is compared with the original's,
artist by artist (sizes, titles, labels, ticks, limits, image data, lines, colours)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from flashcka.compat.pytorch_cka import viz  # noqa: E402


def _orig_viz():
    cka = pytest.importorskip("cka", reason="pytorch-cka not installed")
    if not hasattr(cka, "compute_cka"):
        pytest.skip("the installed `cka` module is not pytorch-cka")
    import cka.viz
    return cka.viz


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


def _axes_state(ax):
    texts = lambda ts: [t.get_text() for t in ts]  # noqa: E731
    state = {
        "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
        "xticks": list(ax.get_xticks()), "yticks": list(ax.get_yticks()),
        "xticklabels": texts(ax.get_xticklabels()), "yticklabels": texts(ax.get_yticklabels()),
        "xlim": ax.get_xlim(), "ylim": ax.get_ylim(), "visible": ax.get_visible(),
        "lines": [(list(l.get_xdata()), list(map(float, l.get_ydata())), l.get_color(),
                   l.get_marker(), l.get_linestyle(), l.get_label()) for l in ax.lines],
        "fills": len(ax.collections),
        "legend": texts(ax.get_legend().get_texts()) if ax.get_legend() else None,
        "images": [(im.get_array().filled(np.nan) if np.ma.isMaskedArray(im.get_array())
                    else np.asarray(im.get_array()), im.get_clim(), im.get_cmap().name)
                   for im in ax.images],
    }
    return state


def _same(fig_a, fig_b, nan_cells=0):
    assert tuple(fig_a.get_size_inches()) == tuple(fig_b.get_size_inches())
    assert len(fig_a.axes) == len(fig_b.axes)
    for a, b in zip(fig_a.axes, fig_b.axes):
        sa, sb = _axes_state(a), _axes_state(b)
        ia, ib = sa.pop("images"), sb.pop("images")
        assert sa == sb
        assert len(ia) == len(ib)
        for (da, ca, ma), (db, cb, mb) in zip(ia, ib):
            np.testing.assert_array_equal(da, db)
            assert ca == pytest.approx(cb, abs=0) and ma == mb
        assert [t.get_text() for t in a.texts if t.get_text() != "nan"] == \
            [t.get_text() for t in b.texts]
    assert sum(t.get_text() == "nan" for a in fig_a.axes for t in a.texts) == nan_cells


def _both(name, *args, **kw):
    return getattr(viz, name)(*args, **kw), getattr(_orig_viz(), name)(*args, **kw)


@pytest.mark.parametrize("kw", [
    {},
    {"layers1": ["a.layer1", "a.layer2", "a.layer3"], "layers2": ["b.l1", "b.l2", "b.l3", "b.l4"]},
    {"layers1": ["enc.block.l1", "enc.block.l2", "enc.block.l3"],
     "layers2": ["x.y.z1", "x.y.z2", "x.y.z3", "x.y.z4"], "layer_name_depth": 1,
     "model1_name": "ResNet-18 (pretrained)", "model2_name": "ResNet-18 (random init)",
     "annot": True, "cmap": "inferno"},
    {"figsize": (10, 8), "vmin": 0, "vmax": 1, "colorbar": False, "title": "T",
     "text_color": "white", "annot": True, "annot_fmt": ".3f"},
])
def test_heatmap_as_original(rng, kw):
    m = torch.tensor(rng.uniform(0, 1, (3, 4)))
    (fa, aa), (fo, ao) = _both("plot_cka_heatmap", m, **kw)
    assert isinstance(fa, plt.Figure) and isinstance(aa, plt.Axes)
    _same(fa, fo)
    if kw.get("layers1"):
        depth = kw.get("layer_name_depth")
        want = [n if depth is None else n.split(".")[-1] for n in kw["layers1"]]
        assert [t.get_text() for t in aa.get_yticklabels()] == want


def test_heatmap_numpy_input_existing_axes_and_show(rng, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(1))
    fig0, ax0 = plt.subplots()
    fig, ax = viz.plot_cka_heatmap(rng.uniform(0, 1, (5, 5)), ax=ax0, colorbar=False, show=True)
    assert fig is fig0 and ax is ax0 and shown == [1] and len(fig.axes) == 1


def test_heatmap_nan_cell_is_written(rng):
    """A NaN (zero-variance layer) is written "nan" in annotated cells; the original leaves
    the cell blank. Colour limits come from the finite values in both."""
    m = rng.uniform(0, 1, (3, 3))
    m[1, 2] = np.nan
    (fa, aa), (fo, ao) = _both("plot_cka_heatmap", m, annot=True)
    _same(fa, fo, nan_cells=1)
    assert "nan" in [t.get_text() for t in aa.texts]


def test_heatmap_renders_png_headless(rng, tmp_path):
    m = rng.uniform(-0.05, 1, (6, 8))
    fig, _ = viz.plot_cka_heatmap(m, layers1=[f"layer{i}.$x" for i in range(6)],
                                  layers2=[f"blk{i}" for i in range(8)], annot=True)
    path = tmp_path / "heat.png"
    viz.save_figure(fig, str(path))
    assert path.stat().st_size > 10_000 and fig.number not in plt.get_fignums()
    img = plt.imread(path)
    assert img.shape[0] > 300 and img[..., :3].std() > 0.1     # not blank


@pytest.mark.parametrize("ncols,share,n", [(2, True, 3), (2, False, 4), (3, True, 1)])
def test_comparison_as_original(rng, ncols, share, n):
    mats = [torch.tensor(rng.uniform(0, 1, (4, 4))) for _ in range(n)]
    titles = [f"Matrix {i}" for i in range(n)]
    (fa, axa), (fo, axo) = _both("plot_cka_comparison", mats, titles,
                                 layers=["a", "b", "c", "d"], ncols=ncols,
                                 share_colorbar=share)
    assert isinstance(axa, np.ndarray) and axa.shape == axo.shape
    _same(fa, fo)
    if n == 3:
        assert not axa[1, 1].get_visible()


@pytest.mark.parametrize("values,kw", [
    (lambda r: torch.tensor(r.uniform(0, 1, 10)), {}),
    (lambda r: [torch.tensor(r.uniform(0, 1, 10)) for _ in range(3)],
     {"labels": ["Line A", "Line B", "Line C"], "legend": True}),
    (lambda r: r.uniform(0, 1, (3, 5)), {"x_values": [0, 2, 4, 6, 8], "title": "My CKA Trend",
                                          "markers": ["o"], "legend": True}),
    (lambda r: r.uniform(0, 1, (12, 4)), {"color_overflow": "variant", "grid": False,
                                           "ylim": None}),
    (lambda r: r.uniform(0, 1, (2, 6)), {"show_range": True,
                                          "range_values": 0.05 * np.ones(6)}),
    (lambda r: r.uniform(0.2, 0.8, (2, 6)), {"show_range": True,
                                              "range_values": (np.zeros(6), np.ones(6))}),
])
def test_trend_as_original(rng, values, kw):
    v = values(rng)
    (fa, aa), (fo, ao) = _both("plot_cka_trend", v, **kw)
    _same(fa, fo)
    if "x_values" in kw:
        assert list(aa.lines[0].get_xdata()) == kw["x_values"]


def test_trend_with_range_and_layer_trend_as_original(rng):
    runs = rng.uniform(0, 1, (2, 5, 7))
    runs[0, 1, 3] = np.nan
    (fa, _), (fo, _) = _both("plot_cka_trend_with_range", runs, labels=["p", "q"],
                             legend=True)
    _same(fa, fo)
    mats = [torch.tensor(rng.uniform(0, 1, (4, 4))) for _ in range(2)]
    layers = ["m.layer1", "m.layer2", "m.layer3", "m.layer4"]
    (fa, aa), (fo, _) = _both("plot_cka_layer_trend", mats, layers=layers,
                              labels=["loader 1", "loader 2"], layer_name_depth=1,
                              title="Across Layers", legend=True)
    _same(fa, fo)
    assert [t.get_text() for t in aa.get_xticklabels()] == ["layer1", "layer2", "layer3",
                                                            "layer4"]
    np.testing.assert_array_equal(aa.lines[1].get_ydata(), np.diag(mats[1].numpy()))


def test_bad_inputs_name_the_argument(rng):
    with pytest.raises(ValueError, match="cka_matrix must be 2-D"):
        viz.plot_cka_heatmap(np.zeros(3))
    with pytest.raises(ValueError, match="layers1 has 2 names"):
        viz.plot_cka_heatmap(np.zeros((3, 3)), layers1=["a", "b"])
    with pytest.raises(ValueError, match="same length"):
        viz.plot_cka_trend([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="requires range_values"):
        viz.plot_cka_trend(np.zeros(3), show_range=True)
    with pytest.raises(ValueError, match="2D or 3D"):
        viz.plot_cka_trend_with_range(np.zeros(3))
    with pytest.raises(ValueError, match="layers length"):
        viz.plot_cka_layer_trend(np.zeros((3, 3)), layers=["a"])
    with pytest.raises(ValueError, match="titles has 1"):
        viz.plot_cka_comparison([np.zeros((2, 2))] * 2, ["a"])


def test_grid_false_means_no_grid(rng):
    """The original's ``ax.grid(False, linestyle=...)`` turns the grid on (matplotlib enables
    it when line properties are given); here grid=False has no grid lines."""
    (fa, aa), (fo, ao) = _both("plot_cka_trend", rng.uniform(0, 1, 5), grid=False)
    assert not any(g.get_visible() for g in aa.xaxis.get_gridlines())
    assert all(g.get_visible() for g in ao.xaxis.get_gridlines())
    fa, aa = viz.plot_cka_trend(rng.uniform(0, 1, 5))
    assert aa.xaxis.get_gridlines()[0].get_visible()


def test_comparison_keeps_constrained_layout(rng):
    import warnings
    mats = [rng.uniform(0, 1, (3, 3)) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # no "layout has changed to tight"
        fig, _ = viz.plot_cka_comparison(mats, ["a", "b", "c"])
    assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
    fig, _ = viz.plot_cka_comparison(mats, ["a", "b", "c"], share_colorbar=False)
    assert type(fig.get_layout_engine()).__name__ != "ConstrainedLayoutEngine"
