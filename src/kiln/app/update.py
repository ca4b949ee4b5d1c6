"""`kiln update NAME --to REF` and `kiln update NAME --rollback`: A/B slots of one machine.

The image an update boots is the resolver's answer for REF, refused before anything moves
when the policy's trust says so (as kiln run does), and its config is checked against its
own contract first: the plain values the machine runs with carry over, --set and --config
win, and secrets are given again (kiln keeps none). The image the machine runs now is
looked up by its digest without the usable and trust checks (an update may leave a
revoked or unsigned image). Every slot is booted as kiln start boots a machine
(kiln.app.machines.start: the image by digest, checked, and the machine's place on its
network again), so a slot switched back to, or rolled back to, is checked as kiln start
checks it. The steps are kiln.machines.update's.
"""

from __future__ import annotations

from pathlib import Path

from kiln import refs
from kiln.app import machines, resolve
from kiln.app.signing import enforce_trust
from kiln.app.workspace import Workspace
from kiln.errors import BadInput
from kiln.machines import config, health, slots
from kiln.machines import update as steps
from kiln.machines.contract import from_config
from kiln.machines.folder import Folder, load
from kiln.machines.update import Outcome
from kiln.store.stored import StoredImage

DEFAULT_GOOD_AFTER = 10.0  # seconds the health check must hold before a slot is good
NO_CHECK_DEADLINE = 30.0  # an image without a health check: to systemd running


def _by_digest(
    workspace: Workspace, image: str, digest: str, checked: bool
) -> tuple[int, StoredImage]:
    """A slot's image by its digest (``checked``: refused as kiln start refuses one)."""
    ref = refs.parse(f"{image.partition(':')[0]}@{digest}")
    row = resolve.image(workspace, ref, usable=checked)
    if checked:
        enforce_trust(workspace, row)
    return row.id, resolve.load(workspace, row)


def _starter(workspace: Workspace) -> steps.Starter:
    """kiln start of the active slot: its image by digest, its network place again."""
    return lambda request: machines.start(workspace, request)


def update(
    workspace: Workspace,
    name: str,
    ref: str,
    sets: tuple[str, ...] = (),
    config_file: Path | None = None,
    good_after: float = DEFAULT_GOOD_AFTER,
    deadline: float | None = None,
) -> Outcome:
    """Boot ``ref`` as the other slot of machine ``name``; keep it once its health check
    has held for ``good_after`` seconds (first passing within ``deadline``, by default the
    image's health timeout), else switch back (Outcome.ok is False)."""
    home = workspace.home
    folder = Folder.of(home, name)
    state = load(folder)
    slots.refuse_pending(folder)
    row = resolve.image(workspace, ref)
    enforce_trust(workspace, row)
    if row.digest == state.digest:
        raise BadInput(
            f"machine {name} runs {state.image} ({row.digest[:19]}) already",
            hint=f"kiln update {name} --to REF takes another image; --rollback the fallback",
        )
    image = resolve.load(workspace, row)
    origin_id, origin_image = _by_digest(workspace, state.image, state.digest, checked=False)
    origin = slots.active_slot(home, lambda: workspace.catalog, name, origin_id)
    values = slots.values_for(image, origin.config, sets, config_file)
    check = from_config(image.config).health
    health.check_tools(check)
    if deadline is None:
        deadline = check.timeout if check is not None else NO_CHECK_DEADLINE
    return steps.update(
        home,
        lambda: workspace.catalog,
        _starter(workspace),
        name,
        origin,
        origin_image,
        image,
        row.id,
        values,
        good_after,
        deadline,
    )


def rollback(
    workspace: Workspace,
    name: str,
    sets: tuple[str, ...] = (),
    config_file: Path | None = None,
) -> Outcome:
    """Make the other slot active: the fallback, or (after a kiln killed half-way) the slot
    an interrupted update left, or the one an interrupted rollback was going to. Its
    secrets are given again, as kiln start takes them."""
    home = workspace.home
    folder = Folder.of(home, name)
    state = load(folder)
    switch = slots.pending(folder)
    if switch is not None:
        undo = switch.op == "update"
        to = switch.origin if undo else switch.target
    elif state.fallback is not None:
        undo, to = False, slots.Slot.from_json(state.fallback)
    else:
        raise BadInput(
            f"machine {name} has no fallback slot to return to",
            hint=f"kiln update {name} --to REF makes one: the slot it leaves",
        )
    _target_id, image = _by_digest(workspace, to.image, to.digest, checked=not undo)
    active_id = 0
    if switch is None:
        active = refs.parse(f"{state.image.partition(':')[0]}@{state.digest}")
        active_id = resolve.image(workspace, active, usable=False).id
    contract = from_config(image.config)
    secret_values = config.resolve_secrets(name, contract, to.secret_keys, sets, config_file)
    health.check_tools(contract.health)
    return steps.rollback(
        home, lambda: workspace.catalog, _starter(workspace), name, active_id, image, secret_values
    )
