"""The examples end to end: each ``examples/*`` directory in a real lab, probed pair by pair.

One lab per example, driven through the ``netpol-agent`` command line like a person following
the example's README: ``lab up`` with cluster.yaml, then for each stage of expected.yaml (in
order of first appearance) ``lab delete`` the policy files the stage no longer lists and
``lab apply`` the new ones, then ``lab probe`` every probe of that stage and compare the matrix
with what expected.yaml says. All mismatches of an example are reported together.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.labctl import lab_session
from tests.examples.expectations import (
    example_directories,
    expected_matrix,
    load_example,
    render_diff,
)

pytestmark = pytest.mark.root


@pytest.mark.parametrize("directory", example_directories(), ids=lambda d: d.name)
def test_example_in_lab(directory: Path, tmp_path: Path) -> None:
    example = load_example(directory)
    failures: list[str] = []
    with lab_session(f"ex{example.name}", tmp_path) as lab:
        lab.up(example.cluster)
        applied: tuple[str, ...] = ()
        for stage in example.stages():
            gone = [name for name in applied if name not in stage]
            new = [name for name in stage if name not in applied]
            if gone:
                lab.delete(*example.stage_paths(gone))
            if new:
                lab.apply(*example.stage_paths(new))
            applied = stage
            for probe in (p for p in example.probes if p.stage == stage):
                actual = lab.probe(
                    probe.port, probe.protocol, family=probe.family, external=probe.external
                )
                expected = expected_matrix(example, probe)
                if actual != expected:
                    failures.append(render_diff(probe, expected, actual))
    assert not failures, f"{example.name}:\n" + "\n\n".join(failures)
