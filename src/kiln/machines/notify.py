"""What systemd-nspawn tells kiln over sd_notify: the machine's PID 1, and its boot's end.

nspawn is started with ``NOTIFY_SOCKET`` naming a socket this process holds and
``--notify-ready=yes``. It sends ``X_NSPAWN_LEADER_PID=PID`` once the machine's init
runs, and ``READY=1`` once that init (systemd) has finished booting (the moment
``systemctl is-system-running`` leaves ``starting``). Waiting on the socket costs
nothing while the machine boots, where asking systemctl again and again through nsenter
took CPU from the boot itself, the more so with ten machines booting at once.

The socket is abstract (no file to clean up; it goes with this process) and bound to a
random name. Anyone in the host's network namespace could send to it, so a datagram
counts only if the kernel vouches (``SCM_CREDENTIALS``) that the nspawn kiln started
sent it. A process that did not start the machine has no channel and asks systemd.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import socket
import struct

_UCRED = struct.Struct("3i")  # pid, uid, gid
_MAX_DATAGRAM = 4096


class Channel:
    """The receiving end of one nspawn's notifications."""

    def __init__(self) -> None:
        self._name = f"kiln-notify-{os.getpid()}-{secrets.token_hex(8)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind("\0" + self._name)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except OSError:
            self._sock.close()
            raise
        self._sender: int | None = None
        self.fields: dict[str, str] = {}  # what the sender said, the newest value of each

    @property
    def address(self) -> str:
        """For NOTIFY_SOCKET: '@' names an abstract socket."""
        return "@" + self._name

    def expect(self, pid: int) -> None:
        """Only datagrams from this process count (nspawn, once it is started)."""
        self._sender = pid

    def receive(self, timeout: float) -> bool:
        """Read what has arrived, waiting up to ``timeout`` seconds for the first datagram;
        True if the sender said anything new."""
        if self._sock.fileno() < 0:
            return False
        heard = False
        wait = max(timeout, 0.0)
        while select.select([self._sock], [], [], wait)[0]:
            wait = 0.0
            data, ancillary, _flags, _address = self._sock.recvmsg(
                _MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size)
            )
            if self._sent_by_sender(ancillary):
                heard = True
                for line in data.decode(errors="replace").splitlines():
                    key, sep, value = line.partition("=")
                    if sep:
                        self.fields[key] = value
        return heard

    def _sent_by_sender(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _gid = _UCRED.unpack(payload[: _UCRED.size])
                return self._sender is not None and pid == self._sender and uid == os.geteuid()
        return False

    @property
    def leader_pid(self) -> int | None:
        value = self.fields.get("X_NSPAWN_LEADER_PID", "")
        return int(value) if value.isdigit() else None

    @property
    def ready(self) -> bool:
        return self.fields.get("READY") == "1"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
