"""The example scripts run end to end at tiny sizes (untrained demo models, few samples):
they are built on the public API, so this catches API drift. Numbers are checked in the
other test_analysis_* files."""
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytest.importorskip("sklearn", reason="the examples use scikit-learn's digits")


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _main(name):
    import importlib
    return importlib.import_module(name).main


@pytest.mark.parametrize("script,args,outputs", [
    ("vit_vs_cnn", ["--epochs", "0", "--samples", "64", "--batch-size", "32"],
     ["vit_vs_vit.png", "cnn_vs_cnn.json", "vit_vs_cnn.png", "summary.json", "summary.png"]),
    ("trajectories", ["--epochs", "0", "--samples", "48", "--batch-size", "24",
                      "--models", "demo:vit", "demo:resnet"],
     ["trajectory.png", "image_statistics.png", "imbalance.png", "summary.json"]),
    ("consistency", ["--samples", "40", "--n-boot", "20", "--models", "demo:vit", "demo:vit",
                     "demo:resnet", "--epochs", "0", "0", "0"],
     ["consistency.png", "model_similarity.png", "summary.json"]),
    ("concept_alignment", ["--epochs", "0", "--samples", "60", "--concepts", "4"],
     ["concept_alignment.png", "summary.json"]),
    ("neuron_labels", ["--epochs", "0", "--samples", "60", "--method", "wpmi", "--top-k", "10"],
     ["neuron_labels.png", "summary.json"]),
])
def test_example_runs(tmp_path, script, args, outputs):
    _main(script)(args + ["--out", str(tmp_path)])
    for f in outputs:
        assert (tmp_path / f).stat().st_size > 0, f
    json.loads((tmp_path / "summary.json").read_text())


@pytest.mark.parametrize("script", ["vit_vs_cnn", "trajectories", "consistency",
                                    "concept_alignment", "neuron_labels"])
def test_example_options_have_help_and_defaults(script, monkeypatch, capsys):
    import argparse
    seen = []

    def capture(self, argv=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        _main(script)([])
    (parser,) = seen
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0]
        assert action.help, f"{script} {name}: no help text"
        shown = parser._get_formatter()._get_help_string(action) % {
            "default": action.default}
        assert "default" in shown, f"{script} {name}: no default said ({shown!r})"
