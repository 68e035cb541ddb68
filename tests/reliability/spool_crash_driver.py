"""Drives the real Spool through the crash-point loop: ``python spool_crash_driver.py PLAN.json``.

For every crash point N of the plan it copies the template root into a fresh root and forks
three children, each of which imports ``daemon.spool`` *after* setting its environment (the
hook reads it at import, as in the daemon):

1. ``_ARTD_CRASHPOINT=N``: recover, claim everything, then commit or quarantine each file,
   the way the daemon does; it SIGKILLs itself at its N-th filesystem step;
2. ``_ARTD_CRASHPOINT=K`` (small): restart; killed again, usually inside ``recover()``;
3. no crash point: restart and finish.

The parent (imports nothing of the spool) forks cheaply; the test checks every root.
Results (exit status and the step each child died at) go to ``PLAN.json``'s ``report`` path.

A plan with ``"prepare": K`` instead turns its template (an ``inbox/``) into a root with K
files claimed by a process that then died, so every start of the loop begins with resumed
claims (one of them with the ``solo`` marker an artd that ran the model in the service wrote:
recovery drops it, charging nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import loguru  # noqa: F401  (imported once here, so that each child's import is cheap)


def _resolve(rel: object, sidecar: bytes | None, sidecar_rel: str | None) -> dict:
    """A resolver without torch: a job sidecar's settings as they are (daemon.settings.jobs's
    Resolver validates them; here only where they travel and that they stay fixed matters)."""
    from daemon import sidecars

    settings = sidecars.parse(sidecar) if sidecar is not None else {}
    return {"settings": settings, "sidecar": sidecar_rel, "output_ext": ".png"}


def _spool(root: Path):
    from daemon.spool import Spool

    return Spool(root, "crash", resolve=_resolve)


def _output(data: bytes, claim: object) -> bytes:
    """What the "model" makes: the input's hash and the settings fixed at its claim."""
    settings = json.dumps(claim.job["settings"] if claim.job else None, sort_keys=True)
    return b"OUT:" + hashlib.sha256(data).hexdigest().encode() + b"|" + settings.encode()


def _scenario(root: Path) -> None:
    from core.reasons import Reason

    spool = _spool(root)
    spool.prepare()
    claims = spool.recover()
    _mark("recovered")
    for path in list(spool.scan_inbox()):
        claim = spool.claim(path)
        if claim is not None:
            claims.append(claim)
    for claim in claims:
        with spool.open_claim(claim) as handle:
            data = handle.read()  # the "model"
        if claim.solo_crashes:  # the service's death never charges a file
            spool.quarantine(claim, Reason.CRASHED_REPEATEDLY, "charged for a service death")
        elif data.startswith(b"BAD"):
            spool.quarantine(claim, Reason.NOT_AN_IMAGE, "the test's bad file")
        else:
            spool.commit(claim, _output(data, claim))
    spool.close()


def _prepare(root: Path, count: int) -> None:
    spool = _spool(root)
    spool.prepare()
    for index, path in enumerate(list(spool.scan_inbox())[:count]):
        claim = spool.claim(path)
        assert claim is not None
        if index == 0:  # as an artd that ran the model in the service marked a suspect
            record = json.loads(spool._machine.records.path(claim.id).read_bytes())
            spool._machine.records.write(record | {"solo": True})
    os.kill(os.getpid(), signal.SIGKILL)  # died with them claimed


def _mark(text: str) -> None:
    trace = os.environ.get("_ARTD_CRASHPOINT_TRACE")
    if trace:
        with open(trace, "a") as handle:
            handle.write(f"-- {text}\n")


def _child(root: Path, crash_at: int | None, trace: Path, prepare: int = 0) -> tuple[int, str]:
    """Run the scenario (or ``_prepare``) in a forked child; (exit status or -signal, the
    last step traced)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.environ.pop("_ARTD_CRASHPOINT", None)
            if crash_at is not None:
                os.environ["_ARTD_CRASHPOINT"] = str(crash_at)
            os.environ["_ARTD_CRASHPOINT_TRACE"] = str(trace)
            if prepare:
                _prepare(root, prepare)
            else:
                _scenario(root)
        except BaseException as exc:  # reported through the exit status and the trace
            with open(trace, "a") as handle:
                handle.write(f"!! {type(exc).__name__}: {exc}\n")
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    lines = trace.read_text().splitlines() if trace.exists() else []
    return code, lines[-1] if lines else ""


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    template, base = Path(plan["template"]), Path(plan["base"])
    if plan.get("prepare"):
        code, _ = _child(template, None, base / "prepare.trace", plan["prepare"])
        Path(plan["report"]).write_text(json.dumps({"prepare": code}))
        return 0
    results = {}
    for n in plan["points"]:
        root = base / f"n{n:04d}"
        shutil.copytree(template, root, symlinks=True)
        runs = []
        for phase, crash_at in (("crash", n), ("recovery", 1 + n % 7), ("finish", None)):
            trace = base / f"n{n:04d}-{phase}.trace"
            runs.append((phase, *_child(root, crash_at, trace)))
        results[n] = runs
    Path(plan["report"]).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main(sys.argv[1]))
