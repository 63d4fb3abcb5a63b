"""``netpol-agent explain`` and ``describe``, offline over manifest files or against a lab.

The work is pure (``enforcement.explain``, ``enforcement.describe``); this module reads the
cluster state (manifest files through ``agent.manifests``, or a lab's store), converts it as
the agent does (``agent.state.ClusterState``: the same converters and fail-closed stand-ins),
and prints. Bad input (an unknown pod, a malformed manifest, a port out of range) is one line
on standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from agent.explain_text import render_explanation
from agent.manifests import ManifestError, load_manifests, printable
from enforcement.describe import describe_pod, describe_policy
from enforcement.explain import explain
from enforcement.explanation import ExplainError, find_endpoint
from enforcement.model import PROTOCOL_NUMBERS, ClusterSnapshot

PROTOCOLS = tuple(PROTOCOL_NUMBERS)
"""TCP, UDP, SCTP: what a NetworkPolicy port can name."""

USAGE_ERROR = 2
"""Exit status for input that cannot be explained (argparse uses it for bad arguments too)."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {port}")
    return port


def _protocol(text: str) -> str:
    if text.upper() not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(PROTOCOLS)}, got {text!r}")
    return text.upper()


def _with_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="PATH",
        help="a manifest file (Namespaces, Pods with status.podIPs when known, Deployments, "
        "NetworkPolicies, ClusterNetworkPolicies, Nodes), a directory of them, or - for "
        "standard input; repeatable",
    )


def _with_flow(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="NS/POD|IP",
        help="the source: namespace/name of a pod, or an address (an external host, a node)",
    )
    parser.add_argument(
        "--to",
        dest="destination",
        required=True,
        metavar="NS/POD|IP",
        help="the destination: namespace/name of a pod, or an address",
    )
    parser.add_argument("--port", type=_port, required=True, help="the destination port")
    parser.add_argument(
        "--protocol", type=_protocol, default="TCP", help="TCP (default), UDP or SCTP"
    )
    parser.add_argument(
        "--family",
        type=int,
        choices=[4, 6],
        help="which address of a dual-stack pod (default: IPv4 when it has one)",
    )
    parser.add_argument(
        "--node",
        help="explain what this node decides (only its own pods' directions); default: the "
        "cluster (egress on the source's node, ingress on the destination's)",
    )
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")


def _with_describe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["pod", "policy"], help="pod NS/NAME or policy [NS/]NAME")
    parser.add_argument(
        "name",
        metavar="NAME",
        help="pod: namespace/name; policy: namespace/name of a NetworkPolicy, or the name of "
        "a ClusterNetworkPolicy",
    )


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``explain`` and ``describe``, offline over manifest files."""
    explain_parser = commands.add_parser(
        "explain",
        help="why a flow is allowed or denied, from manifest files",
        description="Walk the tiers for one flow (Admin ClusterNetworkPolicies, "
        "NetworkPolicies, Baseline ClusterNetworkPolicies) for the source's egress and the "
        "destination's ingress, and say which rule decides, as the dataplane would.",
    )
    _with_files(explain_parser)
    _with_flow(explain_parser)
    describe_parser = commands.add_parser(
        "describe",
        help="what selects a pod, or what a policy selects and admits, from manifest files",
    )
    _with_describe(describe_parser)
    _with_files(describe_parser)


def add_lab_parsers(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    with_lab: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """``lab explain`` and ``lab describe``: the same, against a lab's live objects."""
    _with_flow(with_lab(verbs.add_parser("explain", help="why a flow is allowed or denied")))
    _with_describe(
        with_lab(verbs.add_parser("describe", help="what selects a pod, what a policy selects"))
    )


def run(args: argparse.Namespace) -> int:
    """``explain`` or ``describe`` over ``args.files``."""
    try:
        snapshot, notes = snapshot_from_files(args.files)
    except ManifestError as error:
        return _fail(args.command, str(error))
    return _answer(args.command, args, snapshot, notes)


def run_lab(args: argparse.Namespace, objects: Iterable[Mapping[str, Any]]) -> int:
    """``lab explain`` or ``lab describe`` over the lab's objects."""
    snapshot, notes = snapshot_from_objects(objects)
    return _answer(f"lab {args.verb}", args, snapshot, notes)


def _answer(
    command: str, args: argparse.Namespace, snapshot: ClusterSnapshot, notes: Sequence[str]
) -> int:
    for note in notes:
        print(f"note: {printable(note)}", file=sys.stderr)
    try:
        if command.endswith("explain"):
            _check_node(snapshot, args.node)
            source = find_endpoint(snapshot, args.source, args.family)
            destination = find_endpoint(snapshot, args.destination, args.family)
            explanation = explain(
                snapshot,
                source,
                destination,
                PROTOCOL_NUMBERS[args.protocol],
                args.port,
                node=args.node,
            )
            if args.output == "json":
                print(json.dumps(explanation.as_dict(), indent=2))
            else:
                print(render_explanation(explanation))
            return 0
        if args.what == "pod":
            lines = describe_pod(snapshot, args.name)
        else:
            namespace, _, name = args.name.rpartition("/")
            lines = describe_policy(snapshot, namespace or None, name)
        print("\n".join(printable(line) for line in lines))
        return 0
    except ExplainError as error:
        return _fail(command, str(error))


def _check_node(snapshot: ClusterSnapshot, node: str | None) -> None:
    """``--node`` must name a node of the cluster: one with a Node object or a pod on it (a
    typo would otherwise explain a node that enforces nothing)."""
    if node is None:
        return
    known = {n.name for n in snapshot.nodes}
    known |= {p.node_name for p in snapshot.pods if p.node_name}
    known |= {p.node_name for p in snapshot.unreadable_pods if p.node_name}
    if node not in known:
        raise ExplainError(f"no node {node} (nodes: {', '.join(sorted(known)) or 'none'})")


def _fail(command: str, message: str) -> int:
    print(f"netpol-agent {command}: {printable(message)}", file=sys.stderr)
    return USAGE_ERROR


def snapshot_from_files(paths: Sequence[str]) -> tuple[ClusterSnapshot, list[str]]:
    """The cluster state manifest files describe (Deployments expanded into their pods, as the
    lab does), and notes on what was left out; ManifestError for a malformed file."""
    from agent.lab.lab import deployment_pods

    objects: list[Mapping[str, Any]] = []
    notes: list[str] = []
    for manifest in load_manifests(paths):
        if manifest.obj.get("kind") == "Deployment":
            objects += deployment_pods(manifest.obj)
        else:
            objects.append(manifest.obj)
    snapshot, errors = snapshot_from_objects(objects)
    return snapshot, notes + errors


def snapshot_from_objects(
    objects: Iterable[Mapping[str, Any]],
) -> tuple[ClusterSnapshot, list[str]]:
    """Objects as the agent converts them (fail-closed stand-ins included), and a note per
    object that could not be taken as it is. Kinds the agent does not read are skipped."""
    from agent.state import KINDS, ClusterState

    by_kind: dict[str, list[Mapping[str, Any]]] = {kind: [] for kind in KINDS}
    for obj in objects:
        kind = obj.get("kind")
        if isinstance(kind, str) and kind in by_kind:
            by_kind[kind].append(obj)
    state = ClusterState()
    state.replace_all(by_kind, source_version=None)
    notes = [
        f"{error.kind} {'/'.join(part for part in error.key if part)}: {error.message}"
        for error in state.errors()
    ]
    return state.view().snapshot, notes
