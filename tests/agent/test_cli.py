"""The ``netpol-agent`` command line: options of ``run`` parsed as the daemon needs them."""

from __future__ import annotations

import pytest

from agent.cli import build_parser


def run_args(*args: str) -> list[str]:
    return ["run", "--node-name", "node-1", *args]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], [], id="none-the-node-gives-them"),
        pytest.param(["10.244.1.0/24"], ["10.244.1.0/24"], id="ipv4"),
        pytest.param(
            ["10.244.1.0/24", "fd00:10:244:1::/64"],
            ["10.244.1.0/24", "fd00:10:244:1::/64"],
            id="dual-stack",
        ),
        pytest.param(["FD00:10:244:1:0::/64"], ["fd00:10:244:1::/64"], id="normalised"),
        pytest.param([" 10.244.0.0/16"], ["10.244.0.0/16"], id="blank-stripped"),
    ],
)
def test_pod_cidr_values(values: list[str], expected: list[str]) -> None:
    args = [arg for value in values for arg in ("--pod-cidr", value)]
    assert build_parser().parse_args(run_args(*args)).pod_cidr == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("10.244.1.5/24", "has host bits set", id="host-bits"),
        pytest.param("10.244.1.0/33", "not a network in CIDR notation", id="prefix-too-long"),
        pytest.param("pods", "not a network in CIDR notation", id="garbage"),
        pytest.param("0.0.0.0/0", "covers every address", id="whole-ipv4-space"),
        pytest.param("::/0", "covers every address", id="whole-ipv6-space"),
    ],
)
def test_a_bad_pod_cidr_is_refused_with_a_clear_message(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(run_args("--pod-cidr", value))
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--pod-cidr" in error and message in error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent-the-source-default"),
        pytest.param("0.2", 0.2, id="fraction"),
        pytest.param("300", 300.0, id="whole"),
    ],
)
def test_discovery_interval_values(value: str | None, expected: float | None) -> None:
    args = [] if value is None else ["--discovery-interval", value]
    assert build_parser().parse_args(run_args(*args)).discovery_interval == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("0", "finite number above 0", id="zero"),
        pytest.param("-1", "finite number above 0", id="negative"),
        pytest.param("inf", "finite number above 0", id="infinite"),
        pytest.param("nan", "finite number above 0", id="nan"),
        pytest.param("soon", "not a number of seconds", id="garbage"),
    ],
)
def test_a_bad_discovery_interval_is_refused(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(run_args("--discovery-interval", value))
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--discovery-interval" in error and message in error


def test_version_is_the_package_s(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"netpol-agent {metadata.version('netpol-agent')}\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param((), False, id="off-by-default"),
        pytest.param(("--policy-metrics",), True, id="on"),
    ],
)
def test_policy_metrics_flag(args: tuple[str, ...], expected: bool) -> None:
    assert build_parser().parse_args(run_args(*args)).policy_metrics is expected
