"""NFQUEUE besides the packets: the configuration request and the kernel's answer, as bytes and
on a real queue of the test's own namespace; the kernel's queue table, parsed from captured text
and read from the kernel."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading

import pytest

from agent.lab.netns import entered
from enforcement.compiler import compile_tables
from enforcement.flows import FlowTable
from enforcement.nfqueue import (
    CONFIG_SEQUENCE,
    CONFIG_TYPE,
    NFQA_CFG_F_FAIL_OPEN,
    NFQA_CFG_F_GSO,
    AnswerWatcher,
    QueueCounters,
    config_answer,
    config_request,
    parse_queue_counters,
    read_queue_counters,
)
from enforcement.queue import QueueWorker, TablesHolder
from tests.builders import cluster, make_namespace

NLMSG_ERROR = 2


def test_config_request_layout() -> None:
    message = config_request(1000, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN, 7)
    length, kind, flags, sequence, port = struct.unpack_from("=IHHII", message)
    # NLM_F_REQUEST | NLM_F_ACK: the kernel answers success too, not only failure.
    assert (length, kind, flags, sequence, port) == (len(message), (3 << 8) | 2, 0x1 | 0x4, 7, 0)
    family, version, queue = struct.unpack_from("=BBH", message, 16)
    assert (family, version, socket.ntohs(queue)) == (socket.AF_UNSPEC, 0, 1000)
    # NFQA_CFG_MASK (4) then NFQA_CFG_FLAGS (5), each a big-endian u32 in an 8-byte attribute.
    assert struct.unpack_from("=HH", message, 20) == (8, 4)
    assert struct.unpack_from("!I", message, 24)[0] == NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
    assert struct.unpack_from("=HH", message, 28) == (8, 5)
    assert struct.unpack_from("!I", message, 32)[0] == NFQA_CFG_F_GSO
    assert len(message) == 36


def answer(code: int, sequence: int = CONFIG_SEQUENCE, echoed_type: int = CONFIG_TYPE) -> bytes:
    """An NLMSG_ERROR message as netlink_ack writes it: errno (negative), then the header of
    the request it answers (with ``NETLINK_F_CAP_ACK`` off, the request's payload follows on an
    error; the parser needs none of it)."""
    request = struct.pack("=IHHII", 36, echoed_type, 0x5, sequence, 0)
    body = struct.pack("=i", -code) + request
    return struct.pack("=IHHII", 16 + len(body), NLMSG_ERROR, 0, sequence, 4242) + body


SHORT_ACK = struct.pack("=IHHII", 20, NLMSG_ERROR, 0, CONFIG_SEQUENCE, 1) + struct.pack("=i", 0)
"""An acknowledgement cut after its error code: our sequence number is enough to take it."""
PACKET_MESSAGE = struct.pack("=IHHII", 20, (3 << 8) | 0, 0, 0, 0) + b"\0" * 4
"""A queued packet's message (NFQNL_MSG_PACKET), attributes left out."""


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(answer(0), 0, id="acknowledged"),
        pytest.param(answer(errno.EOPNOTSUPP), errno.EOPNOTSUPP, id="refused"),
        pytest.param(answer(errno.EPERM), errno.EPERM, id="not-the-binding-socket"),
        pytest.param(answer(0, sequence=1), None, id="another-sequence"),
        pytest.param(answer(0, echoed_type=(3 << 8) | 1), None, id="answers-another-request"),
        pytest.param(PACKET_MESSAGE, None, id="a-queued-packet"),
        pytest.param(answer(0)[:18], None, id="truncated"),
        pytest.param(b"", None, id="empty"),
        pytest.param(SHORT_ACK, 0, id="ack-without-the-echoed-header"),
    ],
)
def test_config_answer(data: bytes, expected: int | None) -> None:
    assert config_answer(data) == expected


CAPTURED = """\
 1001 2890287137     0 2   512     0     0        0  1
 1000  27042     0 2   512     0     0        0  1
 1002  27043    15 2   512   301     7   123456  1
"""
"""``/proc/net/netfilter/nfnetlink_queue`` of a namespace with queues 1000 and 1001 bound (the
file lists the newest first); the third line is the second's format with the counters of a
loaded queue written in by hand."""


def test_queue_table_is_parsed() -> None:
    queues, skipped = parse_queue_counters(CAPTURED)
    assert skipped == 0
    assert queues == [
        QueueCounters(1001, 2890287137, 0, 2, 512, 0, 0, 0),
        QueueCounters(1000, 27042, 0, 2, 512, 0, 0, 0),
        QueueCounters(1002, 27043, 15, 2, 512, 301, 7, 123456),
    ]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(" 1000  28418     0 2   512     0     0       41", id="a-field-short"),
        pytest.param(" 1000  28418     0 2   512     0     0       41  1  9", id="a-field-more"),
        pytest.param(" 1000  28418    -1 2   512     0     0       41  1", id="negative"),
        pytest.param(" 1000  28418     x 2   512     0     0       41  1", id="not-a-number"),
        pytest.param("queue portid total", id="a-header"),
    ],
)
def test_a_bad_line_is_skipped_and_counted_and_hides_nothing(line: str) -> None:
    queues, skipped = parse_queue_counters(f"{line}\n\n{CAPTURED}")
    assert skipped == 1
    assert [queue.queue_num for queue in queues] == [1001, 1000, 1002]


def test_no_table_no_queues(tmp_path: object) -> None:
    assert read_queue_counters(f"{tmp_path}/absent") == ([], 0)


# -- the real kernel, in a namespace of the test's own ----------------------------------------


@pytest.mark.root
def test_the_kernel_answers_the_configuration_and_lists_the_queue(scratch_netns: str) -> None:
    from netfilterqueue import NetfilterQueue

    with entered(scratch_netns):
        queue = NetfilterQueue()
        queue.bind(4242, lambda packet: packet.drop(), max_len=16, range=128)
        try:
            fd = queue.get_fd()
            with AnswerWatcher(os.dup(fd)) as accepted:
                portid = accepted.getsockname()[0]
                accepted.send(config_request(4242, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO))
                queue.run_socket(accepted)
            assert accepted.answer == 0
            # A flag this kernel does not know (nfqnl_recv_config: flags >= NFQA_CFG_F_MAX).
            with AnswerWatcher(os.dup(fd), sequence=99) as refused:
                refused.send(config_request(4242, 1 << 30, 1 << 30, sequence=99))
                queue.run_socket(refused)
            assert refused.answer == errno.EOPNOTSUPP
            # A queue this socket did not bind.
            with AnswerWatcher(os.dup(fd), sequence=100) as elsewhere:
                elsewhere.send(config_request(4243, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO, sequence=100))
                queue.run_socket(elsewhere)
            assert elsewhere.answer == errno.ENODEV
            queues, skipped = read_queue_counters()
        finally:
            queue.unbind()
    assert skipped == 0
    assert queues == [QueueCounters(4242, portid, 0, 2, 128, 0, 0, 0)]


@pytest.mark.root
def test_a_refused_configuration_is_counted_and_the_worker_decides_on(scratch_netns: str) -> None:
    tables = TablesHolder(compile_tables(cluster(make_namespace("x")), "node-1", 1))
    worker = QueueWorker(4242, tables, FlowTable(), fail_open=False)
    worker.queue_flags = 1 << 30  # no kernel knows this flag: the kernel refuses it
    stop = threading.Event()

    def serve() -> None:
        with entered(scratch_netns):
            worker.serve(stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert worker.bound.wait(10), "the worker did not bind its queue"
        assert worker.stats.config_refused == 1
        assert thread.is_alive(), "a refused configuration must not end the worker"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
