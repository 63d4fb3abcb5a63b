"""The shape of a kind at the edge: what the registry (``agent.kinds``) holds for each one.

A kind is known by one :class:`KindSpec`: where the API serves it (group, versions, plural,
namespaced or not), how one object becomes netpol-agent's record (``convert``, strict for files
people write, lenient for objects the API server has validated) and what is enforced when it
cannot (``fail_closed``). A policy kind netpol-agent does not enforce is a
:class:`RefusedKind`: known only to say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

SUPPORTED_POLICY_KINDS = (
    "networking.k8s.io/v1 NetworkPolicy and policy.networking.k8s.io ClusterNetworkPolicy"
)
"""What netpol-agent enforces, in the words of every refusal."""


@dataclass(frozen=True, slots=True)
class FailClosed(Generic[R]):
    """What to enforce for one object, whatever it holds, and what went wrong with it."""

    record: R | None
    """The record to enforce: the object's own when it converts, else its fail-closed stand-in;
    None when nothing is to be enforced for it (the object is left out)."""
    error: str
    """Empty when the object converted as it is; else why it did not, then ``; `` and what is
    enforced instead (``...; enforced fail-closed: ...`` or ``...; left out``), for the state's
    error report."""


class Converter(Protocol[R_co]):
    """Object (the API's JSON shape) to record; raises ``agent.convert.ConversionError``.

    ``strict=True`` is for files people write (unknown fields refused, with hints); ``False``
    for objects read from the API server (unknown fields ignored, as its pruning does).
    """

    def __call__(self, obj: Mapping[str, Any], /, *, strict: bool) -> R_co: ...


class FailClosedConverter(Protocol[R]):
    """Object to :class:`FailClosed`; never raises, whatever ``obj`` is."""

    def __call__(self, obj: Any, /) -> FailClosed[R]: ...


@dataclass(frozen=True, slots=True)
class KindSpec(Generic[R]):
    """One kind netpol-agent reads: where the API serves it and how it is converted."""

    kind: str
    group: str
    """The API group; empty for the core group (``v1``)."""
    versions: tuple[str, ...]
    """The versions read, preferred first (a source lists the first one the API serves)."""
    plural: str
    """The resource name in list and watch paths (``/apis/<group>/<version>/<plural>``)."""
    namespaced: bool
    """False for cluster-scoped kinds: their objects have no ``metadata.namespace``."""
    convert: Converter[R]
    fail_closed: FailClosedConverter[R]
    custom: bool = False
    """Served only when its CustomResourceDefinition is installed: an absent or removed CRD is
    a warning (enforcement of the other kinds goes on), and readiness waits for the kind only
    while the API serves it."""

    @property
    def api_versions(self) -> tuple[str, ...]:
        """``apiVersion`` values of the kind, preferred first (``v1``, ``networking.k8s.io/v1``)."""
        return tuple(self.api_version(version) for version in self.versions)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def list_path(self, version: str) -> str:
        """The path that lists (and, with ``?watch=1``, watches) every object of the kind, in
        every namespace for a namespaced kind."""
        prefix = f"/apis/{self.group}" if self.group else "/api"
        return f"{prefix}/{version}/{self.plural}"


@dataclass(frozen=True, slots=True)
class RefusedKind:
    """A policy kind netpol-agent does not enforce: refused by the lab, logged as not enforced
    in Kubernetes mode, never silently ignored."""

    group: str
    kind: str
    plural: str
    """The resource name, for a source that checks whether the API serves the kind."""
    namespaced: bool
    versions: tuple[str, ...] = ()
    """The versions meant; empty: every version of the group."""
    note: str = ""
    """Said after the refusal: what to use instead, where there is something."""

    def matches(self, api_version: str, kind: str) -> bool:
        group, _, version = api_version.rpartition("/")
        return (
            kind == self.kind
            and group == self.group
            and (not self.versions or version in self.versions)
        )

    def message(self, api_version: str) -> str:
        """One line: ``netpol-agent enforces ...; <apiVersion> <kind> is not enforced``."""
        text = (
            f"netpol-agent enforces {SUPPORTED_POLICY_KINDS}; "
            f"{api_version} {self.kind} is not enforced"
        )
        return f"{text} ({self.note})" if self.note else text
