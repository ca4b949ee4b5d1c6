"""kiln refresh's lock bump: only the packages it is given move, nothing is added, the
parent and SOURCE_DATE_EPOCH stay."""

from __future__ import annotations

from kiln.recipe.lockfile import Deb, Lock, bump

SHA = {n: f"{n:x}" * 64 for n in range(1, 8)}


def lock(*debs: Deb) -> Lock:
    return Lock("sha256:" + "a" * 64, 1764086400, tuple(sorted(debs)))


def test_bump_moves_the_given_packages_and_nothing_else() -> None:
    old = lock(
        Deb("libc6", "amd64", "2.36-9+deb12u9", SHA[1]),
        Deb("nginx-light", "amd64", "1.22.1-9", SHA[2]),
    )
    new, changes = bump(
        old,
        [
            Deb("libc6", "amd64", "2.36-9+deb12u10", SHA[3]),
            Deb("not-held", "amd64", "1.0", SHA[4]),
        ],
    )
    assert (new.parent, new.source_date_epoch) == (old.parent, old.source_date_epoch)
    assert {d.name: d.version for d in new.packages} == {
        "libc6": "2.36-9+deb12u10",
        "nginx-light": "1.22.1-9",
    }
    assert changes.to_json()["changed"] == [
        {
            "name": "libc6",
            "architecture": "amd64",
            "old": "2.36-9+deb12u9",
            "new": "2.36-9+deb12u10",
        }
    ]
    assert changes.added == [] and changes.removed == []


def test_bump_follows_a_package_to_all_but_keeps_multiarch_copies_apart() -> None:
    moved, _ = bump(
        lock(Deb("tzdata", "amd64", "2024a-1", SHA[1])), [Deb("tzdata", "all", "2025b-0", SHA[2])]
    )
    assert [(d.architecture, d.version) for d in moved.packages] == [("all", "2025b-0")]

    both = lock(
        Deb("libssl3", "amd64", "3.0.15-1", SHA[1]), Deb("libssl3", "i386", "3.0.15-1", SHA[2])
    )
    new, _ = bump(both, [Deb("libssl3", "i386", "3.0.16-1", SHA[3])])
    assert [(d.architecture, d.version) for d in new.packages] == [
        ("amd64", "3.0.15-1"),
        ("i386", "3.0.16-1"),
    ]


def test_a_bump_to_what_the_lock_holds_changes_nothing() -> None:
    held = Deb("curl", "amd64", "7.88.1-10+deb12u8", SHA[5])
    new, changes = bump(lock(held), [held])
    assert changes.empty() and new.packages == (held,)
