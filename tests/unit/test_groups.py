"""kiln up's decision and its inputs: missing members start at the lowest free index, failed
ones are replaced, extras go newest first, members on another digest stay; each member gets
its own host ports and state folders; a secret source that cannot be read is refused by
its key path before anything starts; a new member that is not healthy in time is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.app.fleet import group_lock
from kiln.errors import BadInput, KilnError
from kiln.fleet import groups
from kiln.fleet.members import NOT_RUNNING, Member, member_name
from kiln.fleet.secrets import member_values, read_secrets
from kiln.home import Home
from kiln.lifecycle import policy
from kiln.lifecycle.fleetpolicy import GroupSpec
from kiln.machines.contract import Contract, Key

NOW = "sha256:" + "a" * 64
OLD = "sha256:" + "b" * 64


def spec(count: int, **extra: object) -> GroupSpec:
    return GroupSpec.model_validate({"image": "app:prod", "count": count, **extra})


def member(index: int, state: str = "running", digest: str = NOW, created: str = "") -> Member:
    created = created or f"2026-12-07T10:00:{index:02d}"
    image = "app:2" if digest == NOW else "app:1"
    name = member_name("web", index)
    return Member(name, "web", index, image, digest, state, created=created)


def test_missing_members_start_at_the_lowest_free_indices() -> None:
    decided = groups.plan("web", spec(3), [member(2)], NOW)
    assert [(s.index, s.name, s.digest, s.reason) for s in decided.starts] == [
        (1, "web-1", NOW, "missing"),
        (3, "web-3", NOW, "missing"),
    ]
    assert not decided.removals and not decided.empty
    assert [m.name for m in decided.kept] == ["web-2"]


def test_a_name_another_machine_holds_is_skipped() -> None:
    decided = groups.plan("web", spec(2), [], NOW, taken={1})
    assert [s.index for s in decided.starts] == [2, 3]


def test_a_member_that_is_not_running_is_replaced_at_its_index() -> None:
    found = [member(1), member(2, "stopped"), member(3)]
    decided = groups.plan("web", spec(3), found, NOW)
    assert [(r.member.name, r.reason) for r in decided.removals] == [("web-2", "failed")]
    assert [(s.index, s.reason) for s in decided.starts] == [(2, "failed")]


def test_extras_go_newest_first() -> None:
    # web-1 was replaced last: it is the newest, though web-3 has the highest index
    found = [member(1, created="2026-12-07T11:00:00"), member(2), member(3), member(4)]
    decided = groups.plan("web", spec(2), found, NOW)
    assert [(r.member.name, r.reason) for r in decided.removals] == [
        ("web-1", "extra"),
        ("web-4", "extra"),
    ]
    assert not decided.starts
    assert [m.name for m in decided.kept] == ["web-2", "web-3"]


def test_same_age_extras_go_highest_index_first() -> None:
    same = "2026-12-07T10:00:00"
    found = [member(i, created=same) for i in (1, 2, 3)]
    decided = groups.plan("web", spec(1), found, NOW)
    assert [r.member.name for r in decided.removals] == ["web-3", "web-2"]


def test_a_failed_member_beyond_the_count_is_removed_not_replaced() -> None:
    found = [member(1), member(2, "stopped"), member(3)]
    decided = groups.plan("web", spec(2), found, NOW)
    assert [(r.member.name, r.reason) for r in decided.removals] == [("web-2", "failed")]
    assert not decided.starts


def test_members_on_another_digest_are_left_for_kiln_rollout() -> None:
    found = [member(1, digest=OLD), member(2), member(3, digest=OLD)]
    decided = groups.plan("web", spec(3), found, NOW)
    assert decided.empty
    assert [m.name for m in decided.elsewhere] == ["web-1", "web-3"]


def test_nothing_to_do() -> None:
    decided = groups.plan("web", spec(2), [member(1), member(2)], NOW)
    assert decided.empty and not decided.elsewhere


def test_each_member_gets_its_own_host_ports() -> None:
    group = spec(3, ports=["8080-8085:80", "127.0.0.1:9000-9002:9000/udp"])
    assert groups.member_ports(group, 1) == ("8080:80/tcp", "127.0.0.1:9000:9000/udp")
    assert groups.member_ports(group, 3) == ("8082:80/tcp", "127.0.0.1:9002:9000/udp")
    assert groups.member_ports(spec(1), 1) == ()


def test_each_state_path_gets_a_folder_of_the_member() -> None:
    got = groups.member_volumes(Path("/h/state"), "web-2", ["/var/lib/web", "/srv/my data/"])
    assert got == (
        "/srv/my data/=/h/state/web-2/srv-my\\x20data",
        "/var/lib/web=/h/state/web-2/var-lib-web",
    )


def policy_at(folder: Path, text: str) -> policy.Policy:
    path = folder / "kiln.toml"
    path.write_text(text)
    return policy.load(path)


SECRETS = """\
[groups.web]
image = "web:prod"
count = 1
secrets = { token = { file = "secrets/token" }, db = { env = "KILN_TEST_DB_PASSWORD" } }
"""


def test_secrets_are_read_from_their_sources(tmp_path: Path) -> None:
    found = policy_at(tmp_path, SECRETS)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("s3cret\n")
    env = {"KILN_TEST_DB_PASSWORD": "@not-a-file"}
    got = read_secrets(found, "web", found.group("web"), env)
    assert got == {"token": "s3cret", "db": "@not-a-file"}


def test_unreadable_secret_sources_are_named_by_key_path(tmp_path: Path) -> None:
    found = policy_at(tmp_path, SECRETS)
    (tmp_path / "secrets").mkdir()
    os.mkfifo(tmp_path / "secrets" / "token")  # never opened: a FIFO would block a read
    with pytest.raises(BadInput) as caught:
        read_secrets(found, "web", found.group("web"), {})
    message = caught.value.message
    assert caught.value.exit_code == 2
    assert "groups.web.secrets.token: file = 'secrets/token'" in message
    assert "not a regular file" in message
    assert "groups.web.secrets.db: env = 'KILN_TEST_DB_PASSWORD'" in message
    assert "nothing was started" in (caught.value.hint or "")


def test_a_missing_or_too_large_secret_file_is_refused(tmp_path: Path) -> None:
    found = policy_at(tmp_path, SECRETS)
    env = {"KILN_TEST_DB_PASSWORD": "x"}
    with pytest.raises(BadInput, match=r"secrets\.token: file = 'secrets/token': no such file"):
        read_secrets(found, "web", found.group("web"), env)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_bytes(b"x" * (1 << 20))
    with pytest.raises(BadInput, match=r"secrets\.token: .*may be at most"):
        read_secrets(found, "web", found.group("web"), env)


CONTRACT = Contract(
    keys={
        "site_title": Key("site_title", required=True),
        "api_token": Key("api_token", required=True, secret=True),
        "mode": Key("mode", default="fast"),
    }
)


def test_values_are_checked_and_kept_literally(tmp_path: Path) -> None:
    found = policy_at(tmp_path, SECRETS)
    given = {"site_title": "-", "api_token": "@/etc/shadow"}
    values = member_values("web", "web@" + NOW, CONTRACT, given, found)
    assert dict(values.plain) == {"site_title": "-", "mode": "fast"}
    assert dict(values.secrets) == {"api_token": "@/etc/shadow"}


def test_values_that_do_not_fit_the_contract_start_nothing(tmp_path: Path) -> None:
    found = policy_at(tmp_path, SECRETS)
    with pytest.raises(BadInput) as caught:
        member_values("web", "web@" + NOW, CONTRACT, {"colour": "red"}, found)
    message = caught.value.message
    assert message.startswith("group web: config for web@")
    assert "colour: unknown key" in message and "api_token: required secret is missing" in message


class FakeDriver:
    """Members in memory: start gives a member whose health is decided up front."""

    def __init__(
        self, health: dict[str, list[tuple[bool, str]]], fail: frozenset[int] = frozenset()
    ):
        self.health = health
        self.fail = fail
        self.started: list[int] = []
        self.removed: list[str] = []

    def members(self, group: str) -> list[Member]:
        return []

    def start(
        self, group: str, spec: GroupSpec, index: int, digest: str, config: dict[str, str]
    ) -> Member:
        if index in self.fail:
            raise KilnError(f"{group}-{index} did not boot", hint="look")
        self.started.append(index)
        return Member(member_name(group, index), group, index, "app:2", digest, "running")

    def healthy(self, member: Member) -> tuple[bool, str]:
        answers = self.health[member.name]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def remove(self, member: Member) -> None:
        self.removed.append(member.name)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_apply_removes_then_starts_and_names_the_unhealthy() -> None:
    group = spec(3, update={"healthy_deadline": "2s"})
    decided = groups.plan("web", group, [member(1, "stopped")], NOW)
    driver = FakeDriver(
        {
            "web-1": [(False, "exit code 1"), (True, "exit code 0")],
            "web-2": [(False, "exit code 1")],
            "web-3": [(False, NOT_RUNNING)],
        }
    )
    clock = Clock()
    outcome = groups.apply(driver, group, decided, clock=clock, sleep=clock.sleep)
    assert driver.removed == ["web-1"] and driver.started == [1, 2, 3]
    assert [s.member.name for s in outcome.unhealthy] == ["web-2", "web-3"]
    by_name = {s.member.name: s for s in outcome.started}
    assert by_name["web-1"].healthy and by_name["web-1"].detail == "exit code 0"
    assert by_name["web-2"].seconds >= 2.0  # waited out its deadline
    assert by_name["web-3"].seconds < 0.5  # a member that stopped is not waited for
    assert not outcome.ok


def test_a_start_that_fails_stops_the_starts_after_it() -> None:
    group = spec(3)
    decided = groups.plan("web", group, [], NOW)
    driver = FakeDriver({"web-1": [(True, "ok")]}, fail=frozenset({2}))
    clock = Clock()
    outcome = groups.apply(driver, group, decided, clock=clock, sleep=clock.sleep)
    assert driver.started == [1]
    assert [(n.start.name, n.error) for n in outcome.not_started] == [
        ("web-2", "web-2 did not boot")
    ]
    assert not outcome.ok and not outcome.unhealthy


def test_one_command_at_a_time_changes_a_group(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with group_lock(home, "web"):
        busy = pytest.raises(KilnError, match="group web is being changed by another kiln")
        with busy, group_lock(home, "web"):
            pass
        with group_lock(home, "db"):  # another group's lock is its own
            pass
    with group_lock(home, "web"):  # released with the block
        pass
