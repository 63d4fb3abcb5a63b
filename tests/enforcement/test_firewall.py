"""The firewall stage: rule rendering (pure) and installing it in a real network namespace."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import pytest

from agent.lab.netns import entered
from enforcement.firewall import (
    CACHE_LIVENESS,
    CACHED_PREFIX,
    LOGGED_COMMENT,
    MARK_ACCEPTED,
    MARK_CACHE,
    MARK_HOST,
    MARK_KERNEL_REPLY,
    MARK_LOGGED,
    MARK_MASK,
    MARK_UNKNOWN,
    OFFERED_COMMENT,
    Family,
    Firewall,
    FirewallConfig,
    Runner,
    render_anti_spoofing,
    render_cache_generation,
    render_jumps,
    render_rules,
    render_set,
    subprocess_runner,
)
from enforcement.nflog import NflogReader
from tests.builders import ip


@pytest.mark.parametrize(
    ("config", "family", "expected_target"),
    [
        pytest.param(FirewallConfig(), 4, "-j NFQUEUE --queue-num 1000\n", id="fail-closed"),
        pytest.param(
            FirewallConfig(fail_open=True),
            4,
            "-j NFQUEUE --queue-num 1000 --queue-bypass\n",
            id="fail-open-bypasses-without-a-listener",
        ),
        pytest.param(
            FirewallConfig(queue_num=7, queue_count=3),
            6,
            "-j NFQUEUE --queue-balance 7:9\n",
            id="balanced-queues",
        ),
    ],
)
def test_rules_queue_to_the_configured_target(
    config: FirewallConfig, family: Family, expected_target: str
) -> None:
    rules = render_rules(config, family)
    assert rules.startswith("*filter\n") and rules.endswith("COMMIT\n")
    assert expected_target in rules
    assert f"--match-set {config.isolated_set(family)} src" in rules


def test_rules_mark_host_traffic_and_kernel_replies() -> None:
    rules = render_rules(FirewallConfig(), 4)
    host_rule = "-A NETPOL-AGENT-OUTPUT -m set --match-set npa-isolated-v4 dst -j MARK"
    assert f"{host_rule} --or-mark 0x{MARK_HOST:x}" in rules
    assert f"--ctdir REPLY -j MARK --or-mark 0x{MARK_KERNEL_REPLY:x}" in rules


def test_unknown_addresses_of_the_pod_ranges_are_queued_marked() -> None:
    config = FirewallConfig(pod_cidrs=("10.244.1.0/24", "fd00:10:244:1::/64"))
    rules = render_rules(config, 4)
    assert (
        "-A NETPOL-AGENT-FORWARD -m set --match-set npa-podcidr-v4 src "
        "-m set ! --match-set npa-local-v4 src -j NETPOL-AGENT-UNKNOWN" in rules
    )
    assert f"-A NETPOL-AGENT-UNKNOWN -j MARK --or-mark 0x{MARK_UNKNOWN:x}" in rules
    assert "npa-podcidr" not in render_rules(FirewallConfig(), 4), "no ranges, no rule"


def test_jumps_only_for_missing_hooks() -> None:
    config = FirewallConfig()
    assert render_jumps(config, ["FORWARD", "INPUT", "OUTPUT"]) == ""
    assert render_jumps(config, ["FORWARD"]) == (
        "*filter\n-I INPUT 1 -j NETPOL-AGENT-INPUT\n-I OUTPUT 1 -j NETPOL-AGENT-OUTPUT\nCOMMIT\n"
    )


SPOOF_CHECKED = FirewallConfig(
    anti_spoofing=True,
    pod_cidrs=("10.244.1.0/24", "fd00:10:244:1::/64"),
    pod_interfaces=("cali+", "tap0"),
)


@pytest.mark.parametrize(
    ("config", "family", "expected"),
    [
        pytest.param(
            SPOOF_CHECKED,
            4,
            "*raw\n"
            ":NETPOL-AGENT-ANTISPOOF - [0:0]\n"
            "-A NETPOL-AGENT-ANTISPOOF -i cali+ -m rpfilter --invert -j DROP\n"
            "-A NETPOL-AGENT-ANTISPOOF -i tap0 -m rpfilter --invert -j DROP\n"
            "-A NETPOL-AGENT-ANTISPOOF -m set --match-set npa-podcidr-v4 src "
            "-m rpfilter --invert -j DROP\n"
            "COMMIT\n",
            id="interfaces-and-pod-range",
        ),
        pytest.param(
            FirewallConfig(anti_spoofing=True, pod_cidrs=("fd00:10:244:1::/64",)),
            6,
            "*raw\n"
            ":NETPOL-AGENT-ANTISPOOF - [0:0]\n"
            "-A NETPOL-AGENT-ANTISPOOF -m set --match-set npa-podcidr-v6 src "
            "-m rpfilter --invert -j DROP\n"
            "COMMIT\n",
            id="pod-range-only",
        ),
        pytest.param(
            FirewallConfig(anti_spoofing=True),
            4,
            "*raw\n"
            ":NETPOL-AGENT-ANTISPOOF - [0:0]\n"
            "-A NETPOL-AGENT-ANTISPOOF -m set --match-set npa-podcidr-v4 src "
            "-m rpfilter --invert -j DROP\n"
            "COMMIT\n",
            id="ranges-learnt-later-fill-the-set",
        ),
    ],
)
def test_anti_spoofing_rules(config: FirewallConfig, family: Family, expected: str) -> None:
    assert render_anti_spoofing(config, family) == expected


@pytest.mark.parametrize(
    ("config", "present", "expected"),
    [
        pytest.param(
            SPOOF_CHECKED,
            [],
            "*raw\n-I PREROUTING 1 -j NETPOL-AGENT-ANTISPOOF\nCOMMIT\n",
            id="missing",
        ),
        pytest.param(SPOOF_CHECKED, ["PREROUTING"], "", id="present"),
        pytest.param(FirewallConfig(), [], "", id="off-no-jump"),
    ],
)
def test_anti_spoofing_jump(config: FirewallConfig, present: list[str], expected: str) -> None:
    assert render_jumps(config, present, "raw") == expected


class CannedRunner:
    """A runner that records commands and answers listings with canned text."""

    def __init__(self, listings: dict[tuple[str, ...], str] | None = None) -> None:
        self.commands: list[tuple[list[str], str | None]] = []
        self.listings = listings or {}

    def __call__(self, argv: Sequence[str], stdin: str | None) -> str:
        self.commands.append((list(argv), stdin))
        return self.listings.get(tuple(argv), "")

    def payloads(self, command: str) -> list[str]:
        return [stdin or "" for argv, stdin in self.commands if argv[0] == command]


def test_install_with_anti_spoofing_writes_the_raw_chain_and_its_jump() -> None:
    run = CannedRunner()
    Firewall(SPOOF_CHECKED, run=run).install()
    restores: tuple[tuple[Family, str], ...] = ((4, "iptables-restore"), (6, "ip6tables-restore"))
    for family, restore in restores:
        payloads = run.payloads(restore)
        assert render_anti_spoofing(SPOOF_CHECKED, family) in payloads
        assert "*raw\n-I PREROUTING 1 -j NETPOL-AGENT-ANTISPOOF\nCOMMIT\n" in payloads


def test_install_without_anti_spoofing_removes_what_an_earlier_run_left() -> None:
    left = "-P PREROUTING ACCEPT\n-N NETPOL-AGENT-ANTISPOOF\n"
    left += "-A PREROUTING -j NETPOL-AGENT-ANTISPOOF\n"
    run = CannedRunner({("iptables", "-t", "raw", "-S"): left})
    Firewall(FirewallConfig(), run=run).install()
    commands = [argv for argv, _stdin in run.commands]
    assert ["iptables", "-t", "raw", "-D", "PREROUTING", "-j", "NETPOL-AGENT-ANTISPOOF"] in commands
    assert ["iptables", "-t", "raw", "-X", "NETPOL-AGENT-ANTISPOOF"] in commands
    assert not any("*raw" in payload for payload in run.payloads("iptables-restore"))
    assert not any(argv[:3] == ["ip6tables", "-t", "raw"] and argv[3] != "-S" for argv in commands)


def test_spoofed_drops_sums_the_drop_counters() -> None:
    listing = (
        "-N NETPOL-AGENT-ANTISPOOF\n"
        "-A NETPOL-AGENT-ANTISPOOF -i np+ -m rpfilter --invert -c 3 180 -j DROP\n"
        "-A NETPOL-AGENT-ANTISPOOF -m set --match-set npa-podcidr-v4 src -m rpfilter --invert "
        "-c 2 120 -j DROP\n"
    )
    command = ("iptables", "-t", "raw", "-S", "NETPOL-AGENT-ANTISPOOF", "-v")
    run = CannedRunner({command: listing})
    assert Firewall(SPOOF_CHECKED, run=run).spoofed_drops() == 5


def test_set_payload_swaps_atomically_and_keeps_one_family() -> None:
    payload = render_set(FirewallConfig(), 4, {ip("10.0.0.2"), ip("fd00::2"), ip("10.0.0.1")})
    lines = payload.splitlines()
    assert lines[2:5] == [
        "flush npa-isolated-v4-new",
        "add npa-isolated-v4-new 10.0.0.1",
        "add npa-isolated-v4-new 10.0.0.2",
    ]
    assert lines[-2:] == ["swap npa-isolated-v4-new npa-isolated-v4", "destroy npa-isolated-v4-new"]


def in_namespace(name: str) -> Runner:
    def run(argv: Sequence[str], stdin: str | None) -> str:
        return subprocess_runner(["ip", "netns", "exec", name, *argv], stdin)

    return run


@pytest.mark.root
def test_install_sync_remove_in_a_namespace(scratch_netns: str) -> None:
    run = in_namespace(scratch_netns)
    firewall = Firewall(FirewallConfig(), run=run)
    firewall.install()
    firewall.install()  # idempotent: no duplicate jumps
    saved = run(["iptables-save"], None)
    assert saved.count("-A FORWARD -j NETPOL-AGENT-FORWARD") == 1
    assert "-j NFQUEUE --queue-num 1000" in saved
    assert "-A NETPOL-AGENT-QUEUE" in run(["ip6tables-save"], None)

    assert firewall.sync(frozenset({ip("10.244.1.2"), ip("fd00:10:244:1::2")}))
    assert not firewall.sync(frozenset({ip("10.244.1.2"), ip("fd00:10:244:1::2")}))
    members = run(["ipset", "list", "npa-isolated-v4"], None)
    assert "10.244.1.2" in members
    assert "fd00:10:244:1::2" in run(["ipset", "list", "npa-isolated-v6"], None)

    firewall.remove()
    assert "NETPOL" not in run(["iptables-save"], None)
    assert "NETPOL" not in run(["ip6tables-save"], None)
    assert "npa-" not in run(["ipset", "list", "-n"], None)


def test_unqueued_first_packets_of_local_pods_are_logged_once_when_asked() -> None:
    assert "NFLOG" not in render_rules(FirewallConfig(), 4)
    rules = render_rules(FirewallConfig(log_unqueued=True), 6).splitlines()
    log = "NETPOL-AGENT-LOG"
    # Last in each hook's chain: only what no earlier rule queued or accepted gets there.
    for hook in ("FORWARD", "INPUT", "OUTPUT"):
        own = [rule for rule in rules if rule.startswith(f"-A NETPOL-AGENT-{hook} ")]
        assert own[-1] == f"-A NETPOL-AGENT-{hook} -m conntrack --ctstate NEW -j {log}"
    logged = f"-m connmark --mark 0x{MARK_LOGGED:x}/0x{MARK_LOGGED:x}"
    assert [rule for rule in rules if rule.startswith(f"-A {log} ")] == [
        f"-A {log} {logged} -j RETURN",
        f"-A {log} -m set --match-set npa-local-v6 src -j CONNMARK --or-mark 0x{MARK_LOGGED:x}",
        f"-A {log} -m set --match-set npa-local-v6 dst -j CONNMARK --or-mark 0x{MARK_LOGGED:x}",
        f"-A {log} {logged} -m comment --comment {OFFERED_COMMENT}",
        f"-A {log} {logged} -m comment --comment {LOGGED_COMMENT} "
        "-j NFLOG --nflog-group 1000 --nflog-size 128",
    ]
    limited = render_rules(FirewallConfig(log_unqueued=True, log_rate=1000), 4)
    assert (
        f"-A {log} {logged} -m limit --limit 1000/second --limit-burst 1000 -m comment "
        f"--comment {LOGGED_COMMENT} -j NFLOG" in limited
    )


@pytest.mark.root
def test_the_log_chain_logs_each_connection_of_a_local_pod_once(scratch_netns: str) -> None:
    """Real packets: an address of the namespace's loopback stands for a local pod nothing
    isolates (the sender's address, 127.0.0.1, for a peer that is no local pod).
    A connection to it is logged by its first packet only (a second datagram of the same
    unanswered UDP flow is still NEW to conntrack), and traffic of no local pod not at all."""
    run = in_namespace(scratch_netns)
    run(["ip", "link", "set", "lo", "up"], None)
    firewall = Firewall(FirewallConfig(log_unqueued=True), run=run)
    firewall.install()
    firewall.sync(frozenset(), frozenset({ip("127.0.0.5")}))
    with entered(scratch_netns):
        reader = NflogReader(firewall.config.log_group, timeout=0.5)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for address, port in (("127.0.0.5", 9001), ("127.0.0.5", 9001), ("127.0.0.2", 9002)):
            sender.sendto(b"x", (address, port))
        seen = []
        while packets := reader.receive():
            seen += [(socket.inet_ntoa(got.packet.dst), got.packet.dst_port) for got in packets]
        assert seen == [("127.0.0.5", 9001)]
    finally:
        sender.close()
        reader.close()
    firewall.remove()
    assert "NETPOL" not in run(["iptables-save"], None)
    assert "NETPOL" not in run(["ip6tables-save"], None)


@pytest.mark.root
def test_the_log_rules_rate_limit_and_count_what_they_hold_back(scratch_netns: str) -> None:
    """With a rate of 1 a second and bursts of 2, six new connections in a moment: two reach
    the agent, four are counted as held back (the flow log's suppressed count)."""
    run = in_namespace(scratch_netns)
    run(["ip", "link", "set", "lo", "up"], None)
    config = FirewallConfig(log_unqueued=True, log_rate=1, log_burst=2)
    firewall = Firewall(config, run=run)
    firewall.install()
    firewall.sync(frozenset(), frozenset({ip("127.0.0.5")}))
    with entered(scratch_netns):
        reader = NflogReader(config.log_group, timeout=0.5)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for port in range(9001, 9007):
            sender.sendto(b"x", ("127.0.0.5", port))
        seen = []
        while packets := reader.receive():
            seen += [got.packet.dst_port for got in packets]
        assert seen == [9001, 9002]
        assert firewall.unlogged() == 4
    finally:
        sender.close()
        reader.close()
        firewall.remove()


@pytest.mark.root
def test_anti_spoofing_installs_survives_ensure_first_and_is_removed(scratch_netns: str) -> None:
    run = in_namespace(scratch_netns)
    firewall = Firewall(SPOOF_CHECKED, run=run)
    firewall.install()
    firewall.install()  # idempotent
    for save in ("iptables-save", "ip6tables-save"):
        raw = run([save, "-t", "raw"], None)
        assert raw.count("-A PREROUTING -j NETPOL-AGENT-ANTISPOOF") == 1, raw
        assert "-A NETPOL-AGENT-ANTISPOOF -i cali+ -m rpfilter --invert -j DROP" in raw
    assert firewall.ensure_first() == []
    run(["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT"], None)
    assert firewall.ensure_first() == ["IPv4/PREROUTING"]
    prerouting = run(["iptables", "-t", "raw", "-S", "PREROUTING"], None).splitlines()
    assert prerouting[1:] == [
        "-A PREROUTING -j NETPOL-AGENT-ANTISPOOF",
        "-A PREROUTING -j ACCEPT",
    ]
    assert firewall.spoofed_drops() == 0

    # A default configuration (as `netpol-agent cleanup` has) removes them too.
    Firewall(FirewallConfig(), run=run).remove()
    for save in ("iptables-save", "ip6tables-save"):
        assert "NETPOL" not in run([save], None)
    assert "npa-" not in run(["ipset", "list", "-n"], None)


@pytest.mark.root
def test_turning_anti_spoofing_off_removes_its_rules(scratch_netns: str) -> None:
    run = in_namespace(scratch_netns)
    Firewall(SPOOF_CHECKED, run=run).install()
    Firewall(FirewallConfig(pod_cidrs=SPOOF_CHECKED.pod_cidrs), run=run).install()
    for save in ("iptables-save", "ip6tables-save"):
        assert "ANTISPOOF" not in run([save], None)
        assert "-A FORWARD -j NETPOL-AGENT-FORWARD" in run([save], None)


@pytest.mark.root
def test_jumps_are_put_back_on_top(scratch_netns: str) -> None:
    run = in_namespace(scratch_netns)
    firewall = Firewall(FirewallConfig(), run=run)
    firewall.install()
    assert firewall.ensure_first() == []
    run(["iptables", "-I", "FORWARD", "1", "-j", "ACCEPT"], None)
    run(["ip6tables", "-I", "OUTPUT", "1", "-j", "ACCEPT"], None)
    assert firewall.ensure_first() == ["IPv4/FORWARD", "IPv6/OUTPUT"]
    forward = [line for line in run(["iptables", "-S", "FORWARD"], None).splitlines()]
    assert forward[1:] == ["-A FORWARD -j NETPOL-AGENT-FORWARD", "-A FORWARD -j ACCEPT"]
    assert firewall.ensure_first() == []


class Recorder:
    """A runner that records commands instead of running them (``-S`` listings are empty)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> str:
        self.calls.append((list(argv), stdin))
        return ""

    def take(self) -> list[tuple[list[str], str | None]]:
        calls, self.calls = self.calls, []
        return calls


def test_pod_cidrs_set_at_runtime_swap_the_set_and_add_the_rules_after_it() -> None:
    recorder = Recorder()
    firewall = Firewall(FirewallConfig(), run=recorder)
    firewall.install()
    recorder.take()

    assert firewall.set_pod_cidrs(["10.244.1.0/24"])
    (ipset, ipset_input), (restore, rules) = recorder.take()
    assert ipset == ["ipset", "restore"] and ipset_input is not None
    assert ipset_input.splitlines()[2:] == [
        "flush npa-podcidr-v4-new",
        "add npa-podcidr-v4-new 10.244.1.0/24",
        "swap npa-podcidr-v4-new npa-podcidr-v4",
        "destroy npa-podcidr-v4-new",
    ]
    assert "hash:net family inet " in ipset_input
    assert restore == ["iptables-restore", "--noflush"]
    assert rules == render_rules(FirewallConfig(pod_cidrs=("10.244.1.0/24",)), 4)
    assert firewall.config.pod_cidrs == ("10.244.1.0/24",)

    assert not firewall.set_pod_cidrs(["10.244.1.0/24"]), "the same ranges: nothing to do"
    assert recorder.take() == []

    # A second family: its own set and chains; IPv4 is left alone.
    assert firewall.set_pod_cidrs(["fd00:10:244:1::/64", "10.244.1.0/24"])
    calls = recorder.take()
    assert [argv for argv, _ in calls] == [["ipset", "restore"], ["ip6tables-restore", "--noflush"]]
    assert "add npa-podcidr-v6-new fd00:10:244:1::/64" in str(calls[0][1])

    # Another IPv4 range: only the set changes, the rules that use it stay as they are.
    assert firewall.set_pod_cidrs(["fd00:10:244:1::/64", "10.244.7.0/24"])
    calls = recorder.take()
    assert [argv for argv, _ in calls] == [["ipset", "restore"]]
    assert "add npa-podcidr-v4-new 10.244.7.0/24" in str(calls[0][1])

    # None left: the set is emptied, then the guard's rules go.
    assert firewall.set_pod_cidrs([])
    calls = recorder.take()
    assert [argv[0] for argv, _ in calls] == [
        "ipset",
        "iptables-restore",
        "ipset",
        "ip6tables-restore",
    ]
    assert "npa-podcidr" not in str(calls[1][1])
    assert firewall.config.pod_cidrs == ()


@pytest.mark.parametrize(
    "cidrs",
    [
        pytest.param(["10.244.1.0/33"], id="prefix-too-long"),
        pytest.param(["10.244.1.5/24"], id="host-bits"),
        pytest.param(["10.244.1.0/24", "garbage"], id="one-bad-of-two"),
    ],
)
def test_malformed_pod_cidrs_are_refused_before_anything_is_written(cidrs: list[str]) -> None:
    recorder = Recorder()
    firewall = Firewall(FirewallConfig(), run=recorder)
    with pytest.raises(ValueError):
        firewall.set_pod_cidrs(cidrs)
    assert recorder.calls == []
    assert firewall.config.pod_cidrs == ()


@pytest.mark.root
def test_pod_cidrs_set_at_runtime_in_a_namespace(scratch_netns: str) -> None:
    run = in_namespace(scratch_netns)
    firewall = Firewall(FirewallConfig(), run=run)
    firewall.install()
    assert "NETPOL-AGENT-UNKNOWN" not in run(["iptables", "-S", "NETPOL-AGENT-FORWARD"], None)

    assert firewall.set_pod_cidrs(["10.244.1.0/24", "fd00:10:244:1::/64"])
    assert "10.244.1.0/24" in run(["ipset", "list", "npa-podcidr-v4"], None)
    assert "fd00:10:244:1::/64" in run(["ipset", "list", "npa-podcidr-v6"], None)
    for command in ("iptables", "ip6tables"):
        forward = run([command, "-S", "NETPOL-AGENT-FORWARD"], None)
        assert "-j NETPOL-AGENT-UNKNOWN" in forward, command

    assert firewall.set_pod_cidrs(["10.244.2.0/24"])
    members = run(["ipset", "list", "npa-podcidr-v4"], None)
    assert "10.244.2.0/24" in members and "10.244.1.0/24" not in members
    assert "fd00" not in run(["ipset", "list", "npa-podcidr-v6"], None)
    assert "NETPOL-AGENT-UNKNOWN" not in run(["ip6tables", "-S", "NETPOL-AGENT-FORWARD"], None)
    assert "npa-podcidr-v4-new" not in run(["ipset", "list", "-n"], None), "staging removed"

    firewall.remove()
    assert "npa-" not in run(["ipset", "list", "-n"], None)
    assert "NETPOL" not in run(["iptables-save"], None)


def test_mark_bits_are_distinct_single_bits_inside_the_mask() -> None:
    bits = [MARK_HOST, MARK_KERNEL_REPLY, MARK_ACCEPTED, MARK_UNKNOWN, MARK_LOGGED, *MARK_CACHE]
    assert all(bit and bit & (bit - 1) == 0 for bit in bits)
    assert len(set(bits)) == len(bits) and sum(bits) == MARK_MASK


def test_the_verdict_cache_admits_new_connections_of_cached_tuples_before_the_queue() -> None:
    config = FirewallConfig()
    rules = render_rules(config, 4).splitlines()
    live = config.live_cache_set(4)
    lookup = f"-m conntrack --ctstate NEW --ctdir ORIGINAL -m set --match-set {live} src,dst,dst"
    for hook in ("FORWARD", "INPUT"):
        chain = config.chain(hook)
        own = [line for line in rules if line.startswith(f"-A {chain} ")]
        cached = own.index(f"-A {chain} {lookup} -j NETPOL-AGENT-CACHED")
        queued = own.index(
            f"-A {chain} -m set --match-set npa-isolated-v4 src -j NETPOL-AGENT-QUEUE"
        )
        assert cached < queued
    # Not for the node's own traffic.
    assert not [
        line for line in rules if line.startswith("-A NETPOL-AGENT-OUTPUT") and live in line
    ]
    assert [line for line in rules if line.startswith("-A NETPOL-AGENT-CACHED")] == [
        f"-A NETPOL-AGENT-CACHED -j MARK --or-mark 0x{MARK_ACCEPTED:x}",
        "-A NETPOL-AGENT-CACHED -j NETPOL-AGENT-ACCEPT",
    ]
    # First packets back from the queue leave their tuple in their generation's set, before
    # the connmark is saved.
    accept = [line for line in rules if line.startswith("-A NETPOL-AGENT-ACCEPT")]
    assert accept[:2] == [
        f"-A NETPOL-AGENT-ACCEPT -m mark --mark 0x{bit:x}/0x{bit:x} -j SET --add-set "
        f"{config.cache_set(4, parity)} src,dst,dst --exist"
        for parity, bit in enumerate(MARK_CACHE)
    ]


def test_cached_connections_are_logged_with_their_prefix_when_a_flow_log_is_on() -> None:
    rules = render_rules(FirewallConfig(log_unqueued=True), 6)
    assert (
        f"-A NETPOL-AGENT-CACHED -m comment --comment {LOGGED_COMMENT} -j NFLOG --nflog-group 1000 "
        f"--nflog-prefix {CACHED_PREFIX}" in rules
    )


@pytest.mark.parametrize(
    "config",
    [FirewallConfig(verdict_cache=False), FirewallConfig(mode="per-packet")],
    ids=["off", "per-packet"],
)
def test_no_cache_rules_when_off_or_per_packet(config: FirewallConfig) -> None:
    rules = render_rules(config, 4)
    assert "cache" not in rules and "CACHED" not in rules


def test_a_generation_flushes_its_parity_set_and_makes_it_the_live_one() -> None:
    config = FirewallConfig()
    payload = render_cache_generation(config, 4, 3).splitlines()
    odd = config.cache_set(4, 3)
    assert odd == config.cache_set(4, 1) != config.cache_set(4, 2)
    assert payload == [
        f"flush {config.live_cache_set(4)}",
        f"flush {odd}",
        f"add {config.live_cache_set(4)} {odd}",
    ]


@pytest.mark.root
def test_the_cache_sets_are_created_switched_and_removed_in_a_namespace(scratch_netns: str) -> None:
    run = in_namespace(scratch_netns)
    firewall = Firewall(FirewallConfig(), run=run)
    firewall.install()
    config = firewall.config
    for generation in (1, 2):
        firewall.cache_generation(generation)
        live = run(["ipset", "list", config.live_cache_set(4)], None)
        assert config.cache_set(4, generation) in live
        assert config.cache_set(4, generation + 1) not in live
    live = run(["ipset", "list", config.live_cache_set(4)], None)
    firewall.keep_cache_alive()  # renews the member's timeout
    assert config.cache_set(4, 2) in run(["ipset", "list", config.live_cache_set(4)], None)
    assert f"timeout {CACHE_LIVENESS}" in live
    firewall.retire_cached_verdicts()
    assert "Members:\n\n" in run(["ipset", "list", config.live_cache_set(6)], None) + "\n"
    firewall.remove()
    assert "cache" not in run(["ipset", "list", "-n"], None)
