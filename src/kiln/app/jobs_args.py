"""The arguments of each kind of job, checked, and the kiln command line each becomes.

A job's row is hostile input: whoever can write the queue's tables can put anything in
its arguments. So a worker runs no argv taken from a row: it checks each argument
against its task's rules (an image ref by kiln.refs, a path absolute and without NUL, a
commit 40 hex digits, ...), refuses unknown ones, and builds a fixed argv from what
passed (:func:`argv`). ``defer`` checks the same way before a job is written, so a bad
argument is exit 2 at once rather than a failed job later.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import refs
from kiln.errors import BadInput, shown

TASKS = (
    "kiln.bake",
    "kiln.test",
    "kiln.refresh",
    "kiln.propagate",
    "kiln.propagate_item",
    "kiln.prove",
    "kiln.rollout",
)
MAX_TEXT = 4096
MAX_LIST = 256
COMMIT = re.compile(r"[0-9a-f]{40}")
SET_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
QUEUE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
GIT_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
HINT = "check the job's arguments (kiln jobs --json shows them); defer it again with good ones"


def _bad(task: str, key: str, why: str) -> BadInput:
    return BadInput(f"{task}: argument {key}: {why}", hint=HINT)


def _text(task: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(task, key, f"a string was expected, not {type(value).__name__}")
    if "\x00" in value:
        raise _bad(task, key, f"{shown(value)} holds a NUL character")
    if len(value) > MAX_TEXT:
        raise _bad(task, key, f"longer than {MAX_TEXT} characters")
    if any(ord(c) < 32 and c != "\t" for c in value):
        raise _bad(task, key, f"{shown(value)} holds a control character")
    if value.startswith("-"):
        raise _bad(task, key, f"{shown(value)} starts with '-'")
    return value


def ref(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    why = refs.problem(text)
    if why is not None:
        raise _bad(task, key, why)
    return text


def name(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    if len(text) > refs.MAX_NAME or not re.fullmatch(refs.NAME, text):
        raise _bad(task, key, f"{shown(text)} is not a name: a name is {refs.NAME_RULE}")
    return text


def channel(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    why = refs.channel_problem(text)
    if why is not None:
        raise _bad(task, key, f"{shown(text)} is not a channel: {why}")
    return text


def abspath(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    path = Path(text)
    if not path.is_absolute():
        raise _bad(task, key, f"{shown(text)} is not an absolute path (a worker has its own cwd)")
    if ".." in path.parts:
        raise _bad(task, key, f"{shown(text)} holds '..'")
    return str(path)


def relpath(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    path = Path(text)
    if path.is_absolute() or ".." in path.parts:
        raise _bad(task, key, f"{shown(text)} is not a path inside the repository")
    return str(path)


def flag(task: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(task, key, f"true or false was expected, not {type(value).__name__}")
    return value


def count(task: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise _bad(task, key, "a whole number from 1 to 1000 was expected")
    return value


def row_id(task: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise _bad(task, key, "a catalog row id (a whole number from 1) was expected")
    return value


def timestamp(task: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
        raise _bad(task, key, "a periodic job's timestamp (seconds since 1970) was expected")
    return value


def mirror(task: str, key: str, value: Any) -> str:
    return _text(task, key, value)


def git(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    if not (text.startswith(GIT_SCHEMES) or text.startswith("/")) or any(c.isspace() for c in text):
        raise _bad(
            task,
            key,
            f"{shown(text)} is not a git URL kiln clones: https://, http://, ssh://, git://, "
            "file:// or an absolute path",
        )
    return text


def commit(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    if not COMMIT.fullmatch(text):
        raise _bad(task, key, f"{shown(text)} is not a commit: 40 lowercase hex digits")
    return text


def setting(task: str, key: str, value: Any) -> str:
    text = _text(task, key, value)
    head, equals, _ = text.partition("=")
    if not equals or not SET_KEY.fullmatch(head):
        raise _bad(task, key, f"{shown(text)} is not KEY=VALUE")
    return text


def many(check: Callable[[str, str, Any], Any]) -> Callable[[str, str, Any], list[Any]]:
    def checked(task: str, key: str, value: Any) -> list[Any]:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise _bad(task, key, f"a list of at most {MAX_LIST} was expected")
        return [check(task, f"{key}[{i}]", item) for i, item in enumerate(value)]

    return checked


Check = Callable[[str, str, Any], Any]
# Each task's arguments: name -> (rule, default). A default of ... is required.
SPECS: dict[str, dict[str, tuple[Check, Any]]] = {
    "kiln.bake": {
        "path": (abspath, None),
        "git": (git, None),
        "commit": (commit, None),
        "recipe": (relpath, None),
        "no_cache": (flag, False),
        "mirror": (mirror, None),
    },
    "kiln.test": {
        "ref": (ref, ...),
        "sets": (many(setting), []),
        "converge": (flag, False),
    },
    "kiln.refresh": {
        "names": (many(name), []),
        "security_only": (flag, False),
        "promote": (channel, None),
        "parallel": (count, 1),
        "max_failures": (count, 1),
        "fetch": (flag, False),
        "policy": (abspath, None),
        "timestamp": (timestamp, None),
    },
    "kiln.propagate": {
        "ref": (ref, ...),
        "to": (channel, None),
        "parallel": (count, 1),
        "max_failures": (count, 1),
        "recipes": (abspath, None),
        "include_pinned": (flag, False),
        "policy": (abspath, None),
    },
    "kiln.propagate_item": {  # one item of a propagation spread over the workers
        "run": (row_id, ...),
        "item": (row_id, ...),
        "name": (name, ...),
        "max_failures": (count, 1),
        "policy": (abspath, None),
    },
    "kiln.prove": {
        "ref": (ref, None),
        "no_package_cache": (flag, False),
        "mirror": (mirror, None),
        "timestamp": (timestamp, None),
    },
    "kiln.rollout": {
        "group": (name, ...),
        "to": (ref, None),
        "sets": (many(setting), []),
        "resume": (flag, False),
        "promote": (flag, False),
        "policy": (abspath, None),
    },
}


@dataclass(frozen=True)
class Job:
    """A job's task and its checked arguments (every key of its spec, defaults filled)."""

    task: str
    args: dict[str, Any]


def check(task: Any, raw: Any) -> Job:
    """The checked arguments of a job, or BadInput saying which one is wrong and why."""
    if not isinstance(task, str) or task not in SPECS:
        raise BadInput(
            f"no such task: {shown(str(task))}", hint=f"the tasks are {', '.join(TASKS)}"
        )
    if not isinstance(raw, Mapping):
        raise _bad(task, "*", "the arguments are no table")
    spec = SPECS[task]
    unknown = sorted(str(k) for k in raw if k not in spec)
    if unknown:
        raise _bad(task, unknown[0], f"unknown (known: {', '.join(spec)})")
    args: dict[str, Any] = {}
    for key, (rule, default) in spec.items():
        value = raw.get(key)
        if value is None or (value == [] and default == []):
            if default is ...:
                raise _bad(task, key, "missing")
            args[key] = default
            continue
        args[key] = rule(task, key, value)
    if task == "kiln.bake":
        _bake_source(args)
    return Job(task, args)


def _bake_source(args: dict[str, Any]) -> None:
    task = "kiln.bake"
    if (args["path"] is None) == (args["git"] is None):
        raise _bad(task, "path", "give a recipe path, or a git URL and commit, not both")
    if args["git"] is not None and args["commit"] is None:
        raise _bad(task, "commit", "a git bake names the commit it bakes (40 hex)")
    if args["git"] is None and (args["commit"] is not None or args["recipe"] is not None):
        raise _bad(task, "commit", "commit and recipe go with a git URL")


def lock_of(job: Job) -> str:
    """The job's lock and queueing lock: the image name it works on where the arguments
    tell it (one job per name at a time, one waiting), else what it works on."""
    args = job.args
    if job.task == "kiln.bake":
        if args["path"] is not None:
            return _recipe_name(Path(args["path"])) or f"path:{args['path']}"
        return f"git:{args['git']}@{args['commit']}"
    if job.task == "kiln.refresh":
        names = args["names"]
        if not names:
            return "refresh:all"
        return names[0] if len(names) == 1 else "refresh:" + ",".join(sorted(names))
    if job.task == "kiln.rollout":
        return f"group:{args['group']}"
    if job.task == "kiln.propagate_item":
        return str(args["name"])
    if args.get("ref") is not None:
        return refs.parse(args["ref"]).name
    return "prove:channels"  # the periodic proof of what every channel points at


def queueing_lock_of(job: Job) -> str:
    """The job's queueing lock: its task and lock. While a job waits, another of the same
    task for the same name is not queued beside it (it would do the same work), but a job
    of another task is: a test of web waits behind a bake of web, it is not dropped."""
    return f"{job.task}:{lock_of(job)}"


def _recipe_name(path: Path) -> str | None:
    """The [image] name of the recipe file at ``path`` (None for a folder or a file that
    does not say: the lock is then the path)."""
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return None
        found = tomllib.loads(path.read_text()).get("image", {}).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and refs.is_ref(found) and ":" not in found else None


def argv(job: Job, recipe: Path | None = None) -> list[str]:
    """The kiln command line (after ``kiln``) that runs the job; ``recipe``: a git bake's
    recipe in its clone."""
    a = job.args
    words: list[str]
    if job.task == "kiln.bake":
        words = ["bake", str(recipe) if recipe is not None else a["path"]]
        words += ["--no-cache"] if a["no_cache"] else []
        words += ["--mirror", a["mirror"]] if a["mirror"] else []
    elif job.task == "kiln.test":
        words = ["test", a["ref"], *_each("--set", a["sets"])]
        words += ["--converge"] if a["converge"] else []
    elif job.task == "kiln.refresh":
        words = ["refresh", *a["names"], "--parallel", str(a["parallel"])]
        words += ["--max-failures", str(a["max_failures"])]
        words += ["--security-only"] if a["security_only"] else []
        words += ["--promote", a["promote"]] if a["promote"] else []
        words += ["--fetch"] if a["fetch"] else []
        words += ["--policy", a["policy"]] if a["policy"] else []
    elif job.task == "kiln.propagate":
        words = ["propagate", a["ref"], "--parallel", str(a["parallel"])]
        words += ["--max-failures", str(a["max_failures"])]
        words += ["--to", a["to"]] if a["to"] else []
        words += ["--recipes", a["recipes"]] if a["recipes"] else []
        words += ["--include-pinned"] if a["include_pinned"] else []
        words += ["--policy", a["policy"]] if a["policy"] else []
        words += ["--spread"]  # on a worker: each item a job of its own, for every worker
    elif job.task == "kiln.propagate_item":
        words = ["propagate-item", str(a["run"]), str(a["item"]), a["name"]]
        words += ["--max-failures", str(a["max_failures"])]
        words += ["--policy", a["policy"]] if a["policy"] else []
    elif job.task == "kiln.prove":
        assert a["ref"] is not None, "a proof of every channel runs one argv per image"
        words = ["rebuild", a["ref"], "--prove"]
        words += ["--no-package-cache"] if a["no_package_cache"] else []
        words += ["--mirror", a["mirror"]] if a["mirror"] else []
    else:
        words = ["rollout", a["group"], *_each("--set", a["sets"])]
        words += ["--to", a["to"]] if a["to"] else []
        words += ["--resume"] if a["resume"] else []
        words += ["--promote"] if a["promote"] else []
        words += ["--policy", a["policy"]] if a["policy"] else []
    return [*words, "--json"]


def _each(option: str, values: list[str]) -> list[str]:
    return [word for value in values for word in (option, value)]


def queue_name(value: str) -> str:
    if not QUEUE.fullmatch(value):
        raise BadInput(
            f"{shown(value)} is not a queue name",
            hint="a queue name is 1-64 of a-z, 0-9, '.', '_' and '-', starting with a "
            "letter or digit",
        )
    return value


def summary(args: Mapping[str, Any], limit: int = 60) -> str:
    """A job's arguments in one short line for ``kiln jobs`` (the row's values, cut)."""
    parts = []
    for key, value in args.items():
        if value in (None, False, [], "") or key == "timestamp":
            continue
        shown_value = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(
            shown_value if key in ("ref", "path", "group", "names") else f"{key}={shown_value}"
        )
    line = " ".join(parts).replace("\n", " ")
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."
