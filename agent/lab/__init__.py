"""The one-machine lab: network namespaces wired like a routed Kubernetes node.

``netns`` enters namespaces and runs commands in them, ``topology`` describes and builds the node,
pod and external-host namespaces, ``responder`` is the echo server pods run and ``probe`` measures
who can reach whom. ``supervisor`` restarts a node's agent when it exits (the lab's kubelet) and
``processes`` names the processes the lab starts so a reused PID is never signalled. The
orchestration (object store, IP allocation, CLI) lives in ``lab.lab``.
"""

WAIT_SECONDS = 30.0
"""How long a lab command waits for every agent to enforce a change, restarts included (here,
not in ``lab.lab``, so the command line can show it without importing the whole lab)."""
