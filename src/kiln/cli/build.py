"""Build commands: bake, images, inspect, lineage, diff, export, fsck, gc."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from kiln.app.workspace import opened, with_workspace
from kiln.cli.jobs import queue_option
from kiln.cli.output import (
    console,
    err,
    human_size,
    json_flag,
    policy_option,
    print_json,
    progress,
    wide,
)
from kiln.errors import BadInput

# Commands import their services when they run, so `kiln --help` and a cache-hit bake
# load only what they use.

mirror_option = click.option(
    "--mirror",
    envvar="KILN_MIRROR",
    metavar="URL",
    help="fetch packages from this Debian mirror (a URL or a 'deb ...' line) instead of the "
    "host's apt sources; it never reaches the image [env: KILN_MIRROR]",
)

verbose_flag = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="stream each step's own output (apt, ansible, shell) as it runs, "
    "labelled 'RECIPE steps[N] | '",
)


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--no-cache", is_flag=True, help="rebuild even when the cache key exists")
@click.option(
    "--on-error",
    type=click.Choice(["abort", "keep"]),
    default="abort",
    show_default=True,
    help="keep the build root of a failed bake to look inside",
)
@mirror_option
@verbose_flag
@queue_option("kiln.bake")
@json_flag
def bake(
    path: Path, no_cache: bool, on_error: str, mirror: str | None, verbose: bool, as_json: bool
) -> None:
    """Bake a recipe (and any stale recipe-path ancestors) or a folder of recipes."""
    from kiln.app.bake import Options, bake_path

    options = Options(no_cache=no_cache, keep_on_error=on_error == "keep", mirror=mirror)
    with progress("baking", verbose, label_lines=False) as log, opened() as workspace:
        results = bake_path(workspace, path, options, log)
    if as_json:
        data = [r.to_json() for r in results]
        print_json(data if path.is_dir() else data[-1])
        return
    for result in results:
        state = "[green]cached[/]" if result.cached else "[bold]baked[/]"
        console.print(
            f"{state} {result.ref}  {result.digest[:19]}  {result.seconds:.2f}s"
            + (f"  {result.note}" if result.note else ""),
            highlight=False,
        )


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--update", is_flag=True, help="re-resolve against the mirror and show the diff")
@mirror_option
@verbose_flag
@json_flag
def lock(path: Path, update: bool, mirror: str | None, verbose: bool, as_json: bool) -> None:
    """Write PATH.lock beside each recipe: parent digest and every package, exactly."""
    from kiln.app.bake import Options, lock_path

    with progress("locking", verbose, label_lines=False) as log, opened() as workspace:
        results = lock_path(workspace, path, update, Options(mirror=mirror), log)
    if as_json:
        print_json([r.to_json() for r in results])
        return
    for result in results:
        count = f"{result.packages} package{'s' if result.packages != 1 else ''}"
        console.print(f"[bold]{result.state}[/] {result.lock} ({count})", highlight=False)
        if result.diff is not None:
            for line in result.diff.lines():
                console.print(f"  {escape(line)}", highlight=False)


@click.command()
@json_flag
def images(as_json: bool) -> None:
    """List every image version in the catalog, and where its bytes are (BYTES: here,
    here+registry, or the hosts of the other stores sharing the catalog that hold it)."""
    from rich.table import Table

    from kiln.app.images import list_images
    from kiln.app.stores import shown

    with opened() as workspace:
        rows = list_images(workspace)
    if as_json:
        print_json(rows)
        return
    t = Table("REF", "DIGEST", "PARENT", "LAYER", "PACKAGES", "CREATED", "BYTES", "STATE", box=None)
    for row in rows:
        if row["removed"] is not None:
            gone = row["removed"]
            at = f" {str(gone['at'])[:19]}" if gone["at"] else ""
            t.add_row(
                f"[dim]{row['ref']} (removed by {gone['by']})[/]",
                str(row["digest"])[7:19],
                *["-"] * 5,
                f"[dim]removed{at}[/]",
            )
            continue
        revoked = row["revoked"]
        if revoked is not None:
            through = f" through {revoked['by']}" if revoked["by"] != row["ref"] else ""
            state = f"[red]revoked{through}: {escape(revoked['reason'])}[/]"
        else:
            state = "ok"
        t.add_row(
            str(row["ref"]),
            str(row["digest"])[7:19],
            str(row["parent"] or "-"),
            human_size(int(str(row["size"]))),
            str(row["packages"]),
            str(row["created"])[:19],
            escape(shown(row["stores"])),
            state,
        )
    wide.print(t)


@click.command()
@click.argument("ref")
@click.option("--provenance", is_flag=True, help="print the SLSA provenance (in-toto JSON)")
@click.option("--sbom", is_flag=True, help="print the CycloneDX SBOM (JSON)")
@json_flag
def inspect(ref: str, provenance: bool, sbom: bool, as_json: bool) -> None:
    """Show an image: labels, seal checks, layers with sizes, parent chain and packages."""
    from kiln.app import images as use

    if provenance or sbom:
        if provenance and sbom:
            raise BadInput("give --provenance or --sbom, not both")
        print_json(with_workspace(use.document, ref, "provenance" if provenance else "sbom"))
        return
    data = with_workspace(use.inspect, ref)
    if as_json:
        print_json(data)
        return
    console.print(f"[bold]{data['ref']}[/]  {data['digest']}", highlight=False)
    rows = [
        ("origin", data["origin"]),
        ("created", data["created"]),
        ("recipe", data["recipe"]["path"]),
        ("cache key", data["cache_key"]),
        ("size", human_size(data["size"])),
        ("parents", " <- ".join(p["ref"] for p in data["parents"]) or "-"),
    ]
    if data.get("parent_named"):
        rows.append(("named as", data["parent_named"]))
    rows.append(("channels", ", ".join(data.get("channels") or []) or "-"))
    revoked = data.get("revoked") or data.get("revocation_scheduled")
    if revoked:
        when = "revoked" if data.get("revoked") else "to be revoked"
        rows.append(
            (when, f"{revoked['reason']} (by {revoked['by']}, from {revoked['effective']})")
        )
    for key, value in rows:
        console.print(f"  {key:<10} {escape(str(value))}", highlight=False)
    console.print("[bold]labels[/]")
    for key, value in sorted(data["labels"].items()):
        if key == "org.kiln.seal":
            continue
        console.print(f"  {key} = {escape(value)}", highlight=False)
    console.print("[bold]seal[/]")
    for check in data["seal"]:
        state = "[green]ok[/]" if check["ok"] else "[red]FAIL[/]"
        console.print(
            f"  {state} {escape(check['path'])}: {escape(check['why'])} "
            f"({check['removed']} removed)",
            highlight=False,
        )
    console.print("[bold]layers[/]")
    for layer in data["layers"]:
        console.print(
            f"  {layer['digest'][7:19]}  {human_size(layer['size']):>10}  "
            f"{escape(layer['comment'])}",
            highlight=False,
        )
    console.print(f"[bold]packages[/] ({len(data['packages'])})")
    for package in data["packages"]:
        console.print(f"  {package['name']} {package['version']}", highlight=False)
    runs = len(data["tests"])
    console.print(f"[bold]tests[/] ({runs} run{'s' if runs != 1 else ''}, newest first)")
    for run in data["tests"]:
        state = "[green]passed[/]" if run["ok"] else "[red]failed[/]"
        passed = sum(1 for result in run["results"] if result["ok"])
        converge = {None: "", True: ", converges", False: ", does not converge"}[run["converge"]]
        console.print(
            f"  {state} {run['started'][:19]}  {passed}/{len(run['results'])} commands"
            f"{converge}  {run['seconds']:.2f}s  {escape(run['error'])}".rstrip(),
            highlight=False,
        )
        for change in run["changes"]:
            console.print(f"    {change['change']} {escape(change['path'])}", highlight=False)


@click.command()
@click.argument("ref")
@json_flag
def lineage(ref: str, as_json: bool) -> None:
    """Show an image's ancestors and descendants as a tree."""
    from rich.tree import Tree

    from kiln.app import images as use

    data = with_workspace(use.lineage, ref)
    if as_json:
        print_json(data)
        return
    chain = list(reversed(data["ancestors"]))
    top = Tree(chain[0]["ref"] if chain else f"[bold]{data['ref']}[/]")
    node = top
    for ancestor in chain[1:]:
        node = node.add(ancestor["ref"])
    if chain:
        node = node.add(f"[bold]{data['ref']}[/]")

    def grow(branch: Tree, children: list[dict[str, object]]) -> None:
        for child in children:
            sub = branch.add(str(child["ref"]))
            grow(sub, child["children"])  # type: ignore[arg-type]

    grow(node, data["descendants"])
    console.print(top)


@click.command()
@click.argument("old")
@click.argument("new")
@json_flag
def diff(old: str, new: str, as_json: bool) -> None:
    """Files added/modified/deleted and packages added/removed/changed from OLD to NEW."""
    from kiln.app import images as use

    data = with_workspace(use.diff, old, new)
    if as_json:
        print_json(data)
        return
    files, packages = data["files"], data["packages"]
    for sign, key in (("+", "added"), ("~", "modified"), ("-", "deleted")):
        for path in files[key]:
            console.print(f"{sign} {escape(path)}", highlight=False)
    for package in packages["added"]:
        console.print(f"+ package {package['name']} {package['version']}", highlight=False)
    for package in packages["removed"]:
        console.print(f"- package {package['name']} {package['version']}", highlight=False)
    for package in packages["changed"]:
        console.print(
            f"~ package {package['name']} {package['old']} -> {package['new']}", highlight=False
        )
    err.print(
        f"{len(files['added'])} added, {len(files['modified'])} modified, "
        f"{len(files['deleted'])} deleted files; {len(packages['added'])} added, "
        f"{len(packages['removed'])} removed, {len(packages['changed'])} changed packages"
    )


@click.command()
@click.argument("ref")
@click.option(
    "--format",
    "kind",
    type=click.Choice(["oci-archive", "rootfs-tar"]),
    required=True,
    help="an OCI archive (skopeo's oci-archive:) or a root tarball",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def export(ref: str, kind: str, output: Path) -> None:
    """Write an image to a file, atomically."""
    from kiln.app import images as use

    if not output.absolute().parent.is_dir():
        raise BadInput(f"the folder of {output} does not exist")
    with err.status(f"exporting {ref}"):
        resolved = with_workspace(use.export_image, ref, kind, output)
    console.print(
        f"exported {resolved} to {output} ({human_size(output.stat().st_size)})", highlight=False
    )


@click.command()
@click.option(
    "--deep",
    is_flag=True,
    help="Also re-hash every unpacked layer and compare it with its file inventory.",
)
@json_flag
def fsck(deep: bool, as_json: bool) -> None:
    """Verify every blob digest and every reference in the store and catalog."""
    from kiln.app import images as use

    report = with_workspace(use.check, deep)
    if as_json:
        print_json(report.to_json())
    else:
        for fault in report.faults:
            console.print(f"[red]fault[/] {escape(fault)}", highlight=False)
        for note in report.notes:
            console.print(f"note  {escape(note)}", highlight=False)
        if report.elsewhere:
            first, held = next(iter(sorted(report.elsewhere.items())))
            count = len(report.elsewhere)
            console.print(
                f"note  {count} catalog image{'s' if count != 1 else ''} held elsewhere, "
                f"not checked here (first: {escape(first)}, held by {escape(held)}; "
                "--json lists them)",
                highlight=False,
            )
        state = "[green]ok[/]" if report.ok else f"[red]{len(report.faults)} faults[/]"
        layers = f", {report.layers} unpacked layers" if deep else ""
        console.print(f"{state}: {report.blobs} blobs, {report.images} images{layers} checked")
    if not report.ok:
        raise SystemExit(1)


# listed one by one in --json only: there can be thousands
SUMMED = {
    "blob": ("blob", "blobs"),
    "index": ("index.json entry", "index.json entries"),
    "deb": ("cached package", "cached packages"),
}


@click.command()
@click.option("--dry-run", is_flag=True, help="list what would be removed and why the rest stays")
@click.option(
    "--keep-last",
    type=click.IntRange(min=0),
    metavar="N",
    help="keep the last N versions of each image name",
)
@click.option(
    "--keep-younger-than",
    metavar="T",
    help="keep every version younger than T (30s, 15m, 24h, 7d, 2w)",
)
@click.option(
    "--keep-channel-history",
    metavar="D",
    help="keep every version a channel pointed at within D (a channel's head always stays)",
)
@policy_option("whose [retention] applies; the flags above override its keys")
@json_flag
def gc(
    dry_run: bool,
    keep_last: int | None,
    keep_younger_than: str | None,
    keep_channel_history: str | None,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Remove image versions retention lets go, what interrupted bakes left, and blobs,
    layers and cached packages nothing uses. Without a retention rule no version goes."""
    from kiln.app import gc as use

    collected = with_workspace(
        use.collect_garbage,
        dry_run,
        keep_last=keep_last,
        keep_younger_than=keep_younger_than,
        keep_channel_history=keep_channel_history,
        policy_file=policy_file,
    )
    if as_json:
        # on one line: Python's JSON encoder is slower indenting (bench/lifecycle_gc.py), a dry
        # run over a large store lists tens of thousands of items (jq reads it either way)
        click.echo(json.dumps(collected.to_json(), sort_keys=True, default=str))
        return
    report, decision = collected.report, collected.decision
    verb = "would remove" if dry_run else "removed"
    lines: list[str] = []
    where = collected.policy["path"] or "no policy file"
    rules = ", ".join(
        f"{k}={v} ({collected.sources.get(k, where)})"
        for k, v in decision.rules.to_json().items()
        if v is not None
    )
    if not decision.rules.active:
        lines.append(
            f"retention: no rule set ({where}, no flag): no image version is removed "
            "(--keep-last N, --keep-younger-than T, --keep-channel-history D, or "
            "[retention] in kiln.toml)"
        )
    else:
        lines.append(f"retention: {rules}")
        if dry_run:
            lines += [
                f"keep {version.ref}: {'; '.join(decision.reasons(version.id))}"
                for version in decision.kept_versions()
            ]
    held = {v.ref: decision.held_by(v.id) for v in decision.removed}
    for item in report.items:
        if item.kind in SUMMED:
            continue
        if held.get(item.path) and item.kind == "version":
            channels = ", ".join(held[item.path])
            lines.append(f"{verb} version {item.path} (held by {channels} before)")
            continue
        extra = ""
        if item.processes:
            extra += f", killed {len(item.processes)} processes"
        if item.mounts:
            extra += f", unmounted {len(item.mounts)}"
        shown = f" ({human_size(item.bytes)}{extra})" if item.kind != "version" else ""
        lines.append(f"{verb} {item.kind} {item.path}{shown}")
    counts = report.counts()
    for kind, (one, many) in SUMMED.items():
        if counts[kind]:
            size = human_size(report.bytes_of(kind))
            lines.append(f"{verb} {counts[kind]} {one if counts[kind] == 1 else many} ({size})")
    lines += [f"note: {note}" for note in collected.notes]
    summary = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    freed = "would free" if dry_run else "freed"
    lines.append(f"{verb} {summary}; {freed} {human_size(report.bytes)}")
    # one write: a dry run over a large catalog lists thousands of lines
    click.echo("\n".join(lines))


def register(group: click.Group) -> None:
    for command in (bake, lock, images, inspect, lineage, diff, export, fsck, gc):
        group.add_command(command)
