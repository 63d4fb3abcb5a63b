"""The throughput benchmark: what enforcing a NetworkPolicy costs, side by side, in one run.

Six configurations of the same lab (one node; pods ``bench/client``, ``bench/server`` and
``bench/other``; one policy that isolates the server for ingress and allows the client on TCP 80,
TCP 5201 and UDP 5201):

- ``none``: no enforcement at all (``lab up --no-agent``): the physical limit of this machine;
- ``kernel``: the same policy compiled into plain iptables rules (``agent.bench.kernel_peer``,
  what Calico's or kube-router's iptables mode does), installed in the node namespace, no agent;
- ``fast``: the agent in its default mode (first packet of a connection decided in userspace,
  the rest passed by the kernel through a connmark; the next connections of an allowed tuple
  admitted by the kernel's verdict cache), without a flow log;
- ``fast-no-cache``: the same with ``--no-verdict-cache``: every new connection asks the agent;
- ``fast-flow-log``: the same with ``--flow-log`` to a file (one JSON line per connection,
  and the NFLOG reader of the connections the kernel passes alone);
- ``per-packet``: the agent deciding every packet of the isolated server in userspace.

Switching: every configuration gets a lab of its own, built and removed around its loads
(``Lab.up`` with or without an agent, then ``Lab.down``), so each one starts from fresh
namespaces, an empty conntrack table and no rules left by the previous one, and the agent runs
exactly as the lab runs it. Rounds interleave the six (none, kernel, fast, fast-no-cache,
fast-flow-log, per-packet, none, ...), so slow drifts of the machine (thermal, other load)
spread over all of them; the report gives the median per configuration and its ratio to the
baseline measured in the same run.

Loads, from real tools, client pod to server pod, each ``seconds`` long:

- TCP bulk throughput with 1 and with 4 streams: ``iperf3 -J`` (``sum_received``);
- small UDP packets: ``iperf3 -u -l 64 -b 0`` (unlimited rate); the figure is the packets the
  server received per second (sent minus lost);
- new TCP connections per second: ``wrk -H "Connection: close"`` against nginx (one worker),
  one request per connection;
- with an agent: its mean decision time (``netpol_agent_decision_seconds_sum`` over
  ``netpol_agent_packets_total``, across all loads) and, in per-packet mode, the packets its
  worker decided per second during the UDP load.

The agent exposes only a sum and a count of decision times, so p50 and p99 come from a replay:
the same parse-and-decide code (``parse_packet`` + ``decide``) against the tables compiled from
the lab's own cluster state, timed per packet, for connection-opening packets (what the fast
path decides) and for packets of an established connection (what per-packet mode adds).

Safety: everything happens inside the lab's network namespaces (servers, clients, rules); the
lab is removed on every exit path, Ctrl-C included.

Modules: ``config`` (configurations, lab manifest, figures, settings), ``tools`` (parsing the
tools' output), ``lab`` (servers, commands and the agent's counters in the lab), ``bench`` (one
run), ``replay`` (the decision replay), ``report`` (medians, ratios, targets, table, JSON),
``chart`` (the PNG) and ``run`` (the command).
"""
