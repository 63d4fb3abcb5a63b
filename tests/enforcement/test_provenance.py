"""enforcement/provenance.py: NetworkPolicy provenance is built on first use, once, and names
the same rules a compile-time build would (the property suite checks every deciding rule
against the reference evaluator; these pin the laziness and the sharing)."""

from __future__ import annotations

from enforcement.compiler import compile_tables
from enforcement.model import IPPROTO_TCP, Direction
from enforcement.tables import PolicyTable
from enforcement.verdict import Reason, RuleRef
from tests.builders import (
    cluster,
    ip,
    make_namespace,
    make_pod,
    make_policy,
    peer,
    port,
    rule,
    selector,
)

WEB = make_pod("prod", "web", "10.244.1.2", labels={"app": "web"}, ports=[("http", 80)])
WEB_2 = make_pod("prod", "web-2", "10.244.1.3", labels={"app": "web"}, ports=[("http", 80)])
API = make_pod("prod", "api", "10.244.1.4", labels={"app": "api"})
CLIENT = make_pod("dev", "client", "10.244.2.5", labels={"app": "client"}, node="node-2")
NAMESPACES = (make_namespace("prod"), make_namespace("dev"))
FROM_API = make_policy(
    "prod", "web-from-api", selector(app="web"), ingress=[rule(peer(selector(app="api")))]
)
FROM_RANGE = make_policy(
    "prod",
    "b-web-from-range",
    selector(app="web"),
    ingress=[rule(peer(cidr="10.244.2.0/24"), ports=[port("http")])],
)


def ingress_table(tables_pod: object) -> PolicyTable:
    table = getattr(tables_pod, "ingress_table", None)
    assert isinstance(table, PolicyTable)
    return table


def test_nothing_is_built_until_provenance_is_asked_for() -> None:
    tables = compile_tables(cluster(*NAMESPACES, WEB, API, CLIENT, FROM_API), "node-1")
    table = ingress_table(tables.endpoint(WEB.ips[0].packed))
    assert table._provenance is None, "built at compile time"
    # Deciding needs none of it.
    assert tables.evaluate(ip("10.244.1.4"), ip("10.244.1.2"), IPPROTO_TCP, 80) is Reason.ALLOWED
    assert table._provenance is None, "built by a decision that does not name rules"
    outcome = tables.outcome(ip("10.244.1.4"), ip("10.244.1.2"), IPPROTO_TCP, 80)
    assert outcome.ingress == (
        RuleRef("NetworkPolicy", "prod", "web-from-api", "NetworkPolicy", 0, "", "Allow"),
    )
    assert table._provenance is not None


def test_rules_are_built_once_per_policy_and_shared_by_its_tables() -> None:
    # web and web-2 share one table; api's own policy gives it another table of FROM_API too.
    api_too = make_policy("prod", "api-isolated", selector(app="api"))
    tables = compile_tables(
        cluster(*NAMESPACES, WEB, WEB_2, API, CLIENT, FROM_API, FROM_RANGE, api_too), "node-1"
    )
    table = ingress_table(tables.endpoint(WEB.ips[0].packed))
    assert table is ingress_table(tables.endpoint(WEB_2.ips[0].packed))
    first = table.rules
    assert table.rules is first, "kept after the first read"
    # Policies by name: b-web-from-range before web-from-api, whatever the snapshot's order.
    assert [rules[0].origin[2] for rules in first] == ["b-web-from-range", "web-from-api"]
    assert [ref[2] for ref in table.isolating] == ["b-web-from-range", "web-from-api"]
    assert all(ref[6] == "Isolate" for ref in table.isolating)


def test_a_denial_names_the_isolating_policies_and_an_ipblock_rule_is_named() -> None:
    tables = compile_tables(cluster(*NAMESPACES, WEB, API, CLIENT, FROM_API, FROM_RANGE), "node-1")
    denied = tables.outcome(ip("10.244.2.5"), ip("10.244.1.2"), IPPROTO_TCP, 81)
    assert denied.reason is Reason.DENIED_INGRESS
    assert [ref.name for ref in denied.ingress] == ["b-web-from-range", "web-from-api"]
    by_range = tables.outcome(ip("10.244.2.5"), ip("10.244.1.2"), IPPROTO_TCP, 80)
    assert by_range.reason is Reason.ALLOWED
    assert [(ref.name, ref.rule) for ref in by_range.ingress] == [("b-web-from-range", 0)]


def test_a_table_without_a_source_has_no_provenance() -> None:
    table = PolicyTable(Direction.INGRESS, ())
    assert table.rules == () and table.isolating == ()
