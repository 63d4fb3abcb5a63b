"""The answer of the decision stage: an action and the reason for it.

Verdicts are preallocated singletons (one per reason) so the packet path never allocates one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    ACCEPT = "accept"
    DROP = "drop"


class Reason(Enum):
    """Why a packet got its verdict. The value is the label used in logs and metrics."""

    # Members are singletons compared by identity, so identity is a valid hash; Enum's own
    # ``__hash__`` (Python 3.11, enum.py) hashes the member's name in Python code, and the
    # packet path hashes a reason several times per packet (counters, sets, OUTCOMES).
    __hash__ = object.__hash__

    # accepts
    FLOW = "flow"
    """The packet belongs to a connection that was allowed (either direction)."""
    RELATED = "related"
    """An ICMP error about a tracked connection (RFC 792 / RFC 4443 error messages)."""
    ALLOWED = "allowed"
    """A new connection that every isolated endpoint's policy allows."""
    NOT_ISOLATED = "not-isolated"
    """Neither endpoint is isolated in the direction that matters: nothing to enforce."""
    HOST = "host"
    """Traffic from the pod's own node, which NetworkPolicy always allows (kubelet probes)."""
    NEIGHBOR_DISCOVERY = "neighbor-discovery"
    """IPv6 neighbour/router discovery (RFC 4861), which the network needs to work at all: only
    a message that passes RFC 4861's validity checks (hop limit 255 and the rest)."""
    FAIL_OPEN = "fail-open"
    """The agent could not decide (an internal error) and runs fail-open."""
    # drops
    DENIED_EGRESS = "denied-egress"
    """The source is isolated for egress and no rule allows this destination and port."""
    DENIED_INGRESS = "denied-ingress"
    """The destination is isolated for ingress and no rule allows this source and port."""
    REVOKED = "revoked"
    """A tracked connection that a policy change no longer allows."""
    INVALID = "invalid"
    """A packet that fits no state of its connection (conntrack's INVALID)."""
    MALFORMED = "malformed"
    """The packet could not be parsed; never let through what cannot be judged."""
    FAIL_CLOSED = "fail-closed"
    """The agent could not decide (an internal error) and runs fail-closed."""
    UNKNOWN_ENDPOINT = "unknown-endpoint"
    """An endpoint whose policies cannot be known: an address of this node's pod ranges that no
    known pod has (yet), or the address of a pod whose object could not be read. Nothing passes
    until the agent knows the pod."""


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: Reason

    @property
    def accepted(self) -> bool:
        return self.action is Action.ACCEPT


_DROPS = {
    Reason.DENIED_EGRESS,
    Reason.DENIED_INGRESS,
    Reason.REVOKED,
    Reason.INVALID,
    Reason.MALFORMED,
    Reason.FAIL_CLOSED,
    Reason.UNKNOWN_ENDPOINT,
}

VERDICTS: dict[Reason, Verdict] = {
    reason: Verdict(Action.DROP if reason in _DROPS else Action.ACCEPT, reason) for reason in Reason
}
"""The one Verdict object of each reason."""


@dataclass(frozen=True, slots=True)
class RuleRef:
    """What decided a verdict, for people: one rule of one policy (or one policy, for a
    NetworkPolicy that isolates without allowing). The tables keep only its fields
    (``RefFields``); RuleRefs are made when an outcome is first met and kept with that outcome
    (``enforcement.tables``), so a flow that meets a known outcome builds none."""

    kind: str
    """``NetworkPolicy`` or ``ClusterNetworkPolicy``."""
    namespace: str | None
    """None for cluster-scoped kinds."""
    name: str
    tier: str
    """``Admin``, ``NetworkPolicy`` or ``Baseline``."""
    rule: int | None
    """Index of the rule in its direction's list; None when the policy as a whole decided (a
    NetworkPolicy that isolates the pod and allows nothing that matches)."""
    rule_name: str = ""
    """The rule's name, where the kind has names (ClusterNetworkPolicy); empty otherwise."""
    action: str = ""
    """``Accept``, ``Deny`` or ``Pass`` for ClusterNetworkPolicy rules; ``Allow`` for a
    NetworkPolicy rule that allowed, ``Isolate`` for a NetworkPolicy that denied by isolating."""
    staged: bool = False
    """The policy is staged (``enforcement.model.STAGED_ANNOTATION``): only the staged tables
    (``AllowTables.staged``) hold it, so only a staged outcome names it; what it would change
    is worked out by ``enforcement.staged.staged_verdict``."""

    def as_dict(self) -> dict[str, str | int | bool | None]:
        """The JSON form flow logs and ``explain -o json`` print."""
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "tier": self.tier,
            "rule": self.rule,
            "rule_name": self.rule_name,
            "action": self.action,
            "staged": self.staged,
        }
