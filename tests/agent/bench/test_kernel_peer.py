"""The kernel peer (agent/bench/kernel_peer.py): rendered rules, and real packets in a lab.

The unit tests read the rendered ``iptables-restore`` payload; the root test builds a lab without
an agent, installs the kernel peer's rules in its node namespace after every change, probes the
pod matrix and compares it with the upstream e2e expectations (``tests/e2e/netpol_cases.py``,
the same ones the agent passes) and with what the compiled allow tables decide for each pair.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from agent.bench.kernel_peer import (
    MARK_ALLOW,
    KernelPeerConfig,
    KernelPeerRules,
    compile_kernel_peer,
    kernel_peer_rules,
)
from enforcement.compiler import compile_tables
from enforcement.decide import ACCEPTING
from enforcement.firewall import MARK_MASK
from enforcement.model import (
    PROTOCOL_NUMBERS,
    ClusterSnapshot,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
)
from tests.builders import (
    cluster,
    expr,
    make_namespace,
    make_pod,
    make_policy,
    peer,
    port,
    rule,
    selector,
)
from tests.e2e.test_netpol_cases_lab import LabCluster

MARK = f"0x{MARK_ALLOW:x}"


def test_the_allow_mark_is_one_bit_clear_of_the_agents_marks() -> None:
    # The agent ORs MARK_MASK bits into packets and connmarks; a shared bit would let one
    # enforcer's mark read as the other's.
    assert MARK_ALLOW & MARK_MASK == 0
    assert MARK_ALLOW.bit_count() == 1
    assert MARK_ALLOW <= 0xFFFF_FFFF
    assert MARK_ALLOW & 0xFF00 == 0  # kube-proxy's 0x4000/0x8000, Cilium's 0x0f00


def server_cluster(
    *policies: NetworkPolicy, server_ports: list[tuple[str, int]] | None = None
) -> list[Namespace | Pod | NetworkPolicy]:
    """prod/server and prod/client on node-1, dev/tester on node-2, and ``policies``."""
    return [
        make_namespace("prod", team="a"),
        make_namespace("dev", team="b"),
        make_pod("prod", "server", "10.244.1.10", {"app": "server"}, server_ports or []),
        make_pod("prod", "client", "10.244.1.11", {"app": "client"}),
        make_pod("dev", "tester", "10.244.2.12", {"app": "client"}, node="node-2"),
        *policies,
    ]


def rules_of(snapshot: ClusterSnapshot, family: int = 4) -> KernelPeerRules:
    return compile_kernel_peer(snapshot, "node-1", 4 if family == 4 else 6)


def chain_lines(rules: KernelPeerRules, chain: str) -> list[str]:
    return [line for line in rules.rules if line.startswith(f"-A {chain} ")]


def test_no_policy_only_the_established_shortcut() -> None:
    rules = rules_of(cluster(*server_cluster()))
    assert rules.chains == ("KPEER-FORWARD", "KPEER-INPUT")
    assert rules.rules == (
        "-A KPEER-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A KPEER-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )
    assert rules.jumps == (("FORWARD", "KPEER-FORWARD"), ("INPUT", "KPEER-INPUT"))


def test_deny_all_ingress_is_a_chain_that_only_drops() -> None:
    deny = make_policy("prod", "deny", selector(app="server"), ingress=[])
    rules = rules_of(cluster(*server_cluster(deny)))
    # Local pods are numbered in key order: prod/client 0, prod/server 1.
    assert (
        '-A KPEER-FORWARD -d 10.244.1.10/32 -m comment --comment "prod/server ingress" '
        "-j KPEER-I-1" in rules.rules
    )
    assert chain_lines(rules, "KPEER-I-1") == ["-A KPEER-I-1 -j DROP"]
    assert not any("-s 10.244.1.10" in line for line in rules.rules)


def test_install_and_removal_payloads() -> None:
    deny = make_policy("prod", "deny", selector(app="server"), ingress=[])
    rules = rules_of(cluster(*server_cluster(deny)))
    install = rules.install_payload().splitlines()
    assert install[0] == "*filter"
    assert install[1:4] == [":KPEER-FORWARD - [0:0]", ":KPEER-INPUT - [0:0]", ":KPEER-I-1 - [0:0]"]
    assert install[-3:] == ["-I FORWARD 1 -j KPEER-FORWARD", "-I INPUT 1 -j KPEER-INPUT", "COMMIT"]
    removal = rules.removal_payload().splitlines()
    assert removal == [
        "*filter",
        "-D FORWARD -j KPEER-FORWARD",
        "-D INPUT -j KPEER-INPUT",
        ":KPEER-FORWARD - [0:0]",
        ":KPEER-INPUT - [0:0]",
        ":KPEER-I-1 - [0:0]",
        "-X KPEER-FORWARD",
        "-X KPEER-INPUT",
        "-X KPEER-I-1",
        "COMMIT",
    ]
    assert rules.restore_command == "iptables-restore"


def test_pod_selector_peers_expand_to_addresses_of_every_node() -> None:
    allow = make_policy(
        "prod",
        "from-clients",
        selector(app="server"),
        ingress=[rule(peer(pods=selector(app="client"), namespaces=selector()), ports=[port(80)])],
    )
    rules = rules_of(cluster(*server_cluster(allow)))
    assert chain_lines(rules, "KPEER-I-1") == [
        # Peers in key order: dev/tester (node-2), then prod/client.
        "-A KPEER-I-1 -s 10.244.2.12/32 -p tcp -m tcp --dport 80 -j RETURN",
        "-A KPEER-I-1 -s 10.244.1.11/32 -p tcp -m tcp --dport 80 -j RETURN",
        "-A KPEER-I-1 -j DROP",
    ]


@pytest.mark.parametrize(
    ("peer_spec", "sources"),
    [
        pytest.param(peer(pods=selector(app="client")), ["10.244.1.11"], id="pods-own-namespace"),
        pytest.param(peer(namespaces=selector(team="b")), ["10.244.2.12"], id="namespace-only"),
        pytest.param(
            peer(pods=selector(app="client"), namespaces=selector(team="a")),
            ["10.244.1.11"],
            id="pods-and-namespace",
        ),
        pytest.param(
            peer(namespaces=selector(expr("team", "NotIn", "a"))),
            ["10.244.2.12"],
            id="namespace-expression",
        ),
        pytest.param(
            peer(namespaces=selector(labels={"kubernetes.io/metadata.name": "dev"})),
            ["10.244.2.12"],
            id="namespace-name-label",
        ),
        pytest.param(
            peer(pods=selector(app="nobody"), namespaces=selector()), [], id="selects-nothing"
        ),
    ],
)
def test_selector_peers(peer_spec: Peer, sources: list[str]) -> None:
    allow = make_policy("prod", "p", selector(app="server"), ingress=[rule(peer_spec)])
    rules = rules_of(cluster(*server_cluster(allow)))
    expected = [f"-A KPEER-I-1 -s {source}/32 -j RETURN" for source in sources]
    assert chain_lines(rules, "KPEER-I-1") == [*expected, "-A KPEER-I-1 -j DROP"]


@pytest.mark.parametrize(
    ("ports", "matches"),
    [
        pytest.param([], [""], id="no-ports-every-protocol"),
        pytest.param([port(53, "UDP")], ["-p udp -m udp --dport 53 "], id="udp"),
        pytest.param([port(protocol="UDP")], ["-p udp "], id="every-udp-port"),
        pytest.param([port(1000, end=2000)], ["-p tcp -m tcp --dport 1000:2000 "], id="range"),
        pytest.param([port(80, end=80)], ["-p tcp -m tcp --dport 80 "], id="range-of-one"),
        pytest.param([port(9, "SCTP")], ["-p sctp -m sctp --dport 9 "], id="sctp"),
        pytest.param(
            [port(80), port(443)],
            ["-p tcp -m tcp --dport 80 ", "-p tcp -m tcp --dport 443 "],
            id="two-ports",
        ),
    ],
)
def test_ports(ports: list[PolicyPort], matches: list[str]) -> None:
    allow = make_policy("prod", "p", selector(app="server"), ingress=[rule(ports=ports)])
    rules = rules_of(cluster(*server_cluster(allow)))
    expected = [f"-A KPEER-I-1 {match}-j RETURN" for match in matches]
    assert chain_lines(rules, "KPEER-I-1") == [*expected, "-A KPEER-I-1 -j DROP"]


def test_ingress_named_port_resolves_on_the_subject() -> None:
    allow = make_policy("prod", "p", selector(), ingress=[rule(ports=[port("http")])])
    snapshot = cluster(*server_cluster(allow, server_ports=[("http", 8080)]))
    rules = rules_of(snapshot)
    # The server declares http as 8080; the client declares no such port: nothing opens for it.
    assert chain_lines(rules, "KPEER-I-1") == [
        "-A KPEER-I-1 -p tcp -m tcp --dport 8080 -j RETURN",
        "-A KPEER-I-1 -j DROP",
    ]
    assert chain_lines(rules, "KPEER-I-0") == ["-A KPEER-I-0 -j DROP"]


def test_egress_named_port_resolves_on_each_destination() -> None:
    egress = make_policy(
        "prod",
        "out",
        selector(app="client"),
        egress=[rule(peer(namespaces=selector()), ports=[port("web")])],
    )
    objects: list[Namespace | Pod | NetworkPolicy] = [
        make_namespace("prod"),
        make_pod("prod", "client", "10.244.1.11", {"app": "client"}),
        make_pod("prod", "one", "10.244.1.20", ports=[("web", 8080)]),
        make_pod("prod", "two", "10.244.2.21", ports=[("web", 9090)], node="node-2"),
        make_pod("prod", "three", "10.244.2.22", ports=[("other", 80)], node="node-2"),
        egress,
    ]
    rules = rules_of(cluster(*objects))
    assert chain_lines(rules, "KPEER-E-0") == [
        "-A KPEER-E-0 -d 10.244.1.20/32 -p tcp -m tcp --dport 8080 -j RETURN",
        "-A KPEER-E-0 -d 10.244.2.21/32 -p tcp -m tcp --dport 9090 -j RETURN",
        "-A KPEER-E-0 -j DROP",
    ]
    # Egress is checked in FORWARD (to pods and beyond) and INPUT (to the node), egress first.
    jumps = [line for line in rules.rules if "-j KPEER-E-0" in line]
    assert [line.split()[1] for line in jumps] == ["KPEER-FORWARD", "KPEER-INPUT"]
    assert all("-s 10.244.1.11/32" in line for line in jumps)


def test_egress_named_port_towards_an_ip_block_expands_to_the_pods_inside() -> None:
    egress = make_policy(
        "prod",
        "out",
        selector(app="client"),
        egress=[
            rule(
                peer(cidr="10.244.0.0/16", excepts=["10.244.2.0/24"]),
                ports=[port("web"), port(443)],
            )
        ],
    )
    objects: list[Namespace | Pod | NetworkPolicy] = [
        make_namespace("prod"),
        make_pod("prod", "client", "10.244.1.11", {"app": "client"}),
        make_pod("prod", "one", "10.244.1.20", ports=[("web", 8080)]),
        make_pod("prod", "two", "10.244.2.21", ports=[("web", 9090)], node="node-2"),
        egress,
    ]
    rules = rules_of(cluster(*objects))
    assert chain_lines(rules, "KPEER-E-0") == [
        f"-A KPEER-E-0 -j MARK --set-xmark 0x0/{MARK}",
        "-A KPEER-E-0 -d 10.244.0.0/16 -p tcp -m tcp --dport 443 -j KPEER-X-0",
        f"-A KPEER-E-0 -m mark --mark {MARK}/{MARK} -j RETURN",
        # The named port only where the pod inside the block (and outside the except) has it.
        "-A KPEER-E-0 -d 10.244.1.20/32 -p tcp -m tcp --dport 8080 -j RETURN",
        "-A KPEER-E-0 -j DROP",
    ]
    assert chain_lines(rules, "KPEER-X-0") == [
        "-A KPEER-X-0 -d 10.244.2.0/24 -j RETURN",
        f"-A KPEER-X-0 -j MARK --set-xmark {MARK}/{MARK}",
    ]


def test_ip_block_with_except_and_two_ports_checks_the_mark_after_each_jump() -> None:
    allow = make_policy(
        "prod",
        "p",
        selector(app="server"),
        ingress=[
            rule(peer(cidr="10.0.0.0/8", excepts=["10.244.2.0/24"]), ports=[port(80), port(81)]),
            rule(peer(cidr="10.0.0.0/8", excepts=["10.244.2.0/24"]), ports=[port(80)]),
        ],
    )
    rules = rules_of(cluster(*server_cluster(allow)))
    assert chain_lines(rules, "KPEER-I-1") == [
        f"-A KPEER-I-1 -j MARK --set-xmark 0x0/{MARK}",
        "-A KPEER-I-1 -s 10.0.0.0/8 -p tcp -m tcp --dport 80 -j KPEER-X-0",
        f"-A KPEER-I-1 -m mark --mark {MARK}/{MARK} -j RETURN",
        "-A KPEER-I-1 -s 10.0.0.0/8 -p tcp -m tcp --dport 81 -j KPEER-X-0",
        f"-A KPEER-I-1 -m mark --mark {MARK}/{MARK} -j RETURN",
        "-A KPEER-I-1 -j DROP",
    ]
    assert rules.chains.count("KPEER-X-0") == 1


def test_ip_block_without_except_is_a_plain_rule() -> None:
    allow = make_policy(
        "prod", "p", selector(app="server"), ingress=[rule(peer(cidr="192.0.2.0/24"))]
    )
    rules = rules_of(cluster(*server_cluster(allow)))
    assert chain_lines(rules, "KPEER-I-1") == [
        "-A KPEER-I-1 -s 192.0.2.0/24 -j RETURN",
        "-A KPEER-I-1 -j DROP",
    ]


def test_union_of_policies_and_other_namespaces_do_not_select() -> None:
    first = make_policy("prod", "a", selector(app="server"), ingress=[rule(ports=[port(80)])])
    second = make_policy("prod", "b", selector(), ingress=[rule(ports=[port(81)])])
    elsewhere = make_policy("dev", "c", selector(), ingress=[])
    rules = rules_of(cluster(*server_cluster(first, second, elsewhere)))
    assert chain_lines(rules, "KPEER-I-1") == [
        "-A KPEER-I-1 -p tcp -m tcp --dport 80 -j RETURN",
        "-A KPEER-I-1 -p tcp -m tcp --dport 81 -j RETURN",
        "-A KPEER-I-1 -j DROP",
    ]
    # The same allowance twice is one rule; the remote dev pod gets no chain on node-1.
    assert "KPEER-I-2" not in rules.chains


def test_egress_and_ingress_of_one_pod_and_hook_order() -> None:
    both = make_policy(
        "prod",
        "both",
        selector(app="server"),
        ingress=[rule(peer(pods=selector(app="client")))],
        egress=[rule(ports=[port(53, "UDP")])],
    )
    rules = rules_of(cluster(*server_cluster(both)))
    forward = chain_lines(rules, "KPEER-FORWARD")
    assert [line.rsplit(" ", 1)[1] for line in forward] == ["ACCEPT", "KPEER-E-1", "KPEER-I-1"]
    assert chain_lines(rules, "KPEER-E-1") == [
        "-A KPEER-E-1 -p udp -m udp --dport 53 -j RETURN",
        "-A KPEER-E-1 -j DROP",
    ]


def test_host_network_pods_and_pods_without_addresses_are_ignored() -> None:
    deny = make_policy("prod", "deny", selector(), ingress=[rule(peer(pods=selector()))])
    objects: list[Namespace | Pod | NetworkPolicy] = [
        make_namespace("prod"),
        make_pod("prod", "web", "10.244.1.10"),
        make_pod("prod", "host", "172.18.0.2", host_network=True),
        make_pod("prod", "pending", None),
        deny,
    ]
    rules = rules_of(cluster(*objects))
    assert rules.chains == ("KPEER-FORWARD", "KPEER-INPUT", "KPEER-I-0")
    assert chain_lines(rules, "KPEER-I-0") == [
        "-A KPEER-I-0 -s 10.244.1.10/32 -j RETURN",
        "-A KPEER-I-0 -j DROP",
    ]


def test_ipv6_rules_use_ipv6_addresses_and_pass_neighbour_discovery() -> None:
    allow = make_policy(
        "prod",
        "p",
        selector(app="server"),
        ingress=[
            rule(peer(pods=selector(app="client"))),
            rule(peer(cidr="192.0.2.0/24")),
            rule(peer(cidr="2001:db8::/64", excepts=["2001:db8::/120"])),
        ],
    )
    objects: list[Namespace | Pod | NetworkPolicy] = [
        make_namespace("prod"),
        make_pod("prod", "server", "10.244.1.10", {"app": "server"}, ipv6="fd00:10:244:1::a"),
        make_pod("prod", "client", "10.244.1.11", {"app": "client"}, ipv6="fd00:10:244:1::b"),
        allow,
    ]
    rules = kernel_peer_rules(cluster(*objects), "node-1")
    v6 = rules[6]
    assert v6.restore_command == "ip6tables-restore"
    assert "-A KPEER-INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT" in v6.rules
    assert chain_lines(v6, "KPEER-I-1") == [
        f"-A KPEER-I-1 -j MARK --set-xmark 0x0/{MARK}",
        "-A KPEER-I-1 -s fd00:10:244:1::b/128 -j RETURN",
        "-A KPEER-I-1 -s 2001:db8::/64 -j KPEER-X-0",
        f"-A KPEER-I-1 -m mark --mark {MARK}/{MARK} -j RETURN",
        "-A KPEER-I-1 -j DROP",
    ]
    assert chain_lines(rules[4], "KPEER-I-1") == [
        "-A KPEER-I-1 -s 10.244.1.11/32 -j RETURN",
        "-A KPEER-I-1 -s 192.0.2.0/24 -j RETURN",
        "-A KPEER-I-1 -j DROP",
    ]
    assert not any("icmp6" in line for line in rules[4].rules)


def test_config_prefix() -> None:
    deny = make_policy("prod", "deny", selector(app="server"), ingress=[])
    rules = compile_kernel_peer(
        cluster(*server_cluster(deny)), "node-1", 4, KernelPeerConfig(chain_prefix="PEER")
    )
    assert rules.chains == ("PEER-FORWARD", "PEER-INPUT", "PEER-I-1")
    assert all(len(chain) <= 28 for chain in rules.chains)


# -- on real packets ------------------------------------------------------------------------

ROOT_CASES = (
    "default-deny-all-tcp",
    "pod-and-namespace-tcp",
    "namespace-match-expressions-udp",
    "stacked-overlapping-policies-tcp",
    "ingress-named-port-tcp",
    "egress-named-port-udp",
    "updated-namespace-tcp",
    "ingress-and-egress-together-tcp",
    "egress-cidr-except-tcp",
    "cidr-and-except-overlap-udp",
    "any-port-one-protocol-tcp",
    "end-port-80-81-tcp",
)
"""A spread of the upstream cases: selectors, union, named ports both ways, relabelling,
ingress AND egress, ipBlock excepts, protocol without port, ranges."""
IPV6_CASES = ("pod-and-namespace-tcp", "ingress-and-egress-together-tcp")
"""Cases also probed over IPv6 (those without IPv4 ipBlocks)."""


@pytest.fixture(scope="module")
def peer_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    from tests.e2e.labctl import lab_session
    from tests.e2e.netpol_cases import CLUSTER_MANIFEST, PODS

    workdir = tmp_path_factory.mktemp("kernel-peer")
    with lab_session("kpeer", workdir) as lab:
        lab.up(CLUSTER_MANIFEST, extra=["--no-agent"])
        pod_ips = {
            f"{pod['namespace']}/{pod['name']}": next(ip for ip in pod["ips"] if ":" not in ip)
            for pod in lab.pods()
        }
        assert sorted(pod_ips) == sorted(PODS)
        yield LabCluster(lab=lab, nodes=1, pod_ips=pod_ips)


class _Installed:
    """The kernel peer's rules currently installed in a lab's node namespace."""

    def __init__(self, lab_name: str) -> None:
        self.lab_name = lab_name
        self.rules: dict[int, KernelPeerRules] = {}

    def sync(self) -> ClusterSnapshot:
        """Replace the rules with those of the lab's current state; that snapshot."""
        from agent.bench.throughput.lab import snapshot_from_store
        from agent.lab.lab import Lab
        from agent.lab.netns import run

        lab = Lab(self.lab_name)
        node = lab.record().nodes[0]
        snapshot: ClusterSnapshot = snapshot_from_store(lab.store_path)
        self.remove(node.netns)
        for family, rules in kernel_peer_rules(snapshot, node.name).items():
            run(
                [rules.restore_command, "--noflush"],
                netns=node.netns,
                input=rules.install_payload(),
            )
            self.rules[family] = rules
        return snapshot

    def remove(self, netns: str) -> None:
        from agent.lab.netns import run

        for rules in self.rules.values():
            run([rules.restore_command, "--noflush"], netns=netns, input=rules.removal_payload())
        self.rules.clear()


def predicted(
    snapshot: ClusterSnapshot, port: int, protocol: str, family: int
) -> dict[str, dict[str, bool]]:
    """The matrix the agent's compiled tables decide for new connections (one node)."""
    tables = compile_tables(snapshot, "node-1", 1)
    addresses = {pod.key: next(a for a in pod.ips if a.version == family) for pod in snapshot.pods}
    number = {"TCP": PROTOCOL_NUMBERS["TCP"], "UDP": PROTOCOL_NUMBERS["UDP"]}[protocol]
    return {
        source: {
            target: source == target
            or tables.evaluate(addresses[source].packed, addresses[target].packed, number, port)
            in ACCEPTING
            for target in addresses
        }
        for source in addresses
    }


@pytest.mark.root
@pytest.mark.parametrize("case_id", ROOT_CASES)
def test_kernel_peer_enforces_what_the_agent_enforces(peer_lab: LabCluster, case_id: str) -> None:
    from tests.e2e.netpol_cases import CASES, Apply, Delete, Probe

    case = next(case for case in CASES if case.id == case_id)
    installed = _Installed(peer_lab.lab.name)
    snapshot = installed.sync()
    failures = []
    try:
        for number, step in enumerate(case.steps, 1):
            if isinstance(step, Apply):
                peer_lab.apply(step.render(peer_lab.pod_ips))
                snapshot = installed.sync()
            elif isinstance(step, Delete):
                peer_lab.delete(step.render(peer_lab.pod_ips))
                snapshot = installed.sync()
            elif isinstance(step, Probe):
                families = (4, 6) if case_id in IPV6_CASES else (4,)
                for family in families:
                    observed = peer_lab.lab.probe(step.port, step.protocol, family=family)
                    what = f"step {number}: {step.port}/{step.protocol} IPv{family}"
                    difference = step.expected.diff(observed)
                    if difference:
                        failures.append(f"{what}: not as upstream expects\n{difference}")
                    agent = predicted(snapshot, step.port, step.protocol, family)
                    pairs = [
                        f"{source} -> {target}: kernel {observed[source].get(target)}, "
                        f"tables {allowed}"
                        for source, row in agent.items()
                        for target, allowed in row.items()
                        if observed.get(source, {}).get(target) != allowed
                    ]
                    if pairs:
                        failures.append(f"{what}: differs from the tables: {'; '.join(pairs)}")
    finally:
        from agent.lab.lab import Lab

        installed.remove(Lab(peer_lab.lab.name).record().nodes[0].netns)
        peer_lab.reset(case.relabels)
    assert not failures, f"{case.name}:\n" + "\n\n".join(failures)


def test_addresses_in_payload_are_canonical() -> None:
    allow = make_policy(
        "prod", "p", selector(app="server"), ingress=[rule(peer(cidr="10.1.0.0/16"))]
    )
    rules = rules_of(cluster(*server_cluster(allow)))
    for line in rules.rules:
        for token in line.split():
            if "/" in token and token[0].isdigit():
                assert str(ipaddress.ip_network(token)) == token
