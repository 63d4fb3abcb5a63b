"""The kernel's NFQUEUE, besides the packets: configuring a bound queue and reading its counters.

Sans-I/O codec (bytes built and parsed here) and two small readers; the queue loop itself
(``enforcement.queue``) stays the only code that decides packets.

- **Configuration.** netfilterqueue sets neither ``NFQA_CFG_F_GSO`` nor ``NFQA_CFG_F_FAIL_OPEN``,
  so the worker sends the NFQNL_MSG_CONFIG message itself, on the socket that bound the queue
  (``nfqnl_recv_config`` answers EPERM to any other port id). It asks for an acknowledgement
  (``NLM_F_ACK``): the kernel answers every request so flagged with an ``NLMSG_ERROR`` message
  whose error is 0 for success or a negative errno (``netlink_ack``, net/netlink/af_netlink.c),
  appended to the socket's receive queue before ``send`` returns. Packets queued earlier arrive
  before it; :class:`AnswerWatcher` hands those to the library and keeps the answer.
- **Counters.** ``/proc/net/netfilter/nfnetlink_queue`` has one line per queue of the reader's
  network namespace (``seq_show`` in net/netfilter/nfnetlink_queue.c)::

      queue_num peer_portid queue_total copy_mode copy_range queue_dropped user_dropped
      id_sequence 1

  ``queue_total`` is the queue's current length; ``queue_dropped`` counts packets the kernel
  dropped (or, with FAIL_OPEN, accepted) because the queue was full; ``user_dropped`` counts
  packets netlink could not deliver because the socket's receive buffer was full;
  ``id_sequence`` is the id of the last packet queued. The counters are the kernel's u32 and
  start again at 0 when the queue is unbound (a worker restart).
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from enforcement.ctnetlink import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NetlinkParseError,
    attribute,
    error_code,
    messages,
    netfilter_message,
)

# include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_queue.h
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_GSO = 0x4
QUEUE_FLAGS_MASK = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
"""The flags the worker manages: each is set or cleared at every bind."""
CONFIG_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
CONFIG_SEQUENCE = 0x6E706100
"""Sequence number of the worker's configuration request (the answer carries it back); apart
from libnfnetlink's, which start at the time of day."""

PROC_PATH = "/proc/thread-self/net/netfilter/nfnetlink_queue"
"""The reading thread's network namespace's queues (``/proc/net`` follows the process's
first thread, which may sit in another namespace than the thread reading)."""

_HEADER = struct.Struct("=IHHII")
_ERRNO = struct.Struct("=i")


class QueueBindError(OSError):
    """The kernel would not bind the queue (another process holds it, no CAP_NET_ADMIN)."""


def config_request(queue_num: int, flags: int, mask: int, sequence: int = CONFIG_SEQUENCE) -> bytes:
    """The acknowledged NFQNL_MSG_CONFIG request that sets ``flags`` (under ``mask``).

    nfgenmsg's res_id carries the queue number in network byte order; NFQA_CFG_MASK and
    NFQA_CFG_FLAGS are big-endian u32 (nfqnl_recv_config).
    """
    attributes = attribute(NFQA_CFG_MASK, struct.pack("!I", mask))
    attributes += attribute(NFQA_CFG_FLAGS, struct.pack("!I", flags))
    return netfilter_message(
        CONFIG_TYPE,
        NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        socket.AF_UNSPEC,
        attributes,
        resource=queue_num,
    )


def config_answer(data: bytes, sequence: int = CONFIG_SEQUENCE) -> int | None:
    """The errno the kernel answered our configuration request with (0: accepted), if ``data``
    (one read from the queue's socket) holds that answer; None otherwise (a queued packet,
    another request's answer, or bytes that do not parse, which the library judges itself).

    The answer is an ``NLMSG_ERROR`` message carrying our sequence number, whose payload is
    ``struct nlmsgerr``: the error, then the header of the request it answers (its type must
    be a queue configuration, so another request that happened to use the number is no
    match)."""
    try:
        for message in messages(data):
            if message.kind != NLMSG_ERROR or message.sequence != sequence:
                continue
            code = error_code(message)
            if len(message.payload) >= _ERRNO.size + _HEADER.size:
                _, kind, _, echoed, _ = _HEADER.unpack_from(message.payload, _ERRNO.size)
                if kind != CONFIG_TYPE or echoed != sequence:
                    continue
            return code
    except NetlinkParseError:
        return None
    return None


class AnswerWatcher(socket.socket):
    """The queue's netlink socket (a duplicate of the library's descriptor), standing in for it
    in ``NetfilterQueue.run_socket`` until the answer to a configuration request has been read:
    each read is handed to the library, except the answer, which is kept in ``answer``; then
    reads end (EAGAIN) and the ordinary loop goes on.

    Reads never block: the answer was queued while the request was sent, so when the socket
    runs dry without it, the kernel dropped it (a receive buffer full of packets, ENOBUFS)
    and ``answer`` stays None.
    """

    def __init__(self, fileno: int, sequence: int = CONFIG_SEQUENCE) -> None:
        super().__init__(fileno=fileno)
        self.sequence = sequence
        """The sequence number of the request whose answer is awaited."""
        self.answer: int | None = None
        """The errno the kernel answered with (0: accepted); None until read."""
        self.lost = False
        """The kernel reported a full receive buffer while we read: the answer may be lost."""

    def recv(self, size: int, flags: int = 0) -> bytes:
        while self.answer is None:
            try:
                data = super().recv(size, flags | socket.MSG_DONTWAIT)
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise  # EAGAIN ends run_socket's loop
                self.lost = True
                continue
            code = config_answer(data, self.sequence)
            if code is None:
                return data
            self.answer = code
        raise BlockingIOError(errno.EAGAIN, "the configuration answer has been read")


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """One line of ``/proc/net/netfilter/nfnetlink_queue``: one queue of the namespace."""

    queue_num: int
    peer_portid: int
    """Netlink port id of the socket bound to the queue."""
    queue_total: int
    """Packets waiting in the queue for a verdict now."""
    copy_mode: int
    """0 none, 1 metadata, 2 packet (``NFQNL_COPY_*``)."""
    copy_range: int
    """Bytes of each packet copied to userspace."""
    queue_dropped: int
    """Packets the kernel dropped (or accepted, with FAIL_OPEN) because the queue was full."""
    user_dropped: int
    """Packets netlink failed to deliver: the socket's receive buffer was full."""
    id_sequence: int
    """Id of the last packet queued (how many were queued since the bind, modulo 2**32)."""


def parse_queue_counters(text: str) -> tuple[list[QueueCounters], int]:
    """The queues in ``text`` (the file's content), and how many lines were skipped because
    they do not have the kernel's nine numeric fields (a future kernel's new format, or a torn
    read): one bad line never hides the others."""
    queues: list[QueueCounters] = []
    skipped = 0
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) != 9 or not all(word.isdigit() for word in words[:8]):
            skipped += 1
            continue
        queues.append(QueueCounters(*(int(word) for word in words[:8])))
    return queues, skipped


def read_queue_counters(path: str = PROC_PATH) -> tuple[list[QueueCounters], int]:
    """The queues of the calling thread's network namespace; none when the file is absent
    (nfnetlink_queue not loaded: no queue was ever bound here)."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read()
    except FileNotFoundError:
        return [], 0
    return parse_queue_counters(text)
