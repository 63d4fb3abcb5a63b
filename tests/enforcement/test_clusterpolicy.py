"""enforcement/clusterpolicy.py: ties of equal priority, which the API leaves undefined."""

from __future__ import annotations

from enforcement.clusterpolicy import ClusterNetworkPolicy, Tier, describe_tie, priority_ties
from tests.builders import make_cluster_policy


def names(groups: tuple[tuple[ClusterNetworkPolicy, ...], ...]) -> list[list[str]]:
    return [[policy.name for policy in group] for group in groups]


def test_policies_of_one_tier_and_priority_tie_and_are_listed_by_name() -> None:
    policies = [
        make_cluster_policy("zeta", Tier.ADMIN, 10),
        make_cluster_policy("alpha", Tier.ADMIN, 10),
        make_cluster_policy("mid", Tier.ADMIN, 10),
        make_cluster_policy("alone", Tier.ADMIN, 11),
    ]
    assert names(priority_ties(policies)) == [["alpha", "mid", "zeta"]]


def test_the_same_priority_in_different_tiers_is_no_tie() -> None:
    policies = [
        make_cluster_policy("admin", Tier.ADMIN, 5),
        make_cluster_policy("baseline", Tier.BASELINE, 5),
    ]
    assert priority_ties(policies) == ()


def test_groups_come_admin_first_then_by_priority() -> None:
    policies = [
        make_cluster_policy("b2", Tier.BASELINE, 1),
        make_cluster_policy("b1", Tier.BASELINE, 1),
        make_cluster_policy("a4", Tier.ADMIN, 900),
        make_cluster_policy("a3", Tier.ADMIN, 900),
        make_cluster_policy("a2", Tier.ADMIN, 20),
        make_cluster_policy("a1", Tier.ADMIN, 20),
    ]
    assert names(priority_ties(policies)) == [["a1", "a2"], ["a3", "a4"], ["b1", "b2"]]


def test_the_message_names_the_policies_the_tier_the_priority_and_the_order() -> None:
    (group,) = priority_ties(
        [
            make_cluster_policy("second", Tier.BASELINE, 7),
            make_cluster_policy("first", "Baseline", 7),
        ]
    )
    message = describe_tie(group)
    assert "first, second" in message
    assert "priority 7" in message
    assert "Baseline tier" in message
    assert "undefined" in message
    assert "by name" in message
