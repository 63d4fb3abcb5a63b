"""The one-machine lab: network namespaces wired like a routed Kubernetes node.

``netns`` enters namespaces and runs commands in them, ``topology`` describes and builds the node,
pod and external-host namespaces, ``responder`` is the echo server pods run and ``probe`` measures
who can reach whom. The orchestration (object store, IP allocation, CLI) lives in ``lab.lab``.
"""
