"""The JSON documents of ``/api/...``: the same data the page shows (operations.md).

:class:`PageData` holds what the page keeps between requests (the two folder indexes, the
metadata and sidecar caches, the thumbnails, the requeue of quarantined files) and answers
each endpoint from them with bounded work: a page of results reads at most ``page_size``
files' metadata, never the whole outbox. The service builds it, with a :class:`DaemonState`
of what the page reads from the running daemon, and hands it to the HTTP server.
"""

from __future__ import annotations

import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loguru import logger

from core.reasons import DESCRIPTIONS, Reason
from daemon.metrics import Health, Metrics
from daemon.spool.names import SIDECAR_SUFFIX, numbered
from daemon.web.index import FolderIndex, per_minute
from daemon.web.meta import MetaCache
from daemon.web.paths import lstat_inside, open_inside
from daemon.web.requeue import Requeue, read_sidecar
from daemon.web.thumbs import Thumbnails

if TYPE_CHECKING:
    from daemon.settings import DaemonSettings

_COUNTER = re.compile(r"^(?P<name>.*) \((?P<n>\d{1,6})\)$")
ETA_WINDOW_S = 600.0
SIDECARS_KEPT = 4096
MAX_PAGE = 1_000_000


def _url(prefix: str, rel: str) -> str:
    return f"{prefix}/{quote(rel, safe='/')}"


@dataclass(frozen=True)
class DaemonState:
    """What the page reads from the running daemon: its health, its metrics, and
    ``waiting()``: (inbox files settling, claims resumed and not yet submitted)."""

    health: Health
    metrics: Metrics
    waiting: Callable[[], tuple[int, int]]


class PageData:
    """Everything behind the page for one running daemon (module docstring); ``close()``
    stops its thumbnail decoder."""

    def __init__(self, settings: DaemonSettings, daemon: DaemonState) -> None:
        self.settings = s = settings
        self.daemon = daemon
        self.root = Path(s.root)
        self.outbox, self.archive = self.root / "outbox", self.root / "archive"
        self.quarantine = self.root / "quarantine"
        self.output_ext = s.output_extension
        ext = self.output_ext
        self.outputs = FolderIndex(
            self.outbox, keep=lambda n: n.endswith(ext), min_interval_s=s.page_index_seconds
        )
        self.sidecars = FolderIndex(
            self.quarantine,
            keep=lambda n: n.endswith(SIDECAR_SUFFIX),
            min_interval_s=s.page_index_seconds,
        )
        self.meta = MetaCache()
        self.thumbs = Thumbnails(
            self.root / ".artd" / "page" / "thumbs",
            size=s.page_thumb_px,
            max_bytes=int(s.page_thumb_cache_mb * (1 << 20)),
            max_pixels=s.max_pixels,
            background=s.background_rgb,
        )
        try:
            self.requeue = Requeue(self.root)
            self.requeue.recover()
        except BaseException:
            self.thumbs.close()  # its decoder process must not outlive a page never served
            raise
        self.token_problem: str | None = None
        try:
            self.token = s.retry_token()
        except ValueError as exc:  # an unreadable secret: read-only, never unprotected
            self.token, self.token_problem = None, str(exc)
            logger.error("page: retry is off: {}", exc)
        self._sidecar_cache: OrderedDict[tuple[str, float, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        # Read the listings once now, off the request path: the first visitor of a full
        # outbox then gets an answer as fast as every later one.
        threading.Thread(target=self._warm, name="artd-page-index", daemon=True).start()

    def _warm(self) -> None:
        self.outputs.refresh(force=True)
        self.sidecars.refresh(force=True)

    # --- /api/status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``GET /api/status``: the daemon's health, queue, throughput, models and model
        workers (alive, busy, restarts, why one does not serve)."""
        now = time.time()
        health = self.daemon.health.report()
        queue = dict(health.get("queue") or {})
        inbox_waiting, backlog = self.daemon.waiting()
        in_work = int(queue.get("in_flight", 0))
        waiting = inbox_waiting + backlog
        recent = self.outputs.since(now - ETA_WINDOW_S)
        rate = len(recent) / ETA_WINDOW_S
        remaining = waiting + in_work
        hour = self.outputs.since(now - 3600)
        return {
            "instance": self.settings.instance,
            "time": now,
            "health": health,
            "queue": {
                "waiting": waiting,
                "inbox_settling": inbox_waiting,
                "resumed": backlog,
                "in_work": in_work,
                "stages": queue,
                "eta_s": None if remaining == 0 else (remaining / rate if rate else None),
                "rate_per_min": round(rate * 60, 2),
            },
            "throughput": {"per_minute": per_minute(hour, now), "last_hour": len(hour)},
            "models": self._models(health),
            "workers": list(health.get("workers") or []),
            "reload": self._reload(health),
            "counts": {
                "outputs": len(self.outputs.entries()),
                "quarantined": len(self.sidecars.entries()),
            },
            "retry_enabled": self.token is not None,
            "retry_problem": self.token_problem,
            "page_size": self.settings.page_size,
        }

    def _models(self, health: dict[str, Any]) -> list[dict[str, Any]]:
        """The served models: /healthz's list where it has one, with the labels of
        ``artd_model_info`` (epoch, image space, device, precision) merged in."""
        info: dict[str, dict[str, str]] = {}
        for family in self.daemon.metrics.registry.collect():
            if family.name == "artd_model":
                for sample in family.samples:
                    info[sample.labels.get("version", "")] = dict(sample.labels)
        listed = health.get("models")
        if not isinstance(listed, list) or not listed:
            return list(info.values())
        return [
            info.get(str(m.get("version")), {}) | dict(m) for m in listed if isinstance(m, dict)
        ]

    def _reload(self, health: dict[str, Any]) -> dict[str, Any]:
        registry = self.daemon.metrics.registry
        ok = registry.get_sample_value("artd_model_reload_total", {"result": "ok"}) or 0
        failed = registry.get_sample_value("artd_model_reload_total", {"result": "failed"}) or 0
        error = health.get("model_reload_error")
        last = "failed" if error else ("ok" if ok else "none yet")
        return {"last": last, "error": error, "ok": int(ok), "failed": int(failed)}

    # --- /api/recent --------------------------------------------------------------------

    def recent(self, page: int, size: int) -> dict[str, Any]:
        """``GET /api/recent``: page ``page`` of the outputs, newest first."""
        entries = self.outputs.entries()
        page = max(0, min(page, MAX_PAGE))
        chosen = entries[page * size : (page + 1) * size]
        items = []
        for entry in chosen:
            rel = PurePosixPath(entry.rel)
            key = (entry.rel, entry.mtime, entry.size)
            meta = self.meta.get(key, lambda r=rel: open_inside(self.outbox, r))
            original = self._archived(rel)
            items.append(
                {
                    "output": entry.rel,
                    "time": entry.mtime,
                    "size": entry.size,
                    "input": self._input_name(rel),
                    "url": _url("/files/outbox", entry.rel),
                    "after": _url("/thumbs/outbox", entry.rel),
                    "before": None if original is None else _url("/thumbs/archive", original),
                    "meta": meta,
                }
            )
        return {"total": len(entries), "page": page, "size": size, "items": items}

    def _input_name(self, rel: PurePosixPath) -> str:
        return rel.name.removesuffix(self.output_ext)

    def _archived(self, rel: PurePosixPath) -> str | None:
        """The archived original of output ``rel``: same folder and input name, with the
        output's counter when it has one (``a.jpg (2).png`` -> ``a (2).jpg``, then
        ``a.jpg``). Best effort: the page shows no "before" when it is not found."""
        name = self._input_name(rel)
        counters = [1]
        match = _COUNTER.match(name)
        if match:
            name, counters = match["name"], [int(match["n"]), 1]
        for n in counters:
            candidate = rel.parent / numbered(name, n)
            info = lstat_inside(self.archive, candidate)
            if info is not None and stat.S_ISREG(info.st_mode):
                return str(candidate)
        return None

    # --- /api/quarantine ----------------------------------------------------------------

    def quarantined(self, page: int, size: int) -> dict[str, Any]:
        """``GET /api/quarantine``: page ``page`` of the quarantined files."""
        entries = self.sidecars.entries()
        page = max(0, min(page, MAX_PAGE))
        items = []
        for entry in entries[page * size : (page + 1) * size]:
            rel = PurePosixPath(entry.rel.removesuffix(SIDECAR_SUFFIX))
            sidecar = self._sidecar(rel, entry.mtime, entry.size)
            info = lstat_inside(self.quarantine, rel)
            reason = str(sidecar.get("reason", ""))
            items.append(
                {
                    "file": str(rel),
                    "present": info is not None,
                    "regular": info is not None and stat.S_ISREG(info.st_mode),
                    "reason": reason,
                    "description": _describe(reason),
                    "message": sidecar.get("message", ""),
                    "time": sidecar.get("time"),
                    "original_path": sidecar.get("original_path"),
                    "details": sidecar.get("details", {}),
                    "size": sidecar.get("size"),
                    "sha256": sidecar.get("sha256"),
                    "attempts": sidecar.get("attempts"),
                    "interrupted": sidecar.get("interrupted", 0),
                    "solo_crashes": sidecar.get("solo_crashes", 0),
                    "instance": sidecar.get("instance"),
                }
            )
        return {"total": len(entries), "page": page, "size": size, "items": items}

    def _sidecar(self, rel: PurePosixPath, mtime: float, size: int) -> dict[str, Any]:
        key = (str(rel), mtime, size)
        with self._lock:
            if key in self._sidecar_cache:
                return self._sidecar_cache[key]
        value = read_sidecar(self.quarantine, rel)
        with self._lock:
            self._sidecar_cache[key] = value
            while len(self._sidecar_cache) > SIDECARS_KEPT:
                self._sidecar_cache.popitem(last=False)
        return value

    def close(self) -> None:
        """Stop the thumbnail decoder (the listings and caches need no stopping)."""
        self.thumbs.close()


def _describe(reason: str) -> str:
    try:
        return DESCRIPTIONS[Reason(reason)]
    except (ValueError, KeyError):
        return "Refused for a reason this version does not know."
