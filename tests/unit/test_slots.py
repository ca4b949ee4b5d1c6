"""A/B slots on disk: the records, the moves, and a kiln killed at every step.

The machine's processes are not what is tested here (the integration test boots real
ones): halting is a stand-in that says the machine was stopped, booting one that fails,
and the catalog's repoint is recorded. What is tested is that, wherever an update or a
rollback is cut short, ``kiln update --rollback`` puts each slot's files back where its
record says, and that at every step an upper/ belongs to the image machine.json names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from kiln.errors import KilnError, StoreError
from kiln.home import Home
from kiln.machines import config, slots
from kiln.machines import update as steps
from kiln.machines.contract import Contract, Key
from kiln.machines.folder import Folder, Proc, State, load, save
from kiln.machines.launch import StartRequest
from kiln.store.stored import StoredImage


@dataclass
class FakeImage:
    """What staging reads of an image: its ref and its layers."""

    ref: str
    digest: str
    layer_dirs: tuple[Path, ...]
    config: dict[str, Any]


REAL_AT = slots.at


class Cut(BaseException):
    """kiln killed: nothing catches it on the way out."""


def slot(letter: str, image: str, layers: Path) -> slots.Slot:
    return slots.Slot(letter, image, f"sha256:{image[-1] * 64}", 1, (str(layers),), {"k": "v"})


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Home, Folder]]:
    home = Home(tmp_path / "home")
    folder = Folder.of(home, "web")
    (folder.upper / "root").mkdir(parents=True)
    (folder.upper / "root/slot-a").write_text("a")
    folder.seed.mkdir(parents=True)
    folder.env_file.write_text("A=1\n")
    save(
        folder,
        State("web", "app:1", "sha256:" + "1" * 64, "other-boot", Proc(1, 1), Proc(2, 2)),
    )
    monkeypatch.setattr(slots, "halt", lambda _home, _folder: False)
    monkeypatch.setattr(slots, "repoint_catalog", lambda *_args: None)
    yield home, folder


def refuse(_request: StartRequest) -> Any:
    raise KilnError("no machines in unit tests")


def layer(tmp_path: Path, name: str, locale: str | None = None) -> Path:
    path = tmp_path / "layers" / name
    (path / "etc/default").mkdir(parents=True)
    if locale:
        (path / "etc/default/locale").write_text(f"LANG={locale}\n")
    return path


def images(tmp_path: Path) -> tuple[slots.Slot, FakeImage, FakeImage]:
    lower = layer(tmp_path, "one", "de_DE.UTF-8")
    origin = slot("a", "app:1", lower)
    one = FakeImage("app:1", origin.digest, (lower,), {})
    two = FakeImage("app:2", "sha256:" + "2" * 64, (lower, layer(tmp_path, "two")), {})
    return origin, one, two


def cut_at(monkeypatch: pytest.MonkeyPatch, step: str, before: bool, undoing: bool = False) -> None:
    """Kill kiln when it reaches ``step``: before writing it down, or just after."""
    real = slots.at

    def at(folder: Folder, switch: slots.Switch, name: str, undo: bool = False) -> None:
        hit = name == step and undo == undoing
        if hit and before:
            raise Cut
        real(folder, switch, name, undo)
        if hit:
            raise Cut

    monkeypatch.setattr(slots, "at", at)


def update(
    home: Home, origin: slots.Slot, one: FakeImage, two: FakeImage, start: Any = refuse
) -> steps.Outcome:
    values = config.Values({"k": "v"}, {})
    return steps.update(
        home,
        None,
        start,
        "web",
        origin,
        cast(StoredImage, one),
        cast(StoredImage, two),
        2,
        values,
        1.0,
        2.0,
    )


def rollback(home: Home, image: FakeImage) -> steps.Outcome:
    return steps.rollback(home, None, refuse, "web", 1, image, {})  # type: ignore[arg-type]


def files(folder: Folder) -> dict[str, bool]:
    """Which slot's marker each place holds."""
    return {
        where: (folder.path / where).exists()
        for where in (
            "upper/root/slot-a",
            "upper/root/slot-b",
            "fallback/upper/root/slot-a",
            "fallback/upper/root/slot-b",
        )
    }


def kiln_start_would_boot(folder: Folder) -> str | None:
    """The image kiln start boots: machine.json's, when upper/ is there (else it refuses)."""
    if not folder.upper.is_dir():
        return None
    return load(folder).image


def test_slot_and_switch_read_back_as_written(tmp_path: Path) -> None:
    origin = slot("a", "app:1", tmp_path)
    switch = slots.Switch("update", "stage", origin, slot("b", "app:2", tmp_path), False)
    assert slots.Slot.from_json(json.loads(json.dumps(origin.to_json()))) == origin
    assert slots.Switch.from_json(json.loads(json.dumps(switch.to_json()))) == switch
    assert slots.other("a") == "b" and slots.other("b") == "a"


def test_a_move_taken_again_finds_it_done(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    slots.move(tmp_path / "src", tmp_path / "deep/dst")
    slots.move(tmp_path / "src", tmp_path / "deep/dst")  # after a crash: done already
    assert (tmp_path / "deep/dst").is_dir()
    with pytest.raises(StoreError, match="missing"):
        slots.move(tmp_path / "gone", tmp_path / "also-gone")
    (tmp_path / "other").mkdir()
    with pytest.raises(StoreError, match="exists"):
        slots.move(tmp_path / "other", tmp_path / "deep/dst")


def test_plain_values_carry_over_and_set_wins() -> None:
    contract = Contract(
        keys={
            "title": Key("title", required=True),
            "mode": Key("mode", default="fast"),
            "token": Key("token", required=True, secret=True),
        }
    )
    image = FakeImage("app:2", "", (), {})
    image.config = {
        "config": {
            "Labels": {
                "org.kiln.runtime": json.dumps(
                    {
                        "config": {
                            name: {"required": k.required, "secret": k.secret, "default": k.default}
                            for name, k in contract.keys.items()
                        }
                    }
                )
            }
        }
    }
    recorded = {"title": "Old", "mode": "slow", "gone": "x"}
    values = slots.values_for(image, recorded, ("token=t", "mode=quick"), None)  # type: ignore[arg-type]
    assert dict(values.plain) == {"title": "Old", "mode": "quick"}
    assert dict(values.secrets) == {"token": "t"}
    with pytest.raises(config.ConfigError, match="token: required secret is missing"):
        slots.values_for(image, recorded, (), None)  # type: ignore[arg-type]


def test_the_new_slot_is_staged_with_its_own_config(
    machine: tuple[Home, Folder], tmp_path: Path
) -> None:
    _home, folder = machine
    _origin, _one, two = images(tmp_path)
    slots.stage(folder, two, config.Values({"k": "v"}, {}))  # type: ignore[arg-type]
    staged = slots.next_dir(folder)
    assert list((staged / "upper").iterdir()) == []
    assert (staged / "upper").stat().st_mode & 0o777 == 0o755
    assert (staged / "config/config.env").read_text() == 'K="v"\n'
    user_data = (staged / "config/seed/user-data").read_text()
    assert 'image: "app:2"' in user_data and 'locale: "de_DE.UTF-8"' in user_data
    assert (staged / "config/seed/meta-data").stat().st_mode & 0o777 == 0o644


def test_an_update_that_does_not_boot_is_undone_at_once(
    machine: tuple[Home, Folder], tmp_path: Path
) -> None:
    home, folder = machine
    origin, one, two = images(tmp_path)
    outcome = update(home, origin, one, two)
    assert not outcome.ok and "no machines in unit tests" in outcome.reason
    assert load(folder).image == "app:1" and load(folder).fallback is None
    assert files(folder)["upper/root/slot-a"]
    assert folder.env_file.read_text() == "A=1\n"
    assert sorted(p.name for p in folder.path.iterdir()) == ["config", "machine.json", "upper"]


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
@pytest.mark.parametrize("step", steps.UPDATE)
def test_an_update_cut_at_any_step_is_undone_by_rollback(
    machine: tuple[Home, Folder],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    before: bool,
) -> None:
    home, folder = machine
    origin, one, two = images(tmp_path)
    cut_at(monkeypatch, step, before)
    with pytest.raises(Cut):
        update(home, origin, one, two, start=lambda _request: None)
    assert kiln_start_would_boot(folder) in (None, "app:1", "app:2")
    if kiln_start_would_boot(folder) == "app:2":
        assert not files(folder)["upper/root/slot-a"]  # the new slot's own, empty upper
    monkeypatch.undo()
    monkeypatch.setattr(slots, "halt", lambda _home, _folder: False)
    monkeypatch.setattr(slots, "repoint_catalog", lambda *_args: None)
    if slots.pending(folder) is None:  # cut before anything was written: nothing moved
        assert load(folder).image == "app:1" and files(folder)["upper/root/slot-a"]
        return
    with pytest.raises(KilnError, match="an update to app:2 was interrupted") as refused:
        update(home, origin, one, two)
    assert "--rollback" in (refused.value.hint or "")
    outcome = rollback(home, one)
    assert outcome.resumed and outcome.active.image == "app:1"
    assert load(folder).image == "app:1" and not load(folder).tentative
    assert files(folder)["upper/root/slot-a"]
    assert folder.env_file.read_text() == "A=1\n"
    assert slots.pending(folder) is None
    assert not slots.next_dir(folder).exists()


def test_a_rollback_cut_at_any_step_is_finished_by_the_next(
    machine: tuple[Home, Folder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, folder = machine
    origin, one, two = images(tmp_path)
    monkeypatch.setattr(steps, "prove", lambda *_args: steps.Proof(True, "ok", 0.1, 1.0))
    booted = SimpleNamespace(contract=Contract())
    assert update(home, origin, one, two, start=lambda _request: booted).ok
    (folder.upper / "root").mkdir()
    (folder.upper / "root/slot-b").write_text("b")
    real_at = slots.at
    for step in steps.ROLLBACK[: steps.ROLLBACK.index("boot")]:
        active = load(folder).image
        wanted = "app:1" if active == "app:2" else "app:2"
        cut_at(monkeypatch, step, before=False)
        with pytest.raises(Cut):
            rollback(home, one if wanted == "app:1" else two)
        assert kiln_start_would_boot(folder) in (None, active, wanted)
        monkeypatch.setattr(slots, "at", real_at)
        outcome = rollback(home, one if wanted == "app:1" else two)
        assert outcome.resumed and load(folder).image == wanted
        marker = "slot-a" if wanted == "app:1" else "slot-b"
        other = "slot-b" if marker == "slot-a" else "slot-a"
        assert files(folder)[f"upper/root/{marker}"]
        assert files(folder)[f"fallback/upper/root/{other}"]
        fallback = load(folder).fallback
        assert fallback is not None
        assert fallback["image"] == active
        assert slots.pending(folder) is None


def test_a_second_switch_waits_for_the_first(machine: tuple[Home, Folder]) -> None:
    _home, folder = machine
    with slots.held(folder), pytest.raises(slots.Busy), slots.held(folder):
        pass


@pytest.mark.parametrize("step", steps.UNDO)
def test_an_undo_cut_short_is_taken_again(
    machine: tuple[Home, Folder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    home, folder = machine
    origin, one, two = images(tmp_path)
    cut_at(monkeypatch, step, before=False, undoing=True)
    with pytest.raises(Cut):
        update(home, origin, one, two)  # the boot fails; its undo is cut short
    assert kiln_start_would_boot(folder) in (None, "app:1", "app:2")
    monkeypatch.setattr(slots, "at", REAL_AT)
    outcome = rollback(home, one)
    assert outcome.resumed and load(folder).image == "app:1"
    assert files(folder)["upper/root/slot-a"] and folder.env_file.read_text() == "A=1\n"
    assert sorted(p.name for p in folder.path.iterdir()) == ["config", "machine.json", "upper"]
