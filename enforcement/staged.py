"""Staged policies: what they would change, per connection (the flow log's "would deny").

A NetworkPolicy or ClusterNetworkPolicy annotated ``netpol-agent.io/staged: "true"``
(``enforcement.model.STAGED_ANNOTATION``) is evaluated and reported but never enforced, the way
Calico's staged policies are (StagedNetworkPolicy and friends: "preview the impact of a policy
before enforcing it"); here the upstream kinds carry the mark, so a policy is staged and later
enforced by removing one annotation, unchanged otherwise.

The compiler leaves staged policies out of the tables that decide packets, and when there are
any it also compiles the tables with them enforced (``AllowTables.staged``; their refs carry
``staged=True``). A consumer that judged a new connection with the enforced tables asks the
staged tables the same question (``tables.staged.outcome(src, dst, protocol, dst_port)``) and
hands both outcomes to :func:`staged_verdict`:

- the *staged verdict* is the verdict the connection would get with every staged policy
  enforced too;
- it *changes* the connection when its action differs from the enforced one (accept vs drop):
  **would deny** when the connection is accepted now and would be dropped, **would allow** the
  other way round. A different reason with the same action (denied by egress instead of by
  ingress, allowed instead of not isolated) changes nothing a packet would feel;
- ``changed_by`` names the staged policies behind the change: the refs with ``staged`` set
  among what decided the staged outcome (both directions, egress first). A staged rule that
  decides without changing the action is not named (nothing changes).

One case changes a verdict without a staged policy deciding it: a staged ClusterNetworkPolicy
``Pass`` rule that skips an enforced rule of its tier, leaving the decision to a later tier's
enforced policy. Outcomes name deciders, not the rules walked past, so ``changed_by`` is then
empty although ``changed`` is true; the staged outcome's refs still say what would decide.

Pure functions of interned values: nothing here touches the tables or allocates more than the
result.
"""

from __future__ import annotations

from dataclasses import dataclass

from enforcement.tables import Outcome
from enforcement.verdict import RuleRef, Verdict


@dataclass(frozen=True, slots=True)
class StagedVerdict:
    """What one connection would get with the staged policies enforced too."""

    verdict: Verdict
    """The staged verdict (the staged outcome's)."""
    changed: bool
    """Its action differs from the enforced verdict's (accept vs drop)."""
    changed_by: tuple[RuleRef, ...]
    """The staged policies' refs (``staged=True``) among the staged outcome's deciding refs,
    egress first, when ``changed``; empty otherwise (see the module docstring for the one case
    where it is empty although ``changed``)."""

    @property
    def would_deny(self) -> bool:
        """Accepted now, dropped once the staged policies are enforced."""
        return self.changed and not self.verdict.accepted

    @property
    def would_allow(self) -> bool:
        """Dropped now, accepted once the staged policies are enforced."""
        return self.changed and self.verdict.accepted


def staged_verdict(enforced: Outcome, staged: Outcome) -> StagedVerdict:
    """Compare the enforced outcome of a flow with its outcome in ``AllowTables.staged``.

    ``enforced`` comes from the tables that decided the flow, ``staged`` from their ``staged``
    tables for the same source, destination, protocol and port (both are interned Outcomes).
    """
    changed = enforced.verdict.action is not staged.verdict.action
    changed_by: tuple[RuleRef, ...] = ()
    if changed:
        changed_by = tuple([ref for ref in staged.refs if ref.staged])
    return StagedVerdict(staged.verdict, changed, changed_by)
