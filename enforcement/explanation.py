"""The records an explanation is made of (enforcement/explain.py walks, these hold the result).

    Explanation -> Verdicts (the flow in force, and with staged policies) -> one
    DirectionExplanation per direction -> TierStep -> PolicyStep -> RuleStep (with its Checks)

Frozen values with an ``as_dict`` each: the JSON form ``explain -o json`` prints
(docs/explain.md). References are :class:`enforcement.verdict.RuleRef`, as in flow records.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from enforcement.events import TABLE_REASONS, StagedReport, verdict_word
from enforcement.matching import Check, Cluster, Party
from enforcement.model import PROTOCOL_NAMES, ClusterSnapshot, Direction, IPAddress, Pod
from enforcement.staged import staged_verdict
from enforcement.tables import Outcome
from enforcement.verdict import VERDICTS, Reason, RuleRef


class ExplainError(ValueError):
    """The flow cannot be explained as asked (an unknown pod, a bad address); the message
    says why, for people."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end as the user named it: a pod (``namespace/name``) or an address."""

    pod: Pod | None = None
    """A readable pod, or None."""
    unreadable_key: str | None = None
    """The key of an unreadable pod named by the user."""
    address: IPAddress | None = None
    """The address the flow uses (the pod's, of the family asked for); None for a pod
    without one."""


def find_endpoint(snapshot: ClusterSnapshot, text: str, family: int | None = None) -> Endpoint:
    """``namespace/name`` of a pod, or an IP address; ExplainError for anything else.

    A pod's address is its first of ``family`` (default: IPv4 if it has one, else IPv6)."""
    if "/" not in text:
        try:
            return Endpoint(address=ipaddress.ip_address(text.strip()))
        except ValueError:
            raise ExplainError(
                f"{text!r}: neither namespace/name of a pod nor an IP address"
            ) from None
    cluster = Cluster(snapshot)
    pod = cluster.pods.get(text)
    unreadable = cluster.unreadable.get(text)
    if pod is None and unreadable is None:
        raise ExplainError(f"no pod {text} in the cluster state")
    ips = pod.ips if pod is not None else unreadable.ips if unreadable is not None else ()
    wanted = [a for a in ips if a.version == (family or 4)]
    if family is None and not wanted:
        wanted = list(ips)
    elif ips and not wanted:
        raise ExplainError(f"pod {text} has no IPv{family} address ({', '.join(map(str, ips))})")
    address = wanted[0] if wanted else None
    if pod is not None:
        return Endpoint(pod=pod, address=address)
    return Endpoint(unreadable_key=text, address=address)


@dataclass(frozen=True, slots=True)
class RuleStep:
    """One rule walked, and whether it matches the flow."""

    ref: RuleRef
    """What names the rule (kind, policy, tier, index, name, action)."""
    peers: Check
    ports: Check

    @property
    def matches(self) -> bool:
        return self.peers.matches and self.ports.matches

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.ref.rule,
            "rule_name": self.ref.rule_name,
            "action": self.ref.action,
            "matches": self.matches,
            "peers": {"matches": self.peers.matches, "why": self.peers.words},
            "ports": {"matches": self.ports.matches, "why": self.ports.words},
        }


@dataclass(frozen=True, slots=True)
class PolicyStep:
    """One policy that selects the subject, with its rules walked (in order, up to the one
    that decided)."""

    kind: str
    namespace: str | None
    name: str
    priority: int | None
    """ClusterNetworkPolicy priority; None for a NetworkPolicy."""
    staged: bool
    rules: tuple[RuleStep, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "priority": self.priority,
            "staged": self.staged,
            "rules": [rule.as_dict() for rule in self.rules],
        }


@dataclass(frozen=True, slots=True)
class TierStep:
    """One tier of one direction."""

    tier: str
    """``Admin``, ``NetworkPolicy`` or ``Baseline``."""
    policies: tuple[PolicyStep, ...]
    result: str
    """``Accept``, ``Deny`` or ``Pass`` (a rule matched), ``no match`` (no rule of the tier
    did), ``none`` (no policy of the tier selects the subject); for NetworkPolicy ``Allow``,
    ``Isolate`` or ``not isolated``."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "result": self.result,
            "policies": [policy.as_dict() for policy in self.policies],
        }


@dataclass(frozen=True, slots=True)
class DirectionExplanation:
    """One direction of the flow: the source's egress or the destination's ingress."""

    direction: Direction
    subject: str
    """The end whose policies decide: ``namespace/name`` or an address."""
    node: str | None
    """Where it is decided (the subject's node)."""
    enforced: bool
    """Some node decides this direction; False for an end that is no pod (or no pod of the
    node asked about), or traffic from the destination's own node."""
    allowed: bool
    decided_by: tuple[RuleRef, ...]
    """What decided this direction (empty when nothing had an opinion)."""
    tiers: tuple[TierStep, ...]
    summary: str
    """One line, in words: the verdict and why."""
    reached: bool = True
    """False for an ingress the packet never reaches (its egress was denied first)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": verdict_word(self.allowed),
            "decided_by": [ref.as_dict() for ref in self.decided_by],
            "subject": self.subject,
            "node": self.node,
            "enforced": self.enforced,
            "reached": self.reached,
            "summary": self.summary,
            "tiers": [tier.as_dict() for tier in self.tiers],
        }


@dataclass(frozen=True, slots=True)
class Verdicts:
    """The flow in one world (the policies in force, or with the staged ones too)."""

    reason: Reason
    egress: DirectionExplanation
    ingress: DirectionExplanation
    decided_by: tuple[RuleRef, ...]
    """What the nodes on the way record (flow records' ``decided_by``): each node's refs, the
    source's node first, up to the first that denies (a packet it drops goes no further)."""

    @property
    def allowed(self) -> bool:
        return VERDICTS[self.reason].accepted

    def outcome(self) -> Outcome:
        """As an :class:`Outcome`, to compare with the staged one (enforcement/staged.py)."""
        return Outcome(self.reason, self.decided_by, (), VERDICTS[self.reason])


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one flow is allowed or denied."""

    source: Party
    destination: Party
    protocol: int
    port: int | None
    node: str | None
    """The node asked about; None: the cluster (each direction on its own node)."""
    enforced: Verdicts
    staged: Verdicts | None
    """The same flow with the staged policies enforced too; None when none is staged."""
    warnings: tuple[str, ...]

    @property
    def allowed(self) -> bool:
        return self.enforced.allowed

    @property
    def reason(self) -> Reason:
        return self.enforced.reason

    @property
    def decided_by(self) -> tuple[RuleRef, ...]:
        return self.enforced.decided_by

    def staged_report(self) -> StagedReport | None:
        """What the staged policies would change, as flow records say it."""
        if self.staged is None or self.reason not in TABLE_REASONS:
            return None
        enforced, staged = self.enforced.outcome(), self.staged.outcome()
        change = staged_verdict(enforced, staged)
        return StagedReport(
            verdict=verdict_word(change.verdict.accepted),
            would_deny=change.would_deny,
            would_allow=change.would_allow,
            decided_by=staged.refs,
            changed_by=change.changed_by,
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``explain -o json`` prints."""
        data: dict[str, Any] = {
            "verdict": verdict_word(self.allowed),
            "egress": self.enforced.egress.as_dict(),
            "ingress": self.enforced.ingress.as_dict(),
            "reason": self.reason.value,
            "decided_by": [ref.as_dict() for ref in self.decided_by],
            "src": _end_dict(self.source),
            "dst": _end_dict(self.destination),
            "protocol": PROTOCOL_NAMES.get(self.protocol, str(self.protocol)),
            "dst_port": self.port,
            "node": self.node,
            "warnings": list(self.warnings),
        }
        report = self.staged_report()
        if report is not None and self.staged is not None:
            data["staged"] = {
                **report.as_dict(),
                "egress": self.staged.egress.as_dict(),
                "ingress": self.staged.ingress.as_dict(),
            }
        return data


def _end_dict(party: Party) -> dict[str, Any]:
    node = party.pod.node_name if party.pod is not None else None
    if party.unreadable is not None:
        node = party.unreadable.node_name
    return {
        "name": party.name,
        "address": None if party.address is None else str(party.address),
        "pod": party.is_pod,
        "node": node,
    }
