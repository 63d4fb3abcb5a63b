"""``netpol-agent bench``: what enforcement costs, measured on this machine.

The daemon never imports this package's modules; ``agent.cli`` imports only
:mod:`agent.bench.command` (the command line, standard library only), which imports a harness
when a benchmark runs. Layout:

- ``command``: the options of ``bench`` and ``bench scale`` and the dispatch;
- shared helpers: ``stats`` (the one percentile formula), ``machine`` (the machine's
  description, CPU time and memory of processes), ``targets`` (met / NOT met), ``charts`` (PNG
  panels), ``output`` (tables, progress, result files);
- ``throughput``: ``bench``, five enforcement configurations of a lab side by side, and
  ``kernel_peer``, the same policies as plain iptables rules, its comparison point;
- ``scale``: ``bench scale``, the compiler on synthetic clusters;
- run by hand: ``compile_stall`` (a queued packet's wait behind a compile) and ``revocation``
  (cutting connections after a policy change, against a full conntrack table).

This file stays empty of code: importing ``agent.bench.command`` imports it first.
"""
