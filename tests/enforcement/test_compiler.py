"""Tests of enforcement/compiler.py: NetworkPolicy semantics, one table row per behaviour.

Every row is also checked against the naive reference evaluator (tests/reference.py), so the
hand-written expectations, the compiled tables and the oracle of the property tests agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from enforcement.compiler import block_ranges, compile_tables, port_match
from enforcement.model import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ClusterSnapshot,
    NetworkPolicy,
    Pod,
    UnreadablePod,
)
from enforcement.verdict import Reason
from tests.builders import (
    METADATA_NAME,
    cluster,
    expr,
    ip,
    make_namespace,
    make_pod,
    make_policy,
    make_unreadable_pod,
    peer,
    port,
    rule,
    selector,
)
from tests.reference import reference_allows

A = Reason.ALLOWED
N = Reason.NOT_ISOLATED
DE = Reason.DENIED_EGRESS
DI = Reason.DENIED_INGRESS
U = Reason.UNKNOWN_ENDPOINT

TCP, UDP, SCTP, ICMP, ICMPV6 = IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMP, IPPROTO_ICMPV6

# The base cluster. Local node is node-1 unless a case says otherwise.
WEB, WEB6 = "10.0.1.1", "fd00::1:1"  # prod/web    app=web tier=front, http=8080
API, API6 = "10.0.1.2", "fd00::1:2"  # prod/api    app=api tier=back,  http=9090, metrics=9100
DB = "10.0.1.3"  # prod/db     app=db, no named ports
BARE = "10.0.1.4"  # prod/bare   no labels
DEV_WEB = "10.0.2.1"  # dev/web     app=web
DEV_TOOL = "10.0.2.2"  # dev/tool    app=tool
PROM = "10.0.3.1"  # mon/prom    app=prom
REMOTE_WEB = "10.0.9.1"  # prod/remote-web app=web, http=8081, on node-2
HOST_POD = "10.1.0.1"  # prod/hostpod app=web, hostNetwork (has the node's address)
OUTSIDE, OUTSIDE6 = "192.0.2.10", "2001:db8::10"
UNREADABLE, UNREADABLE6 = "10.0.8.1", "fd00::8:1"  # prod/bad, an unreadable pod (per case)

BASE = (
    make_namespace("prod", team="a", env="prod"),
    make_namespace("dev", team="b", env="dev"),
    make_namespace("mon", team="ops"),
    make_pod("prod", "web", WEB, {"app": "web", "tier": "front"}, [("http", 8080)], ipv6=WEB6),
    make_pod(
        "prod",
        "api",
        API,
        {"app": "api", "tier": "back"},
        [("http", 9090), ("metrics", 9100), ("dns", 5353, "UDP")],
        ipv6=API6,
    ),
    make_pod("prod", "db", DB, {"app": "db"}),
    make_pod("prod", "bare", BARE),
    make_pod("dev", "web", DEV_WEB, {"app": "web"}),
    make_pod("dev", "tool", DEV_TOOL, {"app": "tool"}),
    make_pod("mon", "prom", PROM, {"app": "prom"}),
    make_pod("prod", "remote-web", REMOTE_WEB, {"app": "web"}, [("http", 8081)], node="node-2"),
    make_pod("prod", "hostpod", HOST_POD, {"app": "web"}, host_network=True),
)


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    expected: Reason
    protocol: int = TCP
    port: int | None = 80

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}:{self.protocol}/{self.port}={self.expected.value}"


def f(src: str, dst: str, expected: Reason, protocol: int = TCP, port: int | None = 80) -> Flow:
    return Flow(src, dst, expected, protocol, port)


@dataclass(frozen=True)
class Case:
    id: str
    snapshot: ClusterSnapshot
    flows: tuple[Flow, ...]
    node: str = "node-1"


def base(
    *policies: NetworkPolicy,
    extra: tuple[Pod, ...] = (),
    unreadable: tuple[UnreadablePod, ...] = (),
) -> ClusterSnapshot:
    return cluster(*BASE, *extra, *policies, *unreadable)


deny_ingress = make_policy("prod", "deny-in", selector())
deny_egress = make_policy("prod", "deny-out", selector(), types=["Egress"])

CASES = [
    Case("empty-snapshot", cluster(), (f(WEB, API, N), f(OUTSIDE6, WEB6, N, ICMPV6, None))),
    Case("no-policies", base(), (f(WEB, API, N), f(OUTSIDE, DB, N), f(WEB, OUTSIDE, N))),
    Case(
        "deny-all-ingress",
        base(deny_ingress),
        (
            f(WEB, API, DI),
            f(DEV_WEB, WEB, DI),
            f(OUTSIDE, WEB, DI),
            f(WEB, DEV_WEB, N),  # egress not isolated, dev not isolated
            f(WEB, OUTSIDE, N),
            f(WEB6, API6, DI),
            f(OUTSIDE, WEB, DI, ICMP, None),
        ),
    ),
    Case(
        "deny-all-ingress-empty-list",
        base(make_policy("prod", "deny-in", selector(), ingress=[])),
        (f(WEB, API, DI), f(OUTSIDE, DB, DI)),
    ),
    Case(
        "allow-all-ingress",
        base(deny_ingress, make_policy("prod", "allow-in", selector(), ingress=[rule()])),
        (
            f(WEB, API, A),
            f(OUTSIDE, DB, A, UDP, 53),
            f(OUTSIDE6, WEB6, A, ICMPV6, None),
            f(DEV_WEB, BARE, A, SCTP, 7),
        ),
    ),
    Case(
        "deny-all-egress",
        base(deny_egress),
        (
            f(WEB, DEV_WEB, DE),
            f(WEB, API, DE),
            f(WEB, OUTSIDE, DE),
            f(WEB6, OUTSIDE6, DE, ICMPV6, None),
            f(DEV_WEB, WEB, N),
        ),
    ),
    Case(
        "allow-all-egress-overrides-deny",
        base(
            deny_egress,
            make_policy("prod", "allow-out", selector(), egress=[rule()], types=["Egress"]),
        ),
        (f(WEB, DEV_WEB, A), f(WEB, OUTSIDE, A, ICMP, None), f(DB, WEB, A)),
    ),
    Case(
        "allow-all-egress-with-defaulted-types-also-denies-ingress",
        base(deny_egress, make_policy("prod", "allow-out", selector(), egress=[rule()])),
        (f(WEB, DEV_WEB, A), f(DB, WEB, DI), f(DEV_WEB, WEB, DI)),
    ),
    Case(
        "default-types-egress-section-isolates-both",
        # No policyTypes and an egress section: Ingress and Egress, with no ingress rules.
        base(
            make_policy("prod", "to-db", selector(), egress=[rule(peer(pods=selector(app="db")))])
        ),
        (f(WEB, DB, DI), f(WEB, API, DE), f(DEV_WEB, WEB, DI), f(DEV_WEB, DB, DI)),
    ),
    Case(
        "explicit-egress-type-leaves-ingress-open",
        base(
            make_policy(
                "prod",
                "to-db",
                selector(),
                egress=[rule(peer(pods=selector(app="db")))],
                types=["Egress"],
            )
        ),
        (f(WEB, DB, A), f(WEB, API, DE), f(DEV_WEB, WEB, N)),
    ),
    Case(
        "ingress-type-only-ignores-egress-rules",
        base(
            make_policy("prod", "in-only", selector(app="web"), egress=[rule()], types=["Ingress"]),
        ),
        (f(WEB, OUTSIDE, N), f(OUTSIDE, WEB, DI)),
    ),
    Case(
        "union-of-policies",
        base(
            make_policy("prod", "a", selector(app="web"), [rule(peer(pods=selector(app="api")))]),
            make_policy("prod", "b", selector(app="web"), [rule(peer(pods=selector(app="db")))]),
        ),
        (f(API, WEB, A), f(DB, WEB, A), f(BARE, WEB, DI), f(DEV_WEB, WEB, DI)),
    ),
    Case(
        "pod-selector-alone-means-own-namespace",
        base(make_policy("prod", "p", selector(app="api"), [rule(peer(pods=selector(app="web")))])),
        (f(WEB, API, A), f(DEV_WEB, API, DI), f(REMOTE_WEB, API, A), f(DB, API, DI)),
    ),
    Case(
        "empty-pod-selector-alone-means-whole-own-namespace",
        base(make_policy("prod", "p", selector(app="api"), [rule(peer(pods=selector()))])),
        (f(WEB, API, A), f(BARE, API, A), f(DEV_WEB, API, DI), f(OUTSIDE, API, DI)),
    ),
    Case(
        "namespace-selector-alone",
        base(
            make_policy(
                "prod", "p", selector(app="api"), [rule(peer(namespaces=selector(team="ops")))]
            )
        ),
        (f(PROM, API, A), f(DEV_TOOL, API, DI), f(WEB, API, DI), f(OUTSIDE, API, DI)),
    ),
    Case(
        "namespace-selector-by-metadata-name",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [rule(peer(namespaces=selector(labels={METADATA_NAME: "dev"})))],
            )
        ),
        (f(DEV_TOOL, API, A), f(DEV_WEB, API, A), f(PROM, API, DI)),
    ),
    Case(
        "pod-and-namespace-selector-anded-in-one-peer",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [rule(peer(pods=selector(app="web"), namespaces=selector(team="b")))],
            )
        ),
        (f(DEV_WEB, API, A), f(DEV_TOOL, API, DI), f(WEB, API, DI)),
    ),
    Case(
        "peers-ored",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [rule(peer(pods=selector(app="web")), peer(namespaces=selector(team="b")))],
            )
        ),
        (f(WEB, API, A), f(DEV_TOOL, API, A), f(DEV_WEB, API, A), f(PROM, API, DI)),
    ),
    Case(
        "all-namespaces-with-pod-selector",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [rule(peer(pods=selector(app="web"), namespaces=selector()))],
            )
        ),
        (f(WEB, API, A), f(DEV_WEB, API, A), f(REMOTE_WEB, API, A), f(DEV_TOOL, API, DI)),
    ),
    Case(
        "all-namespaces-alone-means-every-pod",
        base(make_policy("prod", "p", selector(app="api"), [rule(peer(namespaces=selector()))])),
        (f(WEB, API, A), f(PROM, API, A), f(OUTSIDE, API, DI), f(HOST_POD, API, DI)),
    ),
    Case(
        "match-expressions-in",
        base(make_policy("prod", "p", selector(expr("app", "In", "web", "api")))),
        (f(OUTSIDE, WEB, DI), f(OUTSIDE, API, DI), f(OUTSIDE, DB, N), f(OUTSIDE, BARE, N)),
    ),
    Case(
        "match-expressions-notin-includes-unlabelled",
        base(make_policy("prod", "p", selector(expr("app", "NotIn", "web")))),
        (f(OUTSIDE, WEB, N), f(OUTSIDE, API, DI), f(OUTSIDE, BARE, DI)),
    ),
    Case(
        "match-expressions-exists",
        base(make_policy("prod", "p", selector(expr("tier", "Exists")))),
        (f(OUTSIDE, WEB, DI), f(OUTSIDE, API, DI), f(OUTSIDE, DB, N)),
    ),
    Case(
        "match-expressions-does-not-exist",
        base(make_policy("prod", "p", selector(expr("tier", "DoesNotExist")))),
        (f(OUTSIDE, WEB, N), f(OUTSIDE, DB, DI), f(OUTSIDE, BARE, DI)),
    ),
    Case(
        "match-expressions-and-labels-anded",
        base(make_policy("prod", "p", selector(expr("tier", "Exists"), app="api"))),
        (f(OUTSIDE, WEB, N), f(OUTSIDE, API, DI)),
    ),
    Case(
        "match-expressions-on-namespaces-and-peers",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [
                    rule(peer(namespaces=selector(expr("team", "NotIn", "a", "ops")))),
                    rule(peer(pods=selector(expr("app", "In", "db")))),
                ],
            )
        ),
        (f(DEV_TOOL, API, A), f(DB, API, A), f(PROM, API, DI), f(WEB, API, DI)),
    ),
    Case(
        "ipblock-except-v4",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="web"),
                egress=[rule(peer(cidr="192.0.2.0/24", excepts=["192.0.2.128/25"]))],
                types=["Egress"],
            )
        ),
        (
            f(WEB, OUTSIDE, A),
            f(WEB, "192.0.2.200", DE),
            f(WEB, "192.0.2.127", A),
            f(WEB, "198.51.100.1", DE),
            f(WEB6, OUTSIDE6, DE),  # a v4 block never matches a v6 address
        ),
    ),
    Case(
        "ipblock-except-v6",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="web"),
                egress=[rule(peer(cidr="2001:db8::/32", excepts=["2001:db8:1::/48"]))],
                types=["Egress"],
            )
        ),
        (
            f(WEB6, OUTSIDE6, A),
            f(WEB6, "2001:db8:1::5", DE),
            f(WEB6, "2001:db8:2::5", A),
            f(WEB, OUTSIDE, DE),
        ),
    ),
    Case(
        "ipblock-matches-pod-addresses",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [
                    rule(peer(cidr=f"{WEB}/32")),
                    rule(peer(cidr="10.0.0.0/16", excepts=["10.0.1.0/24", "10.0.2.0/24"])),
                ],
            )
        ),
        (f(WEB, API, A), f(DB, API, DI), f(DEV_WEB, API, DI), f(PROM, API, A), f(OUTSIDE, API, DI)),
    ),
    Case(
        "protocols-tcp-udp-sctp",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [rule(ports=[port(53, "UDP"), port(protocol="SCTP"), port(443)])],
            )
        ),
        (
            f(OUTSIDE, API, A, UDP, 53),
            f(OUTSIDE, API, DI, TCP, 53),
            f(OUTSIDE, API, DI, UDP, 54),
            f(OUTSIDE, API, A, SCTP, 9),
            f(OUTSIDE, API, A, SCTP, 65535),
            f(OUTSIDE, API, A, TCP, 443),
            f(OUTSIDE, API, DI, UDP, 443),
            f(OUTSIDE, API, DI, ICMP, None),
        ),
    ),
    Case(
        "protocol-defaults-to-tcp",
        base(make_policy("prod", "p", selector(app="api"), [rule(ports=[port(80)])])),
        (f(OUTSIDE, API, A, TCP, 80), f(OUTSIDE, API, DI, UDP, 80), f(OUTSIDE, API, DI, SCTP, 80)),
    ),
    Case(
        "end-port-range-inclusive",
        base(make_policy("prod", "p", selector(app="api"), [rule(ports=[port(1000, end=2000)])])),
        (
            f(OUTSIDE, API, DI, TCP, 999),
            f(OUTSIDE, API, A, TCP, 1000),
            f(OUTSIDE, API, A, TCP, 1500),
            f(OUTSIDE, API, A, TCP, 2000),
            f(OUTSIDE, API, DI, TCP, 2001),
            f(OUTSIDE, API, DI, UDP, 1500),
        ),
    ),
    Case(
        "rules-without-ports-allow-icmp-and-fragments",
        base(
            make_policy("prod", "all", selector(app="api"), [rule(peer(pods=selector()))]),
            make_policy(
                "prod", "p80", selector(app="db"), [rule(peer(pods=selector()), ports=[port(80)])]
            ),
        ),
        (
            f(WEB, API, A, ICMP, None),
            f(WEB6, API6, A, ICMPV6, None),
            f(WEB, API, A, TCP, None),  # a non-first fragment
            f(WEB, DB, A, TCP, 80),
            f(WEB, DB, DI, ICMP, None),
            f(WEB, DB, DI, TCP, None),
        ),
    ),
    Case(
        "named-port-ingress-differs-per-pod",
        base(
            make_policy(
                "prod",
                "http",
                selector(expr("app", "In", "web", "api", "db")),
                [rule(ports=[port("http")])],
            )
        ),
        (
            f(OUTSIDE, WEB, A, TCP, 8080),
            f(OUTSIDE, WEB, DI, TCP, 9090),
            f(OUTSIDE, API, A, TCP, 9090),
            f(OUTSIDE, API, DI, TCP, 8080),
            f(OUTSIDE, API, DI, UDP, 9090),  # http is a TCP port
            f(OUTSIDE, DB, DI, TCP, 8080),  # db has no port named http
            f(WEB6, API6, A, TCP, 9090),
        ),
    ),
    Case(
        "named-port-same-labels-different-numbers",
        cluster(
            make_pod("a", "one", "10.7.0.1", {"app": "x"}, [("http", 80)]),
            make_pod("a", "two", "10.7.0.2", {"app": "x"}, [("http", 81)]),
            make_pod("a", "three", "10.7.0.3", {"app": "x"}, [("http", 80, "UDP")]),
            make_policy("a", "p", selector(app="x"), [rule(ports=[port("http")])]),
        ),
        (
            f(OUTSIDE, "10.7.0.1", A, TCP, 80),
            f(OUTSIDE, "10.7.0.1", DI, TCP, 81),
            f(OUTSIDE, "10.7.0.2", A, TCP, 81),
            f(OUTSIDE, "10.7.0.2", DI, TCP, 80),
            f(OUTSIDE, "10.7.0.3", DI, TCP, 80),
            f(OUTSIDE, "10.7.0.3", DI, UDP, 80),  # the rule's http is TCP
        ),
    ),
    Case(
        "named-port-udp",
        base(make_policy("prod", "dns", selector(app="api"), [rule(ports=[port("dns", "UDP")])])),
        (f(OUTSIDE, API, A, UDP, 5353), f(OUTSIDE, API, DI, TCP, 5353)),
    ),
    Case(
        "named-port-egress-differs-per-peer",
        base(
            make_policy(
                "dev",
                "out",
                selector(app="tool"),
                egress=[
                    rule(peer(namespaces=selector(team="a")), ports=[port("http")]),
                    rule(
                        peer(pods=selector(app="web"), namespaces=selector()),
                        ports=[port("metrics")],
                    ),
                ],
                types=["Egress"],
            )
        ),
        (
            f(DEV_TOOL, WEB, A, TCP, 8080),
            f(DEV_TOOL, WEB, DE, TCP, 9090),
            f(DEV_TOOL, API, A, TCP, 9090),
            f(DEV_TOOL, API, DE, TCP, 8080),
            f(DEV_TOOL, DB, DE, TCP, 8080),
            f(DEV_TOOL, REMOTE_WEB, A, TCP, 8081),
            f(DEV_TOOL, REMOTE_WEB, DE, TCP, 8080),
            f(DEV_TOOL, API, DE, TCP, 9100),  # api is not app=web, so no metrics rule
            f(DEV_TOOL, OUTSIDE, DE, TCP, 8080),
        ),
    ),
    Case(
        "named-port-with-ipblock-peer",
        base(
            make_policy(
                "dev",
                "out",
                selector(app="tool"),
                egress=[rule(peer(cidr="0.0.0.0/0"), ports=[port("http")])],
                types=["Egress"],
            ),
            make_policy(
                "prod",
                "in",
                selector(app="api"),
                [rule(peer(cidr="192.0.2.0/24"), ports=[port("http")])],
            ),
        ),
        (
            f(DEV_TOOL, WEB, A, TCP, 8080),  # resolved against the destination pod
            f(DEV_TOOL, API, DE, TCP, 8080),
            f(DEV_TOOL, OUTSIDE, DE, TCP, 8080),  # not a pod: a named port matches nothing
            f(OUTSIDE, API, A, TCP, 9090),
            f(OUTSIDE, API, DI, TCP, 8080),
            f("198.51.100.1", API, DI, TCP, 9090),
        ),
    ),
    Case(
        "host-network-pods-are-not-pods",
        base(
            make_policy("prod", "deny-web", selector(app="web"), ingress=[], egress=[]),
            make_policy("prod", "api", selector(app="api"), [rule(peer(pods=selector(app="web")))]),
            make_policy("prod", "db", selector(app="db"), [rule(peer(cidr="10.1.0.0/24"))]),
        ),
        (
            f(OUTSIDE, HOST_POD, N),  # not selectable, so not isolated
            f(HOST_POD, OUTSIDE, N),
            f(HOST_POD, API, DI),  # not a peer for a pod selector
            f(WEB, API, DE),
            f(HOST_POD, DB, A),  # but an ipBlock matches its (node) address
        ),
    ),
    Case(
        "cross-node-seen-from-node-1",
        base(deny_ingress, deny_egress),
        (
            f(OUTSIDE, REMOTE_WEB, N),  # remote-web is enforced by node-2
            f(REMOTE_WEB, OUTSIDE, N),
            f(WEB, REMOTE_WEB, DE),  # the local source's egress
            f(REMOTE_WEB, WEB, DI),  # the local destination's ingress
        ),
    ),
    Case(
        "cross-node-seen-from-node-2",
        base(
            deny_ingress,
            deny_egress,
            make_policy("prod", "web-out", selector(app="web"), egress=[rule()], types=["Egress"]),
        ),
        (
            f(OUTSIDE, REMOTE_WEB, DI),
            f(REMOTE_WEB, OUTSIDE, A),
            f(WEB, REMOTE_WEB, DI),
            f(REMOTE_WEB, WEB, A),  # web's ingress is node-1's business
            f(WEB, API, N),  # both on node-1
        ),
        node="node-2",
    ),
    Case(
        "remote-pods-are-peers",
        base(
            make_policy(
                "prod",
                "p",
                selector(app="api"),
                [rule(peer(pods=selector(app="web")))],
                [rule(peer(pods=selector(app="web")))],
            )
        ),
        (f(REMOTE_WEB, API, A), f(API, REMOTE_WEB, A), f(API, DEV_WEB, DE)),
    ),
    Case(
        "pods-without-ips-are-ignored",
        base(
            make_policy(
                "prod", "p", selector(app="api"), [rule(peer(pods=selector(app="pending")))]
            ),
            extra=(make_pod("prod", "pending", None, {"app": "pending"}),),
        ),
        (f(WEB, API, DI), f(OUTSIDE, API, DI)),
    ),
    Case(
        "policy-of-other-namespace-does-not-select",
        base(make_policy("dev", "deny", selector(app="web"))),
        (f(OUTSIDE, WEB, N), f(OUTSIDE, DEV_WEB, DI)),
    ),
    Case(
        "both-ends-must-allow",
        base(
            make_policy(
                "prod",
                "web-out",
                selector(app="web"),
                egress=[rule(peer(pods=selector(app="api")), ports=[port(9090)])],
                types=["Egress"],
            ),
            make_policy(
                "prod",
                "api-in",
                selector(app="api"),
                [rule(peer(pods=selector(app="web")), ports=[port("http")])],
            ),
        ),
        (
            f(WEB, API, A, TCP, 9090),
            f(WEB, API, DE, TCP, 9100),
            f(DB, API, DI, TCP, 9090),
            f(WEB, DB, DE, TCP, 9090),
        ),
    ),
    Case(
        "namespace-missing-from-snapshot",
        cluster(
            make_pod("ghost", "a", "10.5.0.1", {"app": "a"}),
            make_pod("ghost", "b", "10.5.0.2", {"app": "b"}),
            make_pod("other", "c", "10.5.0.3", {"app": "c"}),
            make_policy(
                "ghost",
                "p",
                selector(app="a"),
                [rule(peer(namespaces=selector(labels={METADATA_NAME: "ghost"})))],
            ),
        ),
        (f("10.5.0.2", "10.5.0.1", A), f("10.5.0.3", "10.5.0.1", DI)),
    ),
    # Unreadable pods (model.UnreadablePod): unknown endpoints, enforced fail-closed.
    Case(
        "unreadable-local-pod-denied-both-ways-without-policies",
        base(unreadable=(make_unreadable_pod("prod", "bad", UNREADABLE, UNREADABLE6),)),
        (
            f(WEB, UNREADABLE, U),
            f(UNREADABLE, WEB, U),
            f(OUTSIDE, UNREADABLE, U, ICMP, None),
            f(UNREADABLE, OUTSIDE, U, UDP, 53),
            f(WEB6, UNREADABLE6, U),
            f(REMOTE_WEB, UNREADABLE, U),
            f(WEB, API, N),  # nothing else changes
        ),
    ),
    Case(
        "unreadable-local-pod-not-opened-by-allow-all",
        base(
            make_policy("prod", "allow-all", selector(), [rule()], [rule()]),
            unreadable=(make_unreadable_pod("prod", "bad", UNREADABLE),),
        ),
        (f(WEB, UNREADABLE, U), f(UNREADABLE, WEB, U), f(WEB, API, A)),
    ),
    Case(
        "unreadable-pod-on-an-unknown-node-is-local-everywhere",
        base(unreadable=(make_unreadable_pod("prod", "bad", UNREADABLE, node=None),)),
        (f(WEB, UNREADABLE, U), f(UNREADABLE, WEB, U)),
        node="node-2",
    ),
    Case(
        "unreadable-remote-pod-matches-no-selector",
        base(
            make_policy(
                "prod",
                "selectors",
                selector(),
                [
                    rule(peer(pods=selector())),
                    rule(peer(namespaces=selector())),
                    rule(peer(pods=selector(), namespaces=selector(team="a"))),
                    rule(peer(pods=selector(expr("app", "DoesNotExist")))),
                ],
                [rule(peer(namespaces=selector()))],
            ),
            unreadable=(make_unreadable_pod("prod", "bad", UNREADABLE, node="node-2"),),
        ),
        (
            f(UNREADABLE, WEB, DI),
            f(WEB, UNREADABLE, DE),
            f(BARE, WEB, A),  # the same rules admit a readable pod without labels
            f(REMOTE_WEB, WEB, A),
        ),
    ),
    Case(
        "unreadable-remote-pod-matched-by-ipblock",
        base(
            make_policy(
                "prod", "cidr", selector(), [rule(peer(cidr="10.0.8.0/24"), ports=[port(80)])]
            ),
            unreadable=(make_unreadable_pod("prod", "bad", UNREADABLE, node="node-2"),),
        ),
        (f(UNREADABLE, WEB, A), f(UNREADABLE, WEB, DI, TCP, 81), f(BARE, WEB, DI)),
    ),
    Case(
        "unreadable-remote-pod-named-ports-unknown",
        base(
            make_policy("prod", "out", selector(), egress=[rule(ports=[port("http")])]),
            unreadable=(make_unreadable_pod("prod", "bad", UNREADABLE, node="node-2"),),
        ),
        (f(WEB, UNREADABLE, DE, TCP, 8080), f(WEB, REMOTE_WEB, A, TCP, 8081)),
    ),
    Case(
        "address-shared-with-a-local-pod-is-unknown-and-local",
        # A remote unreadable pod claims web's address: in doubt, the address is denied here.
        base(unreadable=(make_unreadable_pod("prod", "bad", WEB, node="node-2"),)),
        (f(WEB, API, U), f(API, WEB, U), f(API, DB, N)),
    ),
    Case(
        "address-shared-with-a-remote-pod-matches-no-selector",
        base(
            make_policy("prod", "from-web", selector(app="api"), [rule(peer(pods=selector()))]),
            unreadable=(make_unreadable_pod("prod", "bad", REMOTE_WEB, node="node-3"),),
        ),
        (f(REMOTE_WEB, API, DI), f(WEB, API, A)),
    ),
]


def _rows() -> list[object]:
    return [
        pytest.param(case.snapshot, case.node, flow, id=f"{case.id}/{flow}")
        for case in CASES
        for flow in case.flows
    ]


@pytest.mark.parametrize(("snapshot", "node", "flow"), _rows())
def test_semantics(snapshot: ClusterSnapshot, node: str, flow: Flow) -> None:
    # The default form, and every peer selection in the shared (large) form.
    for large_selection in (None, 0):
        tables = compile_tables(snapshot, node, large_selection=large_selection)
        got = tables.evaluate(ip(flow.src), ip(flow.dst), flow.protocol, flow.port)
        assert got is flow.expected, large_selection
    # The oracle of the property tests must agree with the hand-written expectation too.
    allowed = reference_allows(snapshot, node, flow.src, flow.dst, flow.protocol, flow.port)
    assert allowed == (flow.expected in (A, N))


@pytest.mark.parametrize(
    ("ports", "protocol", "number", "allowed"),
    [
        pytest.param((), ICMP, None, True, id="no-ports-everything"),
        pytest.param((port(80),), TCP, 80, True, id="single"),
        pytest.param((port(80),), TCP, None, False, id="portless-packet"),
        pytest.param((port(1, end=3), port(3, end=9)), TCP, 9, True, id="overlap-merged"),
        pytest.param((port(5, end=4),), TCP, 5, False, id="empty-range"),
        pytest.param((port(protocol="UDP"),), UDP, 0, True, id="all-udp-ports"),
        pytest.param((port("http"),), TCP, 80, False, id="named-unresolved-no-pod"),
    ],
)
def test_port_match(
    ports: tuple[object, ...], protocol: int, number: int | None, allowed: bool
) -> None:
    match = port_match(ports)  # type: ignore[arg-type]
    assert match.allows(protocol, number, None) is allowed


@pytest.mark.parametrize(
    ("cidr", "excepts", "expected"),
    [
        pytest.param("10.0.0.0/30", (), [("10.0.0.0", "10.0.0.3")], id="plain"),
        pytest.param(
            "10.0.0.0/29",
            ("10.0.0.2/31", "10.0.0.4/32"),
            [("10.0.0.0", "10.0.0.1"), ("10.0.0.5", "10.0.0.7")],
            id="holes",
        ),
        pytest.param("10.0.0.0/30", ("10.0.0.0/24",), [], id="swallowed"),
        pytest.param(
            "10.0.0.0/30", ("10.0.0.0/31", "10.0.0.0/32"), [("10.0.0.2", "10.0.0.3")], id="nested"
        ),
        pytest.param(
            "2001:db8::/126", ("2001:db8::3/128",), [("2001:db8::", "2001:db8::2")], id="v6"
        ),
    ],
)
def test_block_ranges(cidr: str, excepts: tuple[str, ...], expected: list[tuple[str, str]]) -> None:
    block = peer(cidr=cidr, excepts=excepts).ip_block
    assert block is not None
    got = block_ranges(block)
    assert got == tuple(
        (int.from_bytes(ip(first), "big"), int.from_bytes(ip(last), "big"))
        for first, last in expected
    )


def test_unreadable_local_pod_addresses_are_queued() -> None:
    # The firewall queues the isolated set: a local unreadable pod's traffic must reach the
    # agent (and be dropped there); a remote one's is not this node's to queue.
    snapshot = base(
        unreadable=(
            make_unreadable_pod("prod", "bad", UNREADABLE, UNREADABLE6),
            make_unreadable_pod("prod", "far", "10.0.8.2", node="node-2"),
        )
    )
    tables = compile_tables(snapshot, "node-1")
    for address in (UNREADABLE, UNREADABLE6):
        assert ip(address) in tables.isolated_local_addresses()
        assert ip(address) in tables.local_addresses()
    assert ip("10.0.8.2") not in tables.isolated_local_addresses() | tables.local_addresses()
    local, remote = tables.endpoint(ip(UNREADABLE)), tables.endpoint(ip("10.0.8.2"))
    assert local is not None and local.unknown and local.key == "prod/bad" and local.local
    assert remote is not None and remote.unknown and not remote.local
    assert not remote.ingress_isolated and not remote.egress_isolated
