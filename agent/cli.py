"""The ``netpol-agent`` command: the daemon (``run``) and the one-machine lab (``lab ...``).

Entry points stay thin: parsing arguments and printing results; the work lives in
``agent.runner`` (the daemon) and ``agent.lab.lab`` (the lab).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.bench.command import add_bench_parser, run_bench
from agent.health import DEFAULT_HEALTH_PORT
from agent.signals import stop_on_signals
from enforcement.eventpump import DEFAULT_RATE as DEFAULT_RECORD_RATE

PROBE_PROTOCOLS = ("TCP", "UDP")


def _add_lab_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = commands.add_parser(
        "lab",
        help="a one-machine cluster in network namespaces, enforced by real agents",
        description="Build a cluster from ordinary Kubernetes manifests (Namespace, Pod, "
        "Deployment, NetworkPolicy, ClusterNetworkPolicy, Node labels, and the lab's "
        "ExternalHost) inside network namespaces, "
        "with a netpol-agent enforcing on every node. Needs root. Nothing outside the lab's "
        "own network namespaces is touched.",
    )
    verbs = lab.add_subparsers(dest="verb", required=True, metavar="VERB")

    def with_lab(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--lab", required=True, metavar="NAME", help="the lab's name")
        return parser

    def with_files(parser: argparse.ArgumentParser, required: bool) -> None:
        parser.add_argument(
            "-f",
            "--filename",
            dest="files",
            action="append",
            default=[],
            required=required,
            metavar="PATH",
            help="a manifest file (multi-document YAML, JSON, kind: List), a directory of "
            "them, or - for standard input; repeatable",
        )

    up = with_lab(verbs.add_parser("up", help="build the lab, start enforcing, apply files"))
    with_files(up, required=False)
    up.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    mode = up.add_mutually_exclusive_group()
    mode.add_argument(
        "--fail-open", action="store_true", help="let queued traffic pass while no agent listens"
    )
    mode.add_argument(
        "--fail-closed",
        action="store_true",
        help="drop queued traffic while no agent listens (the default)",
    )
    up.add_argument("--queue-num", type=int, default=1000, help="NFQUEUE number (default 1000)")
    up.add_argument(
        "--mode",
        choices=["fast", "per-packet"],
        default="fast",
        help="the agents' mode (see 'netpol-agent run --help')",
    )
    up.add_argument(
        "--queue-max-len", type=int, default=4096, help="the agents' kernel queue length"
    )
    up.add_argument(
        "--queue-workers", type=int, default=1, help="decision processes per agent (default 1)"
    )
    up.add_argument(
        "--trace",
        action="store_true",
        help="the agents log every verdict and its reason ('lab logs' shows them)",
    )
    up.add_argument(
        "--audit",
        action="store_true",
        help="the agents report what policy denies but let it through ('lab flows' shows it)",
    )
    up.add_argument(
        "--no-verdict-cache",
        action="store_true",
        help="fast mode: the agents ask the queue for every new connection (see 'netpol-agent "
        "run --help'); to measure what the cache saves",
    )
    up.add_argument(
        "--flow-log-rate",
        type=_rate,
        default=None,
        metavar="N",
        help="flow-log records a second each agent writes at most (default 10000: every "
        "connection of a probe; 'netpol-agent run --flow-log-rate' for a node's)",
    )
    up.add_argument(
        "--no-flow-log",
        action="store_true",
        help="the agents write no flow log ('lab flows' shows nothing); to measure its cost",
    )
    up.add_argument("--no-ipv6", action="store_true", help="IPv4 only (default: dual-stack)")
    up.add_argument(
        "--no-agent",
        action="store_true",
        help="build the network only; run your own agent (or another enforcer) in the node "
        "namespaces",
    )

    def with_timeout(parser: argparse.ArgumentParser) -> None:
        from agent.lab import WAIT_SECONDS

        parser.add_argument(
            "--timeout",
            type=float,
            default=WAIT_SECONDS,
            metavar="SECONDS",
            help="how long to wait for every agent to enforce the change, restarts of a dead "
            f"agent included (default {WAIT_SECONDS:g}); past it the change is rolled back",
        )

    with_timeout(up)
    for verb, text in (("apply", "create or replace objects"), ("delete", "delete objects")):
        parser = with_lab(
            verbs.add_parser(verb, help=f"{text}; returns when in force (all or nothing)")
        )
        with_files(parser, required=True)
        with_timeout(parser)

    get = with_lab(verbs.add_parser("get", help="list lab objects"))
    get.add_argument("resource", choices=["pods"], help="what to list")
    get.add_argument("-o", "--output", choices=["json", "table"], default="table")

    probe = with_lab(
        verbs.add_parser("probe", help="try every ordered pair of pods and print the matrix")
    )
    probe.add_argument("--port", type=int, required=True)
    probe.add_argument("--protocol", choices=PROBE_PROTOCOLS, default="TCP", type=str.upper)
    probe.add_argument("-o", "--output", choices=["json", "table"], default="table")
    probe.add_argument("--family", type=int, choices=[4, 6], default=4, help="IP family")
    probe.add_argument("--timeout", type=float, default=1.5, help="seconds per attempt")
    probe.add_argument(
        "--external", action="store_true", help="include external hosts as sources and targets"
    )

    flows = with_lab(
        verbs.add_parser(
            "flows", help="the agents' flow logs: every decided connection and what decided it"
        )
    )
    flows.add_argument(
        "-o",
        "--output",
        choices=["json", "table"],
        default="table",
        help="json: a JSON list of records (with --follow: one JSON object per line)",
    )
    flows.add_argument("--follow", action="store_true", help="keep printing new records")
    flows.add_argument("--pod", metavar="NS/NAME", help="only flows from or to this pod")
    flows.add_argument("--verdict", choices=["allowed", "denied"], help="only this verdict")

    with_lab(verbs.add_parser("down", help="stop the agents, remove every namespace and rule"))
    logs = with_lab(verbs.add_parser("logs", help="print the agents' logs"))
    logs.add_argument("--tail", type=int, default=50, help="lines per node (0: all)")
    verbs.add_parser("list", help="list the labs on this machine")
    from agent import explain_cli

    explain_cli.add_lab_parsers(verbs, with_lab)


def _add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="the node daemon: enforce NetworkPolicies for this node's pods",
        description="Watch cluster state, compile allow tables for this node's pods and decide "
        "the packets the kernel queues. Runs in the node's network namespace, as root.",
    )
    run.add_argument(
        "--source",
        choices=["kubernetes", "lab"],
        default="kubernetes",
        help="where cluster state comes from: the Kubernetes API (default) or a lab store",
    )
    run.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: in-cluster configuration from the service account)",
    )
    run.add_argument("--lab-store", type=Path, help="the lab store file (with --source lab)")
    run.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node's name, as in spec.nodeName (default: $NODE_NAME, set from the "
        "downward API in daemonset.yaml)",
    )
    run.add_argument("--status-file", type=Path, help="write status JSON here after each sync")
    run.add_argument(
        "--queue-num",
        type=int,
        default=1000,
        help="NFQUEUE number (default 1000; kindnet uses 100)",
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--fail-open",
        action="store_true",
        help="accept queued traffic when the agent is absent or errs; rules are removed on exit",
    )
    mode.add_argument(
        "--fail-closed",
        action="store_true",
        help="drop queued traffic when the agent is absent or errs (the default); rules stay "
        "in place on exit so isolated pods stay isolated",
    )
    run.add_argument(
        "--mode",
        choices=["fast", "per-packet"],
        default="fast",
        help="fast (default): only each connection's first packet is decided in userspace and "
        "the kernel passes the rest; per-packet: every packet of isolated pods is decided "
        "against the agent's own flow table",
    )
    run.add_argument(
        "--no-verdict-cache",
        action="store_true",
        help="fast mode: ask the queue for every new connection. By default the kernel "
        "remembers each allow verdict by (source, destination, protocol, destination port) "
        "and admits the next connection of the same tuple without asking, until the next "
        "change (docs/design-verdict-cache.md)",
    )
    run.add_argument(
        "--pod-cidr",
        action="append",
        default=[],
        type=_pod_cidr,
        metavar="CIDR",
        help="this node's pod range (repeatable, one per family): traffic of addresses in it "
        "that are no known pod yet is dropped until the pod is known, so a new pod is enforced "
        "from its first packet. Default with --source kubernetes: the ranges of the Node's "
        "spec.podCIDRs, followed as they change; giving --pod-cidr overrides them (the Node is "
        "then not read), for network plugins that allocate pod addresses themselves",
    )
    run.add_argument(
        "--discovery-interval",
        type=_seconds,
        metavar="SECONDS",
        help="with --source kubernetes: how often API discovery looks again for the "
        "ClusterNetworkPolicy CRD while it is not served, so one installed later is enforced "
        "(default 30; agent.sources.kubernetes.DISCOVERY_INTERVAL)",
    )
    run.add_argument(
        "--queue-workers",
        type=int,
        default=1,
        help="decide in N processes, one queue each (--queue-balance across queue-num.."
        "queue-num+N-1), to use more than one core (default 1: a thread)",
    )
    run.add_argument(
        "--max-flows", type=int, default=262144, help="flow table size bound (default 262144)"
    )
    run.add_argument(
        "--queue-max-len", type=int, default=4096, help="kernel queue length (default 4096)"
    )
    run.add_argument(
        "--anti-spoofing",
        action="store_true",
        help="drop packets whose source address does not route back out of the interface they "
        "came in on (strict reverse-path filtering in the raw table), for sources in the pod "
        "ranges and packets from --pod-interface: a pod cannot pass for another. Only for nodes "
        "that route each pod's addresses to its own interface (Calico, kindnet); see "
        "enforcement/firewall.py and docs/security.md for when not to use it",
    )
    run.add_argument(
        "--pod-interface",
        action="append",
        default=[],
        metavar="PATTERN",
        help="with --anti-spoofing: this node's pod interfaces, iptables -i syntax (repeatable, "
        "e.g. cali+ or veth+); every packet they bring in is checked, whatever its source",
    )
    run.add_argument(
        "--trace",
        action="store_true",
        help="log every packet's verdict with the rule that decided it (slow; for people)",
    )
    run.add_argument(
        "--flow-log",
        metavar="PATH",
        help="write one JSON line per decided connection (source, destination, verdict, the "
        "rules that decided) to PATH, appended, or to standard output with -",
    )
    run.add_argument(
        "--flow-log-rate",
        type=_rate,
        default=DEFAULT_RECORD_RATE,
        metavar="N",
        help=f"flow-log records a second per queue worker (default {DEFAULT_RECORD_RATE:g}, "
        "in bursts of one second's worth; the kernel applies it too to what it logs); what "
        "is held back is counted in a 'suppressed' line",
    )
    run.add_argument(
        "--audit",
        action="store_true",
        help="audit mode: decide and report every connection, but let through what policy "
        "denies (the flow log says 'enforced': false); for trying policies on a live cluster",
    )
    run.add_argument(
        "--health-port",
        type=int,
        default=DEFAULT_HEALTH_PORT,
        help=f"port of /healthz, /readyz and /metrics (default {DEFAULT_HEALTH_PORT}; 0 turns "
        "them off)",
    )
    run.add_argument(
        "--health-address",
        default="0.0.0.0",
        help="address to serve them on (default 0.0.0.0: all of the node's IPv4 addresses, "
        "which the kubelet's probes and scrapers from other nodes need; :: for IPv6 too)",
    )
    run.add_argument(
        "--health-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="only these sources may connect (repeatable, e.g. the Prometheus pods' range); "
        "others are closed without an answer. The node itself is always allowed. Default: "
        "any source. A NetworkPolicy cannot protect this port: it is on the host network",
    )
    run.add_argument(
        "--policy-metrics",
        action="store_true",
        help="expose connections per policy on /metrics (kind, namespace, name, tier, action, "
        "direction, verdict; at most 1000 series, the rest summed as '_other')",
    )
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text: 'message key=value ...' lines; json: one object per line, fields as keys",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _rate(text: str) -> float:
    """A positive, finite number of records a second."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return rate


def _seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (seconds > 0 and math.isfinite(seconds)):  # nan compares false
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return seconds


def _pod_cidr(text: str) -> str:
    """A ``--pod-cidr`` value: a network in CIDR notation, without host bits, narrower than /0."""
    try:
        network = ipaddress.ip_network(text.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a network in CIDR notation: {error}") from None
    if network.prefixlen == 0:
        raise argparse.ArgumentTypeError(f"{text} covers every address, not a node's pod range")
    return str(network)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netpol-agent",
        description="A Kubernetes NetworkPolicy enforcer on NFQUEUE, with a one-machine lab.",
    )
    from agent.metrics import version

    parser.add_argument("--version", action="version", version=f"netpol-agent {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parser(commands)
    _add_lab_parsers(commands)
    add_bench_parser(commands)
    from agent import explain_cli

    explain_cli.add_parsers(commands)
    cleanup = commands.add_parser(
        "cleanup",
        help="remove the agent's rules and address sets from this network namespace",
    )
    cleanup.add_argument("--queue-num", type=int, default=1000)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        raise SystemExit(_run(args))
    if args.command == "lab":
        raise SystemExit(_lab(args))
    if args.command == "bench":
        raise SystemExit(run_bench(args))
    if args.command in ("explain", "describe"):
        from agent import explain_cli

        raise SystemExit(explain_cli.run(args))
    if args.command == "cleanup":
        from enforcement.firewall import Firewall, FirewallConfig

        Firewall(FirewallConfig(queue_num=args.queue_num)).remove()
        return


def _configure_logging(args: argparse.Namespace) -> None:
    from agent.logs import configure_logging

    configure_logging(json_format=args.log_format == "json", verbose=args.verbose)


def _run(args: argparse.Namespace) -> int:
    from agent.health import HealthConfig, HealthServer, parse_allow
    from agent.runner import Agent, AgentConfig
    from agent.sources import Source
    from enforcement.firewall import FirewallConfig

    _configure_logging(args)
    log = logging.getLogger("netpol-agent")
    if not args.node_name:
        log.error("no node name: pass --node-name or set NODE_NAME")
        return 2
    try:
        health_config = HealthConfig(
            address=args.health_address, port=args.health_port, allow=parse_allow(args.health_allow)
        )
    except ValueError as error:
        log.error("%s", error)
        return 2
    source: Source
    if args.source == "lab":
        from agent.sources.lab_store import LabStoreSource

        if args.lab_store is None:
            log.error("--source lab needs --lab-store PATH")
            return 2
        source = LabStoreSource(args.lab_store)
    else:
        from agent.sources.kubernetes import (
            DISCOVERY_INTERVAL,
            KubernetesSource,
            api_client_from,
        )

        # --pod-cidr overrides the Node's own ranges: then the Node is not read at all.
        follow_node = None if args.pod_cidr else args.node_name
        try:
            source = KubernetesSource(
                api_client_from(args.kubeconfig),
                node_name=follow_node,
                discovery_interval=args.discovery_interval or DISCOVERY_INTERVAL,
            )
        except Exception as error:  # no kubeconfig, no service account: say so and stop
            log.error("cannot configure the Kubernetes client: %s", error)
            return 2
    config = AgentConfig(
        node_name=args.node_name,
        firewall=FirewallConfig(
            queue_num=args.queue_num,
            queue_count=args.queue_workers,
            pod_cidrs=tuple(args.pod_cidr),
            anti_spoofing=args.anti_spoofing,
            pod_interfaces=tuple(args.pod_interface),
            fail_open=args.fail_open,
            mode=args.mode,
            verdict_cache=not args.no_verdict_cache,
        ),
        max_flows=args.max_flows,
        queue_max_len=args.queue_max_len,
        status_file=args.status_file,
        flow_log=args.flow_log,
        record_rate=args.flow_log_rate,
        trace=args.trace,
        audit=args.audit,
        policy_metrics=args.policy_metrics,
    )
    if args.anti_spoofing and not args.pod_interface:
        log.warning(
            "--anti-spoofing without --pod-interface checks only sources inside the pod ranges: "
            "a pod can still pass for an address outside them"
        )
    from agent.node_checks import bridged_traffic_problems

    for problem in bridged_traffic_problems():
        log.error("%s", problem)
    from agent.flowlog import FlowLogWriter, TraceWriter
    from enforcement.eventpump import Sink

    sinks: list[Sink] = []
    if args.trace:
        sinks.append(TraceWriter())
    flow_log = None
    if args.flow_log:
        try:
            flow_log = FlowLogWriter(args.flow_log, args.node_name)
        except OSError as error:
            log.error("cannot open the flow log %s: %s", args.flow_log, error)
            return 2
        sinks.append(flow_log)
    if args.audit:
        log.warning("audit mode: connections that policy denies are let through and reported")
    agent = Agent(config, source, record_sinks=tuple(sinks))
    stop = threading.Event()
    stop_on_signals(stop)
    health = None
    try:
        if args.health_port:
            health = HealthServer(agent, health_config).start()
        agent.run(stop)
    except Exception:
        log.exception("the agent failed")
        return 1
    finally:
        if health is not None:
            health.close()
        if flow_log is not None:
            flow_log.close()
    return 0


def _lab(args: argparse.Namespace) -> int:
    from agent.lab.lab import Lab, LabError, lab_root
    from agent.lab.probe import format_matrix
    from agent.manifests import printable

    if args.verb == "list":
        root = lab_root()
        for path in sorted(root.glob("*/lab.json")) if root.exists() else []:
            print(path.parent.name)
        return 0
    try:
        lab = Lab(args.lab)
        if args.verb == "up":
            lab.up(
                args.files,
                nodes=args.nodes,
                fail_open=args.fail_open,
                queue_num=args.queue_num,
                mode=args.mode,
                queue_max_len=args.queue_max_len,
                queue_workers=args.queue_workers,
                trace=args.trace,
                audit=args.audit,
                flow_log=not args.no_flow_log,
                **({} if args.flow_log_rate is None else {"flow_log_rate": args.flow_log_rate}),
                verdict_cache=not args.no_verdict_cache,
                ipv6=not args.no_ipv6,
                agents=not args.no_agent,
                timeout=args.timeout,
            )
            _print_messages(lab.messages)
            state = "no agent running" if args.no_agent else "enforcement active"
            print(f"lab {args.lab} is up: {len(lab.pods())} pods, {state}")
        elif args.verb == "apply":
            lab.apply(args.files, timeout=args.timeout)
            _print_messages(lab.messages)
            print("applied; in force")
        elif args.verb == "delete":
            lab.delete(args.files, timeout=args.timeout)
            _print_messages(lab.messages)
            print("deleted; in force")
        elif args.verb == "get":
            pods = lab.pods()
            if args.output == "json":
                print(json.dumps(pods, indent=2))
            else:
                _print_pod_table(pods)
        elif args.verb == "probe":
            matrix = lab.probe(
                args.port,
                args.protocol,
                family=args.family,
                timeout=args.timeout,
                include_external=args.external,
            )
            if args.output == "json":
                print(json.dumps({"port": args.port, "protocol": args.protocol, "matrix": matrix}))
            else:
                print(f"{args.protocol}/{args.port} over IPv{args.family}:")
                print(format_matrix(matrix))
        elif args.verb == "flows":
            _lab_flows(lab, args)
        elif args.verb in ("explain", "describe"):
            from agent import explain_cli

            return explain_cli.run_lab(args, lab.objects())
        elif args.verb == "logs":
            for node, text in lab.agent_logs().items():
                lines = text.splitlines()
                summary = lab.restart_summary(node)
                print(f"== {node}" + (f" ({summary})" if summary else ""))
                print("\n".join(lines[-args.tail :] if args.tail else lines))
        elif args.verb == "down":
            lab.down()
            print(f"lab {args.lab} is down")
    except LabError as error:
        print(f"netpol-agent lab {args.verb}: {printable(str(error))}", file=sys.stderr)
        return 1
    return 0


def _lab_flows(lab: Any, args: argparse.Namespace) -> None:
    from agent.flowlog import format_table
    from agent.lab.flows import FlowFilter, follow_flows, read_flows

    keep = FlowFilter(pod=args.pod, verdict=args.verdict)
    paths = lab.flow_log_paths
    if not args.follow:
        records = read_flows(paths(), keep)
        if args.output == "json":
            print(json.dumps(records, indent=2))
        elif records:
            print(format_table(records))
        return
    header = args.output == "table"
    try:
        for record in follow_flows(paths, keep):
            if args.output == "json":
                print(json.dumps(record), flush=True)
            else:
                table = format_table([record]).splitlines()
                print("\n".join(table if header else table[1:]), flush=True)
                header = False
    except KeyboardInterrupt:
        pass


def _print_messages(messages: list[str]) -> None:
    from agent.manifests import printable  # the notes name objects from files: escape them

    for message in messages:
        print(f"note: {printable(message)}", file=sys.stderr)


def _print_pod_table(pods: list[dict[str, Any]]) -> None:
    rows = [("NAMESPACE", "NAME", "IPS", "LABELS")]
    for pod in pods:
        labels = ",".join(f"{k}={v}" for k, v in sorted(pod["labels"].items())) or "<none>"
        rows.append((pod["namespace"], pod["name"], ",".join(pod["ips"]), labels))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[3]
        )


if __name__ == "__main__":
    main()
