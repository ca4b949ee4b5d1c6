"""nspawn's sd_notify reports reach kiln through kiln.machines.notify: what the process
kiln started says is read, what anyone else sends to the socket is not."""

from __future__ import annotations

import socket
import subprocess
import sys

from kiln.machines.notify import Channel

SEND = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("\\0" + sys.argv[1][1:])
for message in sys.argv[2:]:
    s.send(message.encode())
"""


def _send_from_child(channel: Channel, *messages: str, expected: bool = True) -> None:
    child = subprocess.Popen([sys.executable, "-c", SEND, channel.address, *messages])
    if expected:
        channel.expect(child.pid)
    assert child.wait(timeout=30) == 0


def test_the_leader_and_the_boots_end_are_read_from_the_expected_sender() -> None:
    channel = Channel()
    try:
        assert channel.address.startswith("@kiln-notify-")
        _send_from_child(channel, "STATUS=Container running.\nX_NSPAWN_LEADER_PID=4242")
        assert channel.receive(5.0)
        assert channel.leader_pid == 4242 and not channel.ready
        _send_from_child(channel, "READY=1\n", "STATUS=Container running: Ready.")
        channel.receive(5.0)
        assert channel.ready
        assert channel.fields["STATUS"] == "Container running: Ready."
    finally:
        channel.close()


def test_a_datagram_from_any_other_process_is_ignored() -> None:
    channel = Channel()
    try:
        channel.expect(1)  # not this process, and not the child below
        _send_from_child(channel, "READY=1\nX_NSPAWN_LEADER_PID=1", expected=False)
        own = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        own.connect("\0" + channel.address[1:])
        own.send(b"READY=1")
        own.close()
        assert not channel.receive(0.2)
        assert not channel.ready and channel.leader_pid is None
    finally:
        channel.close()


def test_a_closed_channel_hears_nothing_and_its_name_is_free() -> None:
    channel = Channel()
    address = channel.address
    channel.close()
    assert not channel.receive(0.0)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.bind("\0" + address[1:])  # nothing holds the abstract name any more
    finally:
        probe.close()
