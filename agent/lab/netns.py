"""Named network namespaces: enter one from Python, run commands in one, batch ``ip`` commands.

This is the lab's only door to the kernel's namespace machinery; ``topology`` builds on it. The
namespaces are the ones iproute2 names under ``/run/netns`` (``ip netns add``), so people can
inspect a running lab with ``ip netns exec NAME ...``.

Safety contract: nothing here touches the root network namespace's networking. ``ip_batch``
without a namespace accepts only ``netns add``/``netns del`` (which create or remove named
namespaces and configure nothing in the root one); every other ``ip`` command runs with ``-n NS``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import cache

NETNS_DIR = "/run/netns"
"""Where iproute2 bind-mounts named network namespaces."""

CLONE_NEWNET = 0x40000000
"""``setns(2)`` nstype for network namespaces (linux/sched.h)."""

_THREAD_NETNS = "/proc/thread-self/ns/net"
# /proc/self/ns/net would name the thread-group leader's namespace, which is not necessarily the
# calling thread's: setns(2) with CLONE_NEWNET changes only the calling thread.

DEFAULT_TIMEOUT = 30.0
"""Seconds a helper command may take before it counts as hung."""


class CommandError(RuntimeError):
    """A command of the lab failed; carries the command line, exit status and stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str, stdin: str | None = None):
        self.cmd = tuple(cmd)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.stdin = stdin
        message = f"command {' '.join(self.cmd)!r} failed with exit status {returncode}"
        if self.stderr:
            message += f": {self.stderr}"
        if stdin:
            message += f"\n--- its input was ---\n{stdin.rstrip()}"
        super().__init__(message)


def validate_netns_name(name: str) -> str:
    """Return ``name`` if it can name a namespace file under /run/netns, else raise ValueError.

    Refuses what could escape the directory or confuse ``ip`` batch input: empty names, ``.``,
    ``..``, slashes, whitespace and control characters.
    """
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or any(ch.isspace() or not ch.isprintable() for ch in name)
    ):
        raise ValueError(f"not a usable network namespace name: {name!r}")
    return name


def netns_path(name: str) -> str:
    """The file that pins the named namespace (``/run/netns/NAME``)."""
    return os.path.join(NETNS_DIR, validate_netns_name(name))


def netns_exists(name: str) -> bool:
    """True when ``ip netns`` knows a namespace of that name."""
    return os.path.exists(netns_path(name))


def list_netns() -> list[str]:
    """Names of all named network namespaces (the entries of /run/netns), sorted."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


@cache
def _libc_setns() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    setns = libc.setns
    setns.argtypes = (ctypes.c_int, ctypes.c_int)
    setns.restype = ctypes.c_int
    return setns


def _setns(fd: int) -> None:
    if _libc_setns()(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns(CLONE_NEWNET) failed: {os.strerror(errno)}")


def thread_netns_id() -> int:
    """Inode number of the calling thread's network namespace (equal inodes: same namespace)."""
    return os.stat(_THREAD_NETNS).st_ino


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with the CALLING THREAD inside the named network namespace.

    Python 3.11 has no ``os.setns``, so this calls libc ``setns(fd, CLONE_NEWNET)`` through
    ctypes. The kernel switches only the calling thread; other threads of the process stay where
    they are. Sockets belong to the namespace they were created in for their whole life, so a
    socket created inside the block can be used from anywhere afterwards (the probe relies on
    this). Processes forked inside the block start in the namespace too.

    The thread's original namespace is held open by fd and always restored, also when the block
    raises. Not reentrant across threads: do not hand the block's thread to other work.
    """
    original = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(original)
            except OSError as exc:  # pragma: no cover - would need a vanished namespace fd
                raise RuntimeError(
                    f"could not return the thread from network namespace {name!r}: {exc}"
                ) from exc
    finally:
        os.close(original)


def run(
    cmd: Sequence[str],
    netns: str | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (prefixed with ``ip netns exec NETNS`` when given) and capture its output.

    With ``check`` a non-zero exit raises :class:`CommandError` quoting stderr, so a failed lab
    step says what the kernel objected to. A missing program raises CommandError too.
    """
    argv = list(cmd)
    if netns is not None:
        argv = ["ip", "netns", "exec", validate_netns_name(netns), *argv]
    try:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, str(exc), input) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, -1, f"timed out after {timeout} s", input) from exc
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr, input)
    return proc


_ROOT_SAFE_BATCH_VERBS = ("netns add ", "netns del ", "netns delete ")


def ip_batch(commands: Sequence[str], netns: str | None) -> None:
    """Run many ``ip`` commands (without the leading ``ip``) in one process: ``ip -batch -``.

    With ``netns`` they run as ``ip -n NETNS -batch -``, i.e. inside that namespace. Without it
    only ``netns add NAME`` / ``netns del NAME`` are accepted: they create or remove named
    namespaces and configure nothing in the root namespace, and anything else would. ``ip``
    stops at the first failing line; the CommandError names it.
    """
    lines = list(commands)
    if not lines:
        return
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"one ip command per entry, got a line break in {line!r}")
        if netns is None and not line.startswith(_ROOT_SAFE_BATCH_VERBS):
            raise ValueError(
                f"refusing to run {line!r} outside a lab namespace: only 'netns add/del' may "
                "run without a namespace"
            )
    argv = ["ip"]
    if netns is not None:
        argv += ["-n", validate_netns_name(netns)]
    argv += ["-batch", "-"]
    run(argv, input="\n".join(lines) + "\n")


def pids_in(name: str) -> list[int]:
    """Process ids whose network namespace is the named one (``ip netns pids``)."""
    if not netns_exists(name):
        return []
    proc = run(["ip", "netns", "pids", validate_netns_name(name)], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def kill_pids_in(name: str, grace: float = 1.0) -> list[int]:
    """Stop every process left inside the named namespace; returns the pids it signalled.

    Without this a deleted namespace would live on (and keep its interfaces and routes) as long
    as a process holds it. See :func:`kill_pids`.
    """
    pids = pids_in(name)
    kill_pids(pids, grace)
    return pids


def kill_pids(pids: Sequence[int], grace: float = 1.0) -> None:
    """SIGTERM ``pids``, then SIGKILL whatever still runs after ``grace`` seconds.

    The current process is never signalled, even when ``ip netns pids`` lists it because one
    of its threads sits in the namespace.
    """
    me = os.getpid()
    targets = [pid for pid in pids if pid != me]
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = targets
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [pid for pid in alive if _is_alive(pid)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie has left its namespaces already and counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")
