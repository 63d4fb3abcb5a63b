"""hostNetwork pods in the lab: pods that are their node, as far as the network can tell.

A pod with ``spec.hostNetwork: true`` runs in its node's network namespace, as the kubelet runs
it (the pod sandbox joins the host's network instead of getting one of its own). The lab models
it the same way; this module holds what is particular to such pods, without I/O (``lab.lab``
builds and removes them):

- **No namespace, no veth, no address of its own.** Its ``status.podIPs`` (and
  ``status.hostIPs``) are its node's addresses, ``172.18.0.(N+1)`` and, in a dual-stack lab,
  ``fc00:f853:ccd:e793::(N+1)`` (:func:`pod_status`), as the kubelet reports them for a
  hostNetwork pod.
- **Its container ports are host ports.** The API server defaults ``hostPort`` to
  ``containerPort`` for a hostNetwork pod and refuses any other value ("must match
  `containerPort` when `hostNetwork` is true"); so does the lab (:func:`spec_problem`). The
  lab's echo responder serves the declared TCP and UDP ports inside the node namespace, bound to
  the node's addresses only (``agent.lab.responder --address``).
- **Two pods on one node cannot hold one host port** (same port and protocol; SCTP counts,
  though nothing serves it). Placement is the lab's usual one, the node with the fewest pods,
  lowest index first, restricted to the nodes where the pod's host ports are free, as
  kube-scheduler's NodePorts filter restricts it ("node(s) didn't have free ports for the
  requested pod ports"). So upstream's conformance centaurs (two replicas of one hostNetwork
  StatefulSet, same ports) land one per node. When no node fits, a cluster would leave the pod
  Pending; the lab refuses it, saying so (a one-node lab cannot run both centaurs, nor can a
  one-node cluster). With ``spec.nodeName`` the lab refuses a taken port too: the kubelet's
  admission runs the same check and rejects the pod. A port something else in the node
  namespace listens on (the agent's health port, ``agent.health.DEFAULT_HEALTH_PORT``) cannot
  be bound either: the responder fails to start and the change is refused and undone, as such a
  container would fail.
- **In probes** (``Lab.probe``, the endpoint listing) the pod is an endpoint whose address is its
  node's: a probe *to* it goes to the node address, a probe *from* it starts in the node
  namespace, so it is the node's own traffic.

What the agents then do (``enforcement/firewall.py``, ``enforcement/decide.py``), which is what the
lab shows: hostNetwork pods are never subjects nor pod peers (``agent/convert.py`` and the
compiler leave them out; ClusterNetworkPolicy ``nodes`` peers match the Node objects, not them).

- A pod's egress to a hostNetwork pod is egress to the node address: to its own node it passes
  the node's INPUT hook, to another node FORWARD on its own node; its egress rules decide
  (``nodes`` peers, ``networks``, NetworkPolicy ``ipBlock``), and nothing on the receiving node
  judges it as ingress (a node is no pod).
- A hostNetwork pod's traffic to a pod on its own node leaves through OUTPUT, marked
  ``MARK_HOST``: always allowed, as NetworkPolicy documents for "traffic to and from the node
  where a Pod is running". To a pod on another node it arrives there through FORWARD with the
  sending node's address, and the target's ingress rules judge it like any address that is no
  pod (an ``ipBlock`` may match it; pod and namespace peers never do).
- Between hostNetwork pods, and from a node to itself, nothing isolates anything: allowed.

Because a hostNetwork pod has no link to bring up, its responder listens before the store that
names the pod is published. That opens nothing early: verdicts about a node address depend on
Nodes and policies, never on the hostNetwork pods, so the pod's arrival changes no verdict, only
whether something answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.lab.processes import ProcessRef, recorded
from agent.lab.topology import NodeSpec

HostPort = tuple[int, str]
"""(port, protocol) a hostNetwork pod holds on its node."""


class HostNetworkError(ValueError):
    """A hostNetwork pod cannot be placed or is malformed; the message names pod and field."""


@dataclass
class LabHostPod:
    """A hostNetwork pod in the lab's record (``lab.json``): its node and its responder."""

    key: str
    """``namespace/name``."""
    node: str
    """The node whose network it shares."""
    host_ports: list[list[Any]] = field(default_factory=list)
    """[[port, protocol], ...]: every port it declares, SCTP too, which it holds on its node."""
    ports: list[list[Any]] = field(default_factory=list)
    """[[port, protocol], ...] the responder serves (TCP and UDP)."""
    responder_pid: int | None = None
    responder_start: int | None = None
    """The responder's start time (see ProcessRef)."""
    active: bool = False
    """True once the change that made it is in force (probes list it only then)."""

    @property
    def responder(self) -> ProcessRef | None:
        return recorded(self.responder_pid, self.responder_start)


def is_host_network(spec: Mapping[str, Any]) -> bool:
    return spec.get("hostNetwork") is True


def spec_problem(spec: Mapping[str, Any]) -> str | None:
    """What the API server would refuse in a hostNetwork pod's ports, or None: a ``hostPort``
    that differs from its ``containerPort`` (apis/core/validation, validateHostNetwork). The
    manifest loader has checked the rest (``hostNetwork`` is a boolean, ports are numbers)."""
    if not is_host_network(spec):
        return None
    for c_index, container in enumerate(spec.get("containers") or []):
        for p_index, port in enumerate(container.get("ports") or []):
            host_port = port.get("hostPort")
            if host_port not in (None, 0, port.get("containerPort")):
                return (
                    f"spec.containers[{c_index}].ports[{p_index}].hostPort: {host_port}: must "
                    "match containerPort when hostNetwork is true"
                )
    return None


def host_ports(spec: Mapping[str, Any]) -> list[HostPort]:
    """The (port, protocol) pairs a hostNetwork pod holds on its node: every declared container
    port (the lab reads ``spec.containers``, as it does for the ports it serves)."""
    ports: dict[HostPort, None] = {}
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            ports[(int(port["containerPort"]), str(port.get("protocol", "TCP")))] = None
    return list(ports)


def holders(pods: Iterable[LabHostPod]) -> dict[str, dict[HostPort, str]]:
    """Node name -> host port -> the key of the hostNetwork pod holding it there."""
    held: dict[str, dict[HostPort, str]] = {}
    for pod in pods:
        for port, protocol in pod.host_ports:
            held.setdefault(pod.node, {})[(int(port), str(protocol))] = pod.key
    return held


def place(
    key: str,
    ports: Sequence[HostPort],
    requested: str | None,
    ranked: Sequence[str],
    held: Mapping[str, Mapping[HostPort, str]],
) -> str:
    """The node a new hostNetwork pod runs on: ``requested`` (its ``spec.nodeName``) if given,
    else the first of ``ranked`` (the lab's placement order) where ``ports`` are free.

    ``held`` says which host ports the other hostNetwork pods hold on each node. Raises
    HostNetworkError when the requested node has one of them taken, or when no node fits."""
    if requested is not None:
        taken = _taken(ports, held.get(requested, {}))
        if taken:
            raise HostNetworkError(
                f"Pod {key}: spec.nodeName: on {requested} {taken}; the kubelet rejects a pod "
                "whose host ports are taken (choose another node or other ports)"
            )
        return requested
    for node in ranked:
        if not _taken(ports, held.get(node, {})):
            return node
    reasons = "; ".join(f"on {node} {_taken(ports, held.get(node, {}))}" for node in ranked)
    raise HostNetworkError(
        f"Pod {key}: spec.hostNetwork: no lab node has its host ports free ({reasons}); a "
        "cluster would leave it Pending (kube-scheduler: node(s) didn't have free ports for "
        "the requested pod ports): build the lab with more --nodes, or declare other ports"
    )


def _taken(ports: Sequence[HostPort], held: Mapping[HostPort, str]) -> str:
    """Which of ``ports`` are held, and by whom, for people; empty when all are free."""
    by_holder: dict[str, list[str]] = {}
    for port in ports:
        if port in held:
            by_holder.setdefault(held[port], []).append(f"{port[1]}/{port[0]}")
    return "; ".join(
        f"{', '.join(taken)} held by hostNetwork pod {holder}"
        for holder, taken in by_holder.items()
    )


def node_addresses(node: NodeSpec, ipv6: bool) -> list[str]:
    """The node's addresses a hostNetwork pod has: IPv4, then IPv6 in a dual-stack lab."""
    v6 = [node.node_ip_v6] if ipv6 and node.node_ip_v6 is not None else []
    return [node.node_ip_v4, *v6]


def pod_status(addresses: Sequence[str]) -> dict[str, Any]:
    """The ``status`` the kubelet reports for a running hostNetwork pod: its node's addresses as
    the pod's and the host's."""
    entries = [{"ip": address} for address in addresses]
    return {
        "phase": "Running",
        "hostIP": addresses[0],
        "hostIPs": entries,
        "podIP": addresses[0],
        "podIPs": [dict(entry) for entry in entries],
    }
