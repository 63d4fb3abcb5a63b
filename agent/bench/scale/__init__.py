"""``netpol-agent bench scale``: what large clusters cost the compiler (pure computation).

No root, no network namespaces, no traffic: a seeded generator builds synthetic clusters
(:func:`agent.bench.scale.cluster.generate_cluster`) and the compiler
(:func:`enforcement.compiler.compile_tables`) and the tables' lookup
(:meth:`enforcement.tables.AllowTables.evaluate`) are timed on them. Each size is measured in a
fresh worker process (``python -m agent.bench.scale --worker SPEC``, ``worker``) so that its peak
memory is its own; the worker reports its figures as JSON lines on standard output and the
parent (:func:`agent.bench.scale.run.run_scale`) gathers them into a ``ScaleReport``, prints a
table, checks the issue's targets and writes ``scale-<timestamp>.json`` and ``.png``.

Figures per size:

- *full compile*: ``compile_tables(snapshot, "node-1")`` on the whole snapshot, and the peak
  resident memory of the worker when it is done (and the baseline before the snapshot existed);
- *one change in force*: what the runner does today after a watch event, the new snapshot built
  from the state's maps (as ``ClusterState.view``) and compiled in full, for a pod relabel, a
  namespace relabel and a policy added. Converting the one changed object and syncing the
  firewall (node-local address sets) come on top and are not measured here;
- *decision time*: ``AllowTables.evaluate`` on a fixed mix of flows, each touching a local pod
  that is isolated at every policy count, with the same pods and 10, 100, ... policies (the
  clusters with fewer policies are namespaces adopting NetworkPolicy one after the other, see
  ``SyntheticCluster.adoption_order``).

Modules: ``sizes`` (cluster sizes), ``plans`` (namespaces, workloads, pods), ``policies`` (the
policy shapes), ``cluster`` (the synthetic cluster), ``changes`` (the measured changes),
``flows`` (the decision-time mix), ``timing`` (timing decisions), ``worker`` (one size in a fresh
process), ``results`` (figures per size, the report, the targets), ``table`` and ``chart`` (the
printed report and the PNG) and ``run`` (the command).
"""
