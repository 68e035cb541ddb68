"""Names: which inbox names are never taken, claim ids, temporary names, and fitting a name
(with its `` (n)`` counter) into the filesystem's limit."""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import PurePosixPath

TEMP_MARK = ".artd-tmp-"
SIDECAR_SUFFIX = ".error.json"
# An instance name is a folder name of the spool (state/<instance>/): the one rule, which
# the daemon's settings check too (daemon.settings.daemon), so `artd check` refuses what
# the spool would refuse at start. Use with fullmatch.
INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
INSTANCE_RULE = "letters, digits, '_', '.', '-' only (a letter or digit first), at most 64"
ID_RE = re.compile(r"\d{20}-[0-9a-f]{8}")
ID_LEN = 29
SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,10}")
_TEMP_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", ".swp")
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
_NAME_MAX = 255  # bytes, Linux and macOS


def new_claim_id() -> str:
    """Time-ordered (sorts by creation) and unique across processes and hosts."""
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def is_temporary_name(name: str) -> bool:
    """Names that are still being written, or system junk: never taken."""
    lower = name.lower()
    return name.startswith((".", "~$")) or lower in _JUNK_NAMES or lower.endswith(_TEMP_SUFFIXES)


def temp_name(name: str, claim_id: str) -> str:
    """The dot-name a claim writes ``name`` under before renaming it into place."""
    # The mark must fit in NAME_MAX. fsencode: names may hold bytes that are not UTF-8.
    short = os.fsdecode(os.fsencode(name)[:150])
    return f".{short}{TEMP_MARK}{claim_id}"


def temp_owner(name: str) -> str | None:
    """The claim id a temporary name of :func:`temp_name` belongs to, None for other names."""
    if not name.startswith(".") or TEMP_MARK not in name:
        return None
    return name.rsplit(TEMP_MARK, 1)[1]


def work_suffix(name: str) -> str:
    """The extension a claimed file keeps in work/: a plain one, never ``.json`` (a record)."""
    suffix = PurePosixPath(name).suffix
    return suffix if SUFFIX_RE.fullmatch(suffix) and suffix.lower() != ".json" else ""


def fit_name(name: str, tail: str = "", reserve: int = 0) -> str:
    """``name + tail``, ``name`` cut (never inside a character) so that the whole plus
    ``reserve`` bytes fits NAME_MAX: a long input name must not make its output unwritable."""
    room = _NAME_MAX - reserve - len(os.fsencode(tail))
    while name and len(os.fsencode(name)) > room:
        name = name[:-1]
    return name + tail


def _counter(n: int) -> str:
    return f" ({n})" if n > 1 else ""


def output_name(name: str, n: int, ext: str) -> str:
    """``a.jpg.png``, ``a.jpg (2).png``, ...: the input's extension stays inside the name."""
    return fit_name(name, _counter(n) + ext)


def numbered(name: str, n: int, reserve: int = 0) -> str:
    """``a.jpg``, ``a (2).jpg``, ... (archive and quarantine keep the input's extension last)."""
    p = PurePosixPath(name)
    suffix = p.suffix if SUFFIX_RE.fullmatch(p.suffix) else ""
    stem = name[: len(name) - len(suffix)]
    return fit_name(stem, _counter(n) + suffix, reserve)


def flat_name(rel: PurePosixPath) -> str:
    """``a/b/c.jpg`` as the one name ``a__b__c.jpg`` (filed at the top of an area)."""
    return "__".join(rel.parts)
