"""An expected reachability matrix between pods, built like the upstream e2e suite's.

Pods are named ``namespace/pod``. Start from "everything allowed" (or "nothing allowed") and
carve out what a case's policies change::

    expected = Reachability(PODS, True)
    expected.expect_peer("*", "x/*", False)  # nothing reaches namespace x ...
    expected.expect("x/b", "x/a", True)  # ... except x/b, which reaches x/a

A selector is ``ns/pod`` where either part may be ``*``; ``*`` alone means every pod. A pod
always reaches itself (that goes over its own loopback and never meets a policy), so self-pairs
stay True whatever is expected.

``diff(observed)`` compares with a probed matrix (``{"x/a": {"x/b": True, ...}, ...}``) and
renders a truth table with the mismatches marked; it is empty when both agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Matrix = Mapping[str, Mapping[str, bool]]
"""from pod -> to pod -> reachable."""

ALLOWED = "."
BLOCKED = "X"


class Reachability:
    """A mutable from x to matrix of expected verdicts; the setters return ``self``."""

    def __init__(self, pods: Iterable[str], default: bool) -> None:
        self.pods: tuple[str, ...] = tuple(pods)
        """Every pod, ``namespace/name``, in the order rows and columns are shown."""
        for pod in self.pods:
            _split(pod)
        self._matrix: dict[str, dict[str, bool]] = {
            source: {target: default or source == target for target in self.pods}
            for source in self.pods
        }

    # -- building ---------------------------------------------------------------------------

    def expect(self, from_: str, to: str, value: bool) -> Reachability:
        """One pair, both named exactly."""
        for pod in (from_, to):
            if pod not in self._matrix:
                raise KeyError(f"no pod {pod!r} (pods: {', '.join(self.pods)})")
        self._set(from_, to, value)
        return self

    def expect_peer(self, from_: str, to: str, value: bool) -> Reachability:
        """Every pair whose source matches selector ``from_`` and target matches ``to``."""
        sources = self.select(from_)
        targets = self.select(to)
        for source in sources:
            for target in targets:
                self._set(source, target, value)
        return self

    def expect_all_ingress(self, pod: str, value: bool) -> Reachability:
        """Every pod to ``pod``."""
        return self.expect_peer("*", self._exact(pod), value)

    def expect_all_egress(self, pod: str, value: bool) -> Reachability:
        """``pod`` to every pod."""
        return self.expect_peer(self._exact(pod), "*", value)

    def select(self, selector: str) -> list[str]:
        """The pods a selector (``ns/pod``, either part ``*``, or ``*``) stands for."""
        if selector == "*":
            return list(self.pods)
        namespace, name = _split(selector)
        chosen = [
            pod
            for pod in self.pods
            if namespace in ("*", _split(pod)[0]) and name in ("*", _split(pod)[1])
        ]
        if not chosen:
            raise KeyError(f"selector {selector!r} matches no pod (pods: {', '.join(self.pods)})")
        return chosen

    def _exact(self, pod: str) -> str:
        if pod not in self._matrix:
            raise KeyError(f"no pod {pod!r} (pods: {', '.join(self.pods)})")
        return pod

    def _set(self, source: str, target: str, value: bool) -> None:
        if source != target:  # loopback: always allowed
            self._matrix[source][target] = value

    # -- reading ----------------------------------------------------------------------------

    def get(self, from_: str, to: str) -> bool:
        return self._matrix[from_][to]

    def matrix(self) -> dict[str, dict[str, bool]]:
        """A copy, in the shape ``lab probe -o json`` prints."""
        return {source: dict(row) for source, row in self._matrix.items()}

    def copy(self) -> Reachability:
        clone = Reachability(self.pods, True)
        clone._matrix = self.matrix()
        return clone

    def allowed_count(self) -> int:
        return sum(value for row in self._matrix.values() for value in row.values())

    def diff(self, observed: Matrix) -> str:
        """A truth table of ``observed`` with every disagreement marked; "" when equal.

        Each cell shows the observed verdict (``.`` reachable, ``X`` blocked); a mismatch is
        bracketed, ``[.]`` or ``[X]``, and ``?`` means the pair is missing from ``observed``.
        A list of the mismatched pairs follows the table.
        """
        mismatches: list[str] = []
        cells: dict[tuple[str, str], str] = {}
        for source in self.pods:
            for target in self.pods:
                expected = self._matrix[source][target]
                got = observed.get(source, {}).get(target)
                symbol = "?" if got is None else (ALLOWED if got else BLOCKED)
                if got is expected:
                    cells[source, target] = f" {symbol} "
                else:
                    cells[source, target] = f"[{symbol}]"
                    mismatches.append(
                        f"  {source} -> {target}: expected {_word(expected)}, "
                        f"observed {'missing' if got is None else _word(got)}"
                    )
        extra = sorted(
            f"{source} -> {target}"
            for source, row in observed.items()
            for target in row
            if source not in self._matrix or target not in self._matrix
        )
        if not mismatches and not extra:
            return ""
        width = max(len(pod) for pod in self.pods)
        lines = [
            f"{len(mismatches)} of {len(self.pods) ** 2} pairs differ "
            f"(rows: from, columns: to; '{ALLOWED}' reachable, '{BLOCKED}' blocked, "
            "[ ] observed differs from expected)",
            " " * width + " " + "".join(f"{target:^5}" for target in self.pods),
        ]
        for source in self.pods:
            row = "".join(f" {cells[source, target]} " for target in self.pods)
            lines.append(f"{source:>{width}} {row}")
        lines += mismatches
        if extra:
            lines.append("  pairs observed but not expected: " + ", ".join(extra))
        return "\n".join(line.rstrip() for line in lines)

    def render(self) -> str:
        """The expected truth table on its own."""
        width = max(len(pod) for pod in self.pods)
        lines = [" " * width + " " + "".join(f"{target:^5}" for target in self.pods)]
        for source in self.pods:
            row = "".join(
                f"  {ALLOWED if self._matrix[source][target] else BLOCKED}  "
                for target in self.pods
            )
            lines.append(f"{source:>{width}} {row}")
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        return f"Reachability({len(self.pods)} pods, {self.allowed_count()} pairs allowed)"


def _split(selector: str) -> tuple[str, str]:
    namespace, slash, name = selector.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise ValueError(
            f"a pod selector is 'namespace/pod' (either part may be '*'): {selector!r}"
        )
    return namespace, name


def _word(value: bool) -> str:
    return "reachable" if value else "blocked"
