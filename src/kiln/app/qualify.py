"""Qualifying a rebuilt image before it goes anywhere, for kiln propagate and kiln refresh:
``kiln test`` (with the convergence check when the channel's gates ask for one), then a
promotion through the channel's gates.

Each check fills in the step record its caller keeps (``{"ok", "machine", ...}``) and
raises :class:`Failed` with what failed, so the caller records how far the image got.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kiln.app.workspace import Workspace
from kiln.errors import KilnError
from kiln.times import precise

# The test machines of one process boot one at a time. Machines booted side by side used to
# share one cgroup and fail each other's early units now and then ("booted degraded");
# each has its own now (kiln.cgroups), and 32 boots four at a time all came up, but one at
# a time is what the propagation tests have run on.
BOOTS = threading.Lock()


class Failed(KilnError):
    """A check the image did not pass: the message says which and why."""


def converge_wanted(workspace: Workspace, channel: str | None, policy_file: Path | None) -> bool:
    """Whether the channel's gates want a converged test (then that is the one to run)."""
    if channel is None:
        return False
    from kiln.lifecycle import policy

    return policy.find(workspace.home, policy_file).gates(channel).converge


def test(workspace: Workspace, ref: str, converge: bool, step: dict[str, Any]) -> str:
    """``kiln test`` of ``ref``; what passed ("its tests", or a healthy boot for an image
    without any)."""
    from kiln.app import machines

    step.setdefault("started", precise())
    with BOOTS:
        report = machines.test(workspace, ref, check_convergence=converge)
    failing = [r.command for r in report.results if not r.ok]
    step.update(
        ended=precise(),
        converge=report.converge,
        ok=report.ok,
        machine=report.machine,
        commands=len(report.results),
        failed=failing,
    )
    if not report.ok:
        why = report.error or (
            f"{len(failing)} failing: {'; '.join(failing)}"
            if failing
            else f"it did not converge: {len(report.changes)} paths changed"
        )
        raise Failed(f"kiln test of {ref} failed: {why}")
    return "its tests" if report.results else "a healthy boot (no [tests] commands)"


def promote(
    workspace: Workspace, ref: str, channel: str, policy_file: Path | None, step: dict[str, Any]
) -> None:
    """Promote ``ref`` to ``channel`` through its gates (already there: fine)."""
    from kiln.app import lifecycle

    step.setdefault("started", precise())
    data = lifecycle.promote(workspace, ref, channel, policy_file=policy_file).to_json()
    step.update(ended=precise(), channel=channel, gates=data["gates"])
    if not (data["promoted"] or data["unchanged"]):
        unmet = "; ".join(f"{g['gate']}: {g['why']}" for g in data["gates"] if not g["ok"])
        raise Failed(
            f"{ref} was not promoted to {channel}: unmet gates {', '.join(data['unmet'])}: "
            + unmet,
            hint=f"meet them, then: kiln promote {ref} {channel}",
        )
