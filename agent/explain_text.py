"""The text form of an explanation: short, for people, the deciding line first.

    ALLOWED  shop/frontend -> shop/backend TCP/8080
    decided by: NetworkPolicy shop/backend-from-frontend rule 0 Allow
    egress of shop/frontend: allowed: nothing decides egress of shop/frontend (...)
      Admin tier: none
      ...

References are worded as the flow log's table words them (``agent.flowlog.describe_refs``),
so a line of ``lab flows`` and an explanation of the same flow read alike.
"""

from __future__ import annotations

from agent.flowlog import describe_refs
from enforcement.explanation import DirectionExplanation, Explanation, RuleStep, TierStep
from enforcement.model import PROTOCOL_NAMES


def render_explanation(explanation: Explanation) -> str:
    protocol = PROTOCOL_NAMES.get(explanation.protocol, str(explanation.protocol))
    port = "" if explanation.port is None else f"/{explanation.port}"
    where = f" on {explanation.node}" if explanation.node is not None else ""
    verdict = "ALLOWED" if explanation.allowed else "DENIED"
    lines = [
        f"{verdict}  {_end(explanation.source.name, explanation.source.address)} -> "
        f"{_end(explanation.destination.name, explanation.destination.address)} "
        f"{protocol}{port}{where}",
        f"decided by: {_refs(explanation)} ({explanation.reason.value})",
    ]
    report = explanation.staged_report()
    if report is not None:
        if report.would_deny or report.would_allow:
            change = "would deny" if report.would_deny else "would allow"
            by = describe_refs([ref.as_dict() for ref in report.changed_by])
            lines.append(f"staged: {change}" + (f" by {by}" if report.changed_by else ""))
        else:
            lines.append(f"staged: no change ({report.verdict} with the staged policies too)")
    lines += [f"warning: {warning}" for warning in explanation.warnings]
    for direction in (explanation.enforced.egress, explanation.enforced.ingress):
        lines += _direction(direction)
    return "\n".join(lines)


def _end(name: str, address: object) -> str:
    if address is None or name == str(address):
        return name
    return f"{name} ({address})"


def _refs(explanation: Explanation) -> str:
    if explanation.decided_by:
        return describe_refs([ref.as_dict() for ref in explanation.decided_by])
    return "nothing isolates either side" if explanation.allowed else "no rule"


def _direction(direction: DirectionExplanation) -> list[str]:
    name = direction.direction.value.lower()
    where = f" ({direction.node})" if direction.enforced and direction.node else ""
    lines = [f"{name} of {direction.subject}{where}: {direction.summary}"]
    if not any(tier.policies for tier in direction.tiers):
        return lines  # the summary says it all: nothing selects the subject
    for tier in direction.tiers:
        lines += _tier(tier)
    return lines


def _tier(tier: TierStep) -> list[str]:
    if tier.result == "none":
        return [f"  {tier.tier} tier: no ClusterNetworkPolicy of this tier applies"]
    if tier.result == "not isolated":
        return [f"  {tier.tier} tier: no NetworkPolicy isolates it"]
    lines = [f"  {tier.tier} tier: {tier.result}"]
    for policy in tier.policies:
        name = f"{policy.namespace}/{policy.name}" if policy.namespace else policy.name
        priority = f" (priority {policy.priority})" if policy.priority is not None else ""
        staged = " [staged]" if policy.staged else ""
        lines.append(f"    {policy.kind} {name}{priority}{staged}")
        if not policy.rules:
            lines.append("      no rules for this direction")
        lines += [f"      {_rule(rule)}" for rule in policy.rules]
    return lines


def _rule(rule: RuleStep) -> str:
    label = f"rule {rule.ref.rule}" + (f" ({rule.ref.rule_name})" if rule.ref.rule_name else "")
    label += f" {rule.ref.action}"
    if rule.matches:
        return f"{label}: matches: {rule.peers.words}; {rule.ports.words}"
    why = [check.words for check in (rule.peers, rule.ports) if not check.matches]
    return f"{label}: no: " + "; ".join(why)
