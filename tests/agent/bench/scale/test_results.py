"""The scale results and targets (agent/bench/scale/results.py)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from agent.bench.machine import GiB
from agent.bench.scale.results import SizeResult, evaluate_targets
from agent.bench.scale.sizes import TARGET_SIZE, Size


def _result(
    size: Size = TARGET_SIZE,
    compile_s: float | None = 3.0,
    peak: int = 300 * 2**20,
    change_s: float = 2.5,
    decisions: Mapping[int, float] | None = None,
) -> SizeResult:
    result = SizeResult(size, nodes=size.nodes)
    result.compile_s = compile_s
    result.baseline_rss_bytes = 20 * 2**20
    result.peak_rss_bytes = peak
    for kind in ("pod_relabel", "namespace_relabel", "policy_added"):
        result.changes[kind] = [
            {"snapshot_s": 0.003, "compile_s": change_s, "in_force_s": change_s + 0.003}
        ]
    for count, p50 in (decisions or {10: 1.5e-6, 10_000: 1.6e-6}).items():
        result.decisions[count] = {
            "p50_s": p50,
            "p99_s": p50 * 3,
            "mean_s": p50 * 0.8,
            "flows": 1000,
            "rounds": 1,
            "verdicts": {"allowed": 1000},
        }
    return result


def _verdicts(results: list[SizeResult]) -> dict[str, bool | None]:
    return {
        check.name.split(",")[0].split(" (")[0]: check.met for check in evaluate_targets(results)
    }


def test_targets_met_and_not_met() -> None:
    checks = evaluate_targets([_result()])
    met = {check.name: check.met for check in checks}
    assert met == {
        "full compile, 100k pods/10k pol": True,
        "peak memory, 100k pods/10k pol": True,
        "one change in force (pod relabel), 100k pods": False,
        "one change in force (namespace relabel), 100k pods": False,
        "one change in force (policy added), 100k pods": False,
        "decision time, 10k pol / 10 pol (p50)": True,
    }
    change = checks[2]
    assert change.value == pytest.approx(2.503)
    assert "50.1x the limit" in change.note
    assert "not met" in change.render().lower()


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(
            _result(compile_s=12.0, peak=GiB + 1, change_s=0.02),
            {"full compile": False, "peak memory": False, "one change in force": True},
            id="slow-compile-big-memory-fast-change",
        ),
        pytest.param(
            _result(compile_s=10.0, peak=GiB, change_s=0.045),
            {"full compile": True, "peak memory": True, "one change in force": True},
            id="exactly-at-the-limits",
        ),
        pytest.param(
            _result(decisions={10: 1.0e-6, 1_000: 1.1e-6, 10_000: 1.3e-6}),
            {"decision time": False},
            id="decision-ratio-1.3",
        ),
        pytest.param(
            _result(decisions={10: 1.0e-6, 1_000: 1.5e-6}),
            {"decision time": None},
            id="no-10k-policies-no-ratio",
        ),
    ],
)
def test_target_evaluation(result: SizeResult, expected: dict[str, bool | None]) -> None:
    verdicts = _verdicts([result])
    for name, met in expected.items():
        assert verdicts[name] is met, name


def test_targets_not_measured_without_the_target_size() -> None:
    quick = _result(size=Size(10_000, 1_000, 100), decisions={10: 1e-6, 100: 1e-6, 1_000: 1e-6})
    checks = evaluate_targets([quick])
    assert all(check.met is None for check in checks)
    assert all(check.value is None for check in checks)
    assert "needs the 100k pods" in checks[0].note


def test_abandoned_compile_is_not_met_by_at_least_the_timeout() -> None:
    result = _result(compile_s=None)
    result.compile_timeout_s = 300.0
    check = evaluate_targets([result])[0]
    assert check.met is False
    assert check.value == 300.0
    assert "at least 30x" in check.note


def test_decision_ratio_uses_the_largest_size_with_10k_policies() -> None:
    small = _result(size=Size(10_000, 10_000, 100), decisions={10: 1e-6, 10_000: 2e-6})
    large = _result(decisions={10: 1e-6, 10_000: 1.1e-6})
    check = evaluate_targets([small, large])[-1]
    assert check.value == pytest.approx(1.1)
    assert check.met is True
    assert "at 100k pods" in check.note
