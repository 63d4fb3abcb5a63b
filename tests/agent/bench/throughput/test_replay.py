"""The decision replay (agent/bench/throughput/replay.py)."""

from __future__ import annotations

from agent.bench.throughput.replay import replay_decisions, tcp_packet
from tests.builders import (
    cluster,
    make_namespace,
    make_pod,
    make_policy,
    peer,
    port,
    rule,
    selector,
)


def test_replayed_packets_parse_as_built() -> None:
    from enforcement.packets import parse_packet

    info = parse_packet(tcp_packet("10.0.0.1", "10.0.0.2", 40000, 5201, 0x02, payload=100))
    assert (info.family, info.protocol, info.src_port, info.dst_port) == (4, 6, 40000, 5201)
    assert info.tcp_flags == 0x02 and info.length == 140


def test_replay_times_allowed_decisions() -> None:
    snapshot = cluster(
        make_namespace("bench"),
        make_pod("bench", "client", "10.244.1.2", {"role": "client"}),
        make_pod("bench", "server", "10.244.1.3", {"role": "server"}),
        make_policy(
            "bench",
            "p",
            selector(role="server"),
            ingress=[rule(peer(pods=selector(role="client")), ports=[port(5201)])],
        ),
    )
    times = replay_decisions(snapshot, "node-1", "10.244.1.2", "10.244.1.3", 5201, 200)
    assert set(times) == {"first", "established"}
    for result in times.values():
        assert result.samples == 200
        assert 0 < result.p50 <= result.p99
