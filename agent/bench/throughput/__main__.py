"""``python -m agent.bench.throughput``: the same as ``netpol-agent bench``."""

from agent.bench.throughput.run import main

raise SystemExit(main())
