"""What the throughput benchmark is (agent/bench/throughput/config.py): settings, figures per
configuration, the lab manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bench.throughput.config import (
    FIGURES,
    MANIFEST,
    MODE_FIGURES,
    MODES,
    BenchError,
    Settings,
)


@pytest.mark.parametrize(
    ("quick", "rounds", "seconds", "expected"),
    [
        pytest.param(False, None, None, (3, 3), id="default"),
        pytest.param(True, None, None, (1, 1), id="quick"),
        pytest.param(True, 2, None, (2, 1), id="quick-two-rounds"),
        pytest.param(False, None, 5, (3, 5), id="longer-loads"),
    ],
)
def test_settings(
    quick: bool, rounds: int | None, seconds: int | None, expected: tuple[int, int]
) -> None:
    settings = Settings.from_args(quick, rounds, seconds)
    assert (settings.rounds, settings.seconds) == expected
    assert settings.quick is quick


@pytest.mark.parametrize(("rounds", "seconds"), [(0, None), (None, 0)])
def test_settings_refuse_nonsense(rounds: int | None, seconds: int | None) -> None:
    with pytest.raises(BenchError, match="at least 1"):
        Settings.from_args(False, rounds, seconds)


def test_every_mode_has_its_figures() -> None:
    assert set(MODE_FIGURES) == set(MODES)
    keys = {figure.key for figure in FIGURES}
    assert all(set(figures) <= keys for figures in MODE_FIGURES.values())


def test_the_lab_manifest_is_valid(tmp_path: Path) -> None:
    from agent.manifests import load_manifests

    path = tmp_path / "bench.yaml"
    path.write_text(MANIFEST)
    kinds = [manifest.obj["kind"] for manifest in load_manifests([str(path)])]
    assert kinds == ["Namespace", "Pod", "Pod", "Pod", "NetworkPolicy"]
