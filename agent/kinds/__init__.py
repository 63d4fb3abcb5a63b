"""The kinds netpol-agent reads, in one place (docs/design-tiers.md, section 2).

``KINDS`` lists every kind that enters the agent, with where the API serves it and how one
object is converted (``agent.kinds.base.KindSpec``); ``REFUSED_POLICY_KINDS`` lists the policy
kinds it knows it does not enforce, each with its message. A caller iterates them instead of
naming kinds:

- a manifest loader finds the spec of an object with ``kind_spec(apiVersion, kind)`` (and
  ``kinds_named(kind)`` to say which apiVersions a known kind takes), converts it with
  ``spec.convert(obj, strict=True)``, and refuses what ``refusal(apiVersion, kind)`` names;
- the state cache keeps one table per spec and, for an object from the API server, enforces
  ``spec.fail_closed(obj)``: the object's own record, or its stand-in and the error to report
  (for the policy kinds also a malformed staged annotation: the policy is then enforced);
- a Kubernetes source lists and watches ``spec.list_path(version)`` for the first of
  ``spec.versions`` the API serves (``custom`` kinds may not be served at all), and logs each
  served refused kind as not enforced.

The converters live in one module per kind: ``agent.convert`` (Namespace, Pod, NetworkPolicy),
``agent.kinds.clusterpolicy`` and ``agent.kinds.node``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeVar

from agent.convert import (
    ConversionError,
    fail_closed_pod,
    fail_closed_policy,
    namespace_from_k8s,
    object_label,
    object_name,
    pod_from_k8s,
    policy_from_k8s,
    staged_problem,
)
from agent.kinds import clusterpolicy
from agent.kinds.base import (
    SUPPORTED_POLICY_KINDS,
    Converter,
    FailClosed,
    FailClosedConverter,
    KindSpec,
    RefusedKind,
)
from agent.kinds.clusterpolicy import cluster_policy_from_k8s, fail_closed_cluster_policy
from agent.kinds.node import node_from_k8s
from enforcement.clusterpolicy import ClusterNetworkPolicy
from enforcement.model import Namespace, NetworkPolicy, Node, Pod, UnreadablePod

__all__ = [
    "CLUSTER_NETWORK_POLICY",
    "KINDS",
    "NAMESPACE",
    "NETWORK_POLICY",
    "NODE",
    "POD",
    "REFUSED_POLICY_KINDS",
    "SUPPORTED_POLICY_KINDS",
    "FailClosed",
    "KindSpec",
    "RefusedKind",
    "kind_spec",
    "kinds_named",
    "refusal",
]

R = TypeVar("R")


def _stand_in_after(
    convert: Converter[R], stand_in: Callable[[Any, str], tuple[R | None, str]]
) -> FailClosedConverter[R]:
    """A ``fail_closed`` for a kind whose stand-in needs the conversion's error text:
    the object's record if it converts, else ``stand_in(obj, error)`` -> (record, what)."""

    def fail_closed(obj: Any) -> FailClosed[R]:
        try:
            return FailClosed(convert(obj, strict=False), "")
        except ConversionError as error:
            message = str(error)
        except Exception as error:  # a bug is this object's own problem, never the caller's
            message = f"{object_label(obj)}: cannot be read ({type(error).__name__})"
        try:
            record, what = stand_in(obj, message)
        except Exception:
            record, what = None, "left out"
        return FailClosed(record, f"{message}; {what}")

    return fail_closed


class _Stageable(Protocol):
    @property
    def staged(self) -> bool: ...


S = TypeVar("S", bound=_Stageable)


def _staged_reported(kind: str, fail_closed: FailClosedConverter[S]) -> FailClosedConverter[S]:
    """A policy kind's ``fail_closed`` that also reports a malformed staged annotation (the
    policy is then enforced: never lifted because of it) and says when a stand-in is staged."""

    def checked(obj: Any) -> FailClosed[S]:
        result = fail_closed(obj)
        notes = [result.error] if result.error else []
        if notes and result.record is not None and result.record.staged:
            notes.append("staged, so only evaluated and reported, not enforced")
        problem = staged_problem(obj)
        if problem is not None:
            notes.append(f"{kind} {object_name(obj)}: {problem}; enforced, not staged")
        if not notes:
            return result
        return FailClosed(result.record, "; ".join(notes))

    return checked


def _namespace(obj: Mapping[str, Any], *, strict: bool) -> Namespace:
    """Namespaces ignore unknown fields in both modes (see ``agent.convert``)."""
    return namespace_from_k8s(obj)


def _left_out(obj: Any, error: str) -> tuple[None, str]:
    return None, "left out"


def _unreadable_pod(obj: Any, error: str) -> tuple[UnreadablePod, str]:
    pod = fail_closed_pod(obj, error)
    addresses = ", ".join(str(address) for address in pod.ips) or "none readable"
    return pod, (
        f"enforced fail-closed as an unknown endpoint (addresses: {addresses}; all their "
        "traffic denied on its node, matched by no selector)"
    )


def _isolating_policy(obj: Any, error: str) -> tuple[NetworkPolicy, str]:
    what = "enforced fail-closed (isolates what it selects, allows nothing)"
    return fail_closed_policy(obj), what


def _node_left_out(obj: Any, error: str) -> tuple[None, str]:
    return None, "left out (its addresses match no nodes peer)"


NAMESPACE: Final[KindSpec[Namespace]] = KindSpec(
    kind="Namespace",
    group="",
    versions=("v1",),
    plural="namespaces",
    namespaced=False,
    convert=_namespace,
    fail_closed=_stand_in_after(_namespace, _left_out),
)
POD: Final[KindSpec[Pod | UnreadablePod]] = KindSpec(
    kind="Pod",
    group="",
    versions=("v1",),
    plural="pods",
    namespaced=True,
    convert=pod_from_k8s,
    fail_closed=_stand_in_after(pod_from_k8s, _unreadable_pod),
)
NETWORK_POLICY: Final[KindSpec[NetworkPolicy]] = KindSpec(
    kind="NetworkPolicy",
    group="networking.k8s.io",
    versions=("v1",),
    plural="networkpolicies",
    namespaced=True,
    convert=policy_from_k8s,
    fail_closed=_staged_reported(
        "NetworkPolicy", _stand_in_after(policy_from_k8s, _isolating_policy)
    ),
)
CLUSTER_NETWORK_POLICY: Final[KindSpec[ClusterNetworkPolicy]] = KindSpec(
    kind=clusterpolicy.KIND,
    group=clusterpolicy.GROUP,
    versions=clusterpolicy.VERSIONS,
    plural=clusterpolicy.PLURAL,
    namespaced=False,
    convert=cluster_policy_from_k8s,
    fail_closed=_staged_reported(clusterpolicy.KIND, fail_closed_cluster_policy),
    custom=True,
)
NODE: Final[KindSpec[Node]] = KindSpec(
    kind="Node",
    group="",
    versions=("v1",),
    plural="nodes",
    namespaced=False,
    convert=node_from_k8s,
    fail_closed=_stand_in_after(node_from_k8s, _node_left_out),
)

KINDS: Final[tuple[KindSpec[Any], ...]] = (
    NAMESPACE,
    POD,
    NETWORK_POLICY,
    CLUSTER_NETWORK_POLICY,
    NODE,
)
"""Every kind netpol-agent reads, each once."""


def kind_spec(api_version: str, kind: str) -> KindSpec[Any] | None:
    """The spec of objects of ``apiVersion`` and ``kind``, or None if netpol-agent does not
    read them (another kind, or a version of a known kind it does not read)."""
    for spec in KINDS:
        if spec.kind == kind and api_version in spec.api_versions:
            return spec
    return None


def kinds_named(kind: str) -> tuple[KindSpec[Any], ...]:
    """The specs of ``kind`` whatever the group, to say which apiVersions a known kind takes."""
    return tuple(spec for spec in KINDS if spec.kind == kind)


_AP_NOTE: Final = "its successor, ClusterNetworkPolicy with tier {tier}, is enforced"
_CALICO_KINDS: Final = (
    ("NetworkPolicy", "networkpolicies", True),
    ("GlobalNetworkPolicy", "globalnetworkpolicies", False),
    ("StagedNetworkPolicy", "stagednetworkpolicies", True),
    ("StagedGlobalNetworkPolicy", "stagedglobalnetworkpolicies", False),
    ("StagedKubernetesNetworkPolicy", "stagedkubernetesnetworkpolicies", True),
)

REFUSED_POLICY_KINDS: Final[tuple[RefusedKind, ...]] = (
    RefusedKind(
        clusterpolicy.GROUP,
        "AdminNetworkPolicy",
        "adminnetworkpolicies",
        namespaced=False,
        versions=("v1alpha1",),
        note=_AP_NOTE.format(tier="Admin"),
    ),
    RefusedKind(
        clusterpolicy.GROUP,
        "BaselineAdminNetworkPolicy",
        "baselineadminnetworkpolicies",
        namespaced=False,
        versions=("v1alpha1",),
        note=_AP_NOTE.format(tier="Baseline"),
    ),
    RefusedKind("cilium.io", "CiliumNetworkPolicy", "ciliumnetworkpolicies", namespaced=True),
    RefusedKind(
        "cilium.io",
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
        namespaced=False,
    ),
    *(
        RefusedKind(group, kind, plural, namespaced=namespaced)
        for group in ("projectcalico.org", "crd.projectcalico.org")
        for kind, plural, namespaced in _CALICO_KINDS
    ),
    RefusedKind("crd.antrea.io", "ClusterNetworkPolicy", "clusternetworkpolicies", False),
    RefusedKind("crd.antrea.io", "NetworkPolicy", "networkpolicies", namespaced=True),
)
"""Policy kinds netpol-agent knows it does not enforce (Calico's kinds in both of its API
groups, the aggregated ``projectcalico.org/v3`` and the CRDs' ``crd.projectcalico.org/v1``)."""


def refusal(api_version: str, kind: str) -> str | None:
    """The one-line refusal of a policy kind netpol-agent does not enforce, or None."""
    for refused in REFUSED_POLICY_KINDS:
        if refused.matches(api_version, kind):
            return refused.message(api_version)
    return None
