"""``python -m agent.bench.scale``: the same as ``netpol-agent bench scale``; with
``--worker SPEC`` the worker process of one size."""

from agent.bench.scale.run import main

raise SystemExit(main())
