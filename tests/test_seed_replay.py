"""tests/conftest.py's ``rng`` fixture: ``FLASHCKA_TEST_SEED`` replays a printed seed."""
import numpy as np
import pytest

from conftest import seed_for_test


def test_printed_seed_is_replayed(monkeypatch, capsys):
    monkeypatch.delenv("FLASHCKA_TEST_SEED", raising=False)
    seed = seed_for_test()
    assert f"FLASHCKA_TEST_SEED={seed}" in capsys.readouterr().out
    monkeypatch.setenv("FLASHCKA_TEST_SEED", str(seed))
    assert seed_for_test() == seed
    a = np.random.default_rng(seed_for_test()).standard_normal(4)
    assert np.array_equal(a, np.random.default_rng(seed).standard_normal(4))


def test_bad_seed_is_refused(monkeypatch):
    monkeypatch.setenv("FLASHCKA_TEST_SEED", "abc")
    with pytest.raises(pytest.UsageError, match="FLASHCKA_TEST_SEED must be an integer"):
        seed_for_test()
