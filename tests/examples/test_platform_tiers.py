"""examples/platform-tiers: which rule decides each pair its README explains (no root, no lab).

expected.yaml says *whether* a pair connects, and both the compiler and the lab check that. The
README also says *which* tier and rule decides; each row here is one such sentence, checked
against the outcome the compiled tables give (``AllowTables.outcome``): the reason, and the
rules named for the source's egress and for the destination's ingress, written as
``TIER NAME[RULE NAME] ACTION`` (``TIER NAMESPACE/NAME[INDEX] ACTION`` for a NetworkPolicy rule,
``TIER NAMESPACE/NAME Isolate`` for a NetworkPolicy that denies by isolating).
"""

from __future__ import annotations

from functools import cache

import pytest

from enforcement.model import PROTOCOL_NUMBERS
from enforcement.tables import AllowTables
from enforcement.verdict import Reason, RuleRef
from tests.examples.expectations import EXAMPLES_DIR, Example, Protocol, load_example
from tests.examples.test_examples_compiled import Addresses, compile_example

PLATFORM = ("platform.yaml",)
TEAMS = (*PLATFORM, "teams.yaml")
OVERREACH = (*TEAMS, "teams-overreach.yaml")

SCRAPE = "Admin monitoring-scrape[scrape-metrics] Accept"
LOCKDOWN_INGRESS = "Admin payments-lockdown[everyone-else] Deny"
LOCKDOWN_EGRESS = "Admin payments-lockdown[everything-else] Deny"
BASELINE = "Baseline default-deny-ingress[deny-from-pods] Deny"


@cache
def _example() -> Example:
    return load_example(EXAMPLES_DIR / "platform-tiers")


@cache
def _compiled(stage: tuple[str, ...]) -> tuple[AllowTables, Addresses]:
    return compile_example(_example(), stage)


def describe(ref: RuleRef) -> str:
    name = ref.name if ref.namespace is None else f"{ref.namespace}/{ref.name}"
    rule = "" if ref.rule is None else f"[{ref.rule_name or ref.rule}]"
    return f"{ref.tier} {name}{rule} {ref.action}"


CASES = [
    # Stage 1: the platform's tiers alone.
    pytest.param(
        PLATFORM, "monitoring/prometheus", "payments/api", "TCP", 9100,
        Reason.ALLOWED, (), (SCRAPE,), id="1-scrape-before-lockdown",
    ),
    pytest.param(
        PLATFORM, "monitoring/prometheus", "payments/api", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (LOCKDOWN_INGRESS,), id="1-scrape-only-metrics",
    ),
    pytest.param(
        PLATFORM, "shop/frontend", "payments/api", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (LOCKDOWN_INGRESS,), id="1-lockdown-denies-shop",
    ),
    pytest.param(
        PLATFORM, "checkout/cart", "payments/api", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (BASELINE,), id="1-owner-passed-to-baseline",
    ),
    pytest.param(
        PLATFORM, "shop/frontend", "shop/backend", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (BASELINE,), id="1-baseline-closes-shop",
    ),
    pytest.param(
        PLATFORM, "external/internet", "payments/api", "TCP", 8080,
        Reason.NOT_ISOLATED, (), (), id="1-no-rule-names-outside",
    ),
    pytest.param(
        PLATFORM, "payments/api", "kube-system/kube-dns", "UDP", 53,
        Reason.ALLOWED, ("Admin payments-lockdown[cluster-dns] Accept",), (), id="1-payments-dns",
    ),
    pytest.param(
        PLATFORM, "payments/api", "external/internet", "UDP", 53,
        Reason.DENIED_EGRESS, (LOCKDOWN_EGRESS,), (), id="1-payments-no-public-dns",
    ),
    pytest.param(
        PLATFORM, "payments/api", "external/card-processor", "TCP", 443,
        Reason.ALLOWED, ("Admin payments-lockdown[card-processor] Accept",), (),
        id="1-payments-card-processor",
    ),
    pytest.param(
        PLATFORM, "payments/api", "monitoring/prometheus", "TCP", 9090,
        Reason.DENIED_EGRESS, (LOCKDOWN_EGRESS,), (), id="1-networks-match-pods",
    ),
    # Stage 2: the teams' NetworkPolicies (the worked example of docs/how-it-works.md).
    pytest.param(
        TEAMS, "monitoring/prometheus", "payments/api", "TCP", 9100,
        Reason.ALLOWED, (), (SCRAPE,), id="2-scrape-before-networkpolicy",
    ),
    pytest.param(
        TEAMS, "shop/frontend", "payments/api", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (LOCKDOWN_INGRESS,), id="2-lockdown-denies-shop",
    ),
    pytest.param(
        TEAMS, "checkout/cart", "payments/api", "TCP", 8080,
        Reason.ALLOWED, (), ("NetworkPolicy payments/allow-checkout[0] Allow",),
        id="2-owner-passed-to-networkpolicy",
    ),
    pytest.param(
        TEAMS, "checkout/cart", "payments/api", "TCP", 9100,
        Reason.DENIED_INGRESS, (), ("NetworkPolicy payments/allow-checkout Isolate",),
        id="2-networkpolicy-isolates-passed-flow",
    ),
    pytest.param(
        TEAMS, "shop/frontend", "shop/backend", "TCP", 8080,
        Reason.ALLOWED, (), ("NetworkPolicy shop/allow-frontend-to-backend[0] Allow",),
        id="2-shop-opens-backend",
    ),
    pytest.param(
        TEAMS, "external/internet", "shop/backend", "TCP", 8080,
        Reason.DENIED_INGRESS, (), ("NetworkPolicy shop/allow-frontend-to-backend Isolate",),
        id="2-networkpolicy-shuts-outside",
    ),
    pytest.param(
        TEAMS, "shop/backend", "shop/frontend", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (BASELINE,), id="2-frontend-still-baseline",
    ),
    pytest.param(
        TEAMS, "external/internet", "shop/frontend", "TCP", 8080,
        Reason.NOT_ISOLATED, (), (), id="2-no-rule-names-outside",
    ),
    pytest.param(
        TEAMS, "shop/frontend", "blog/web", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (BASELINE,), id="2-blog-stays-closed",
    ),
    # Stage 3: the teams overreach; the Admin tier has already decided.
    pytest.param(
        OVERREACH, "shop/frontend", "payments/api", "TCP", 8080,
        Reason.DENIED_INGRESS, (), (LOCKDOWN_INGRESS,), id="3-allow-shop-never-asked",
    ),
    pytest.param(
        OVERREACH, "monitoring/prometheus", "blog/web", "TCP", 9100,
        Reason.ALLOWED, (), (SCRAPE,), id="3-deny-all-cannot-stop-scrape",
    ),
    pytest.param(
        OVERREACH, "external/internet", "blog/web", "TCP", 8080,
        Reason.DENIED_INGRESS, (), ("NetworkPolicy blog/deny-all-ingress Isolate",),
        id="3-deny-all-shuts-outside",
    ),
    pytest.param(
        OVERREACH, "shop/frontend", "blog/web", "TCP", 8080,
        Reason.DENIED_INGRESS, (), ("NetworkPolicy blog/deny-all-ingress Isolate",),
        id="3-networkpolicy-replaces-baseline",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "source", "target", "protocol", "port", "reason", "egress", "ingress"), CASES
)
def test_deciding_rules(
    stage: tuple[str, ...],
    source: str,
    target: str,
    protocol: Protocol,
    port: int,
    reason: Reason,
    egress: tuple[str, ...],
    ingress: tuple[str, ...],
) -> None:
    tables, addresses = _compiled(stage)
    src, dst = addresses[source][4].packed, addresses[target][4].packed
    outcome = tables.outcome(src, dst, PROTOCOL_NUMBERS[protocol], port)
    assert outcome.reason is reason
    assert tuple(describe(ref) for ref in outcome.egress) == egress
    assert tuple(describe(ref) for ref in outcome.ingress) == ingress
