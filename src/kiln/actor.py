"""Who is acting: the name kiln records with a promotion, a revocation, a signature or an
event. ``KILN_ACTOR`` names it outright (a CI job, a timer); else the user who ran sudo,
else the user, on this host."""

from __future__ import annotations

import os
import pwd
import socket


def actor() -> str:
    given = os.environ.get("KILN_ACTOR", "").strip()
    if given:
        return given[:128]
    user = os.environ.get("SUDO_USER") or ""
    if not user:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"[:128]
