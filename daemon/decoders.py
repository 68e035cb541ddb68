"""The decoder process pool: decoding in worker processes, so that a decoder that crashes
(a segfault in a native library) or hangs costs one file, never the daemon.

Each decode borrows one idle worker, sends it the claimed file's path and the decode settings
and gets back the HWC uint8 pixels, or the ImageError / OSError the decode raised. A worker
that dies (or hangs) mid-file is replaced and the file, its only job, is tried once more alone
in a fresh worker: the first death may have been someone else's doing (the OOM killer, an
operator's ``kill``). A second death quarantines the file as ``decoder_crashed``.

Workers are forked from a forkserver that has imported the decoder once, so a replacement
starts in milliseconds and inherits none of the daemon's threads or locks. Workers ignore
SIGINT/SIGTERM (the daemon decides when they stop) and exit when the daemon's end of their
pipe closes, so a ``kill -9`` of the daemon leaves no orphans.

Test hook, inert in production: a pool built with ``test_segfault=True`` (the default when
``_ARTD_TEST_SEGFAULT=1`` was in the environment at import) makes a worker crash with a real
SIGSEGV on any file whose bytes start with :data:`SEGFAULT_MARKER`.

Colour and transparency: workers convert by the file's ICC profile to sRGB
(``DecodeSettings.colour``, core.images.colour) and, with ``keep_alpha``, return HWC *RGBA* arrays
for inputs with transparency (core.runtime.img2img re-attaches the alpha). :meth:`DecoderPool.
decode_with_origin` also returns the input's core.images.origin.Origin (format, profile, metadata).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np
from loguru import logger

from core.durable import open_regular
from core.images import loading
from core.images.colour import ColourPolicy
from core.images.decode import DEFAULT_MAX_PIXELS, ImageError
from core.images.origin import Origin
from core.images.pixels import ResizePolicy
from core.reasons import Reason

if TYPE_CHECKING:
    from core.outputs.settings import OutputSettings

DECODE_TIMEOUT_S = 120.0  # far beyond any real image at max_pixels: a hang, not slowness
MAX_TASKS_PER_WORKER = 500  # recycle: decoders fragment memory on odd files
SEGFAULT_MARKER = b"ARTD-TEST-SEGFAULT"
_SEGFAULT_FROM_ENV = os.environ.get("_ARTD_TEST_SEGFAULT") == "1"


@dataclass(frozen=True)
class DecodeSettings:
    size: int | str
    resize: ResizePolicy = "fit"
    max_pixels: int = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] = (255, 255, 255)
    colour: ColourPolicy = field(default_factory=ColourPolicy)
    keep_alpha: bool = False

    @classmethod
    def for_output(cls, output: OutputSettings) -> DecodeSettings:
        """How ``artd process`` decodes for ``output`` (size, resize, colour, background,
        transparency; the default decoded size limit)."""
        return cls(
            size=output.size,
            resize=output.resize,
            background=output.background,
            colour=output.colour,
            keep_alpha=output.keep_alpha,
        )


# What a worker is sent: (path, size, resize, max_pixels, background, test_segfault, colour,
# keep_alpha). A plain tuple: the round trip is most of what isolation costs on small images.
_Request = tuple[str, int, ResizePolicy, int, tuple[int, int, int], bool, ColourPolicy, bool]


class PoolClosedError(Exception):
    """The pool was closed while this decode waited: the file stays claimed."""


class DecoderUnavailableError(RuntimeError):
    """No worker process could be started (the host, not the file): retry the file later."""


class _WorkerDiedError(Exception):
    pass


# --- the worker process ----------------------------------------------------------------------


def _worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the daemon is gone or closed the pool
        if request is None:
            return
        conn.send(_decode(request))


def _decode(request: _Request) -> tuple[Any, ...]:
    path, size, resize, max_pixels, background, test_segfault, colour, keep_alpha = request
    try:
        with open_regular(path) as handle:
            data = handle.read()
            mtime = os.fstat(handle.fileno()).st_mtime
        if test_segfault and data.startswith(SEGFAULT_MARKER):
            ctypes.string_at(0)  # a real SIGSEGV, as a broken native decoder would give
        image, origin = loading.load_with_origin(
            data, size, resize, max_pixels=max_pixels, background=background,
            colour=colour, keep_alpha=keep_alpha,
        )  # fmt: skip
        return ("ok", np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), mtime, origin)
    except ImageError as exc:
        return ("image_error", exc.reason, exc.message)
    except OSError as exc:
        return ("os_error", exc.errno, str(exc))
    except MemoryError:
        return ("image_error", Reason.TOO_MANY_PIXELS, "the decoder ran out of memory")
    except Exception as exc:  # a decoder bug: reported for this file, the worker goes on
        return ("failed", f"{type(exc).__name__}: {exc}")


# --- the daemon's side -----------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.tasks = 0

    def run(self, request: _Request, timeout_s: float) -> tuple[Any, ...]:
        self.tasks += 1
        try:
            self.conn.send(request)
            if not self.conn.poll(timeout_s):
                self.kill()
                raise _WorkerDiedError(f"no answer within {timeout_s:.0f}s (killed)")
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _WorkerDiedError(self._death(exc)) from exc

    def _death(self, exc: BaseException) -> str:
        self.process.join(1.0)
        code = self.process.exitcode
        if code is None:
            return f"lost its pipe ({exc})"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(2.0)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(1.0)
        self.kill()
        self.conn.close()


class DecoderPool:
    """Up to ``size`` decodes at once, each in its own worker process (module docstring)."""

    def __init__(
        self,
        size: int,
        settings: DecodeSettings,
        *,
        timeout_s: float = DECODE_TIMEOUT_S,
        max_tasks: int = MAX_TASKS_PER_WORKER,
        test_segfault: bool = _SEGFAULT_FROM_ENV,
    ) -> None:
        self.settings = settings
        self.crashes = 0  # worker deaths seen (a file may cause two)
        self._size = size
        self._timeout_s = timeout_s
        self._max_tasks = max_tasks
        self._test_segfault = test_segfault
        self._ctx = multiprocessing.get_context("forkserver")
        # The forkserver imports the decoder once; workers are forked from it ready to go.
        self._ctx.set_forkserver_preload([__name__])
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False
        self._warm = threading.Event()

    def start(self) -> None:
        """Start the workers in the background (the forkserver's first start takes seconds)."""
        threading.Thread(target=self._warm_up, name="decoder-warm-up", daemon=True).start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait for start()'s workers; False if they are not up within ``timeout_s``."""
        return self._warm.wait(timeout_s)

    def _warm_up(self) -> None:
        try:
            workers = [_Worker(self._ctx) for _ in range(self._size)]
        except Exception:
            logger.exception("cannot start decoder workers yet; they start on first use")
            return
        finally:
            self._warm.set()
        with self._lock:
            if self._closed:
                for worker in workers:
                    worker.stop()
                return
            self._idle.extend(workers)

    @property
    def workers(self) -> int:
        with self._lock:
            return len(self._idle) + len(self._busy)

    def decode(
        self, path: os.PathLike[str] | str, settings: DecodeSettings | None = None
    ) -> tuple[np.ndarray, float]:
        """``(HWC uint8 pixels, the file's mtime)``; ImageError or OSError as the decode raised.
        ``settings`` overrides the pool's for this call (a job's own size, say)."""
        pixels, mtime, _ = self.decode_with_origin(path, settings)
        return pixels, mtime

    def decode_with_origin(
        self, path: os.PathLike[str] | str, settings: DecodeSettings | None = None
    ) -> tuple[np.ndarray, float, Origin]:
        """:meth:`decode` and the input's Origin (for core.runtime.img2img.Inference.encode)."""
        s = settings or self.settings
        request = (os.fspath(path), s.size, s.resize, s.max_pixels, s.background)
        request += (self._test_segfault, s.colour, s.keep_alpha)
        with self._slots:
            try:
                outcome = self._run(request)
            except _WorkerDiedError as first:
                logger.warning("decoder worker died on {} ({}); retrying it alone", path, first)
                try:
                    outcome = self._run(request)
                except _WorkerDiedError as second:
                    raise ImageError(
                        Reason.DECODER_CRASHED,
                        f"the decoder process died twice on this file ({first}; {second})",
                    ) from second
        kind = outcome[0]
        if kind == "ok":
            return outcome[1], outcome[2], outcome[3]
        if kind == "image_error":
            raise ImageError(outcome[1], outcome[2])
        if kind == "os_error":
            raise OSError(outcome[1], outcome[2])
        raise RuntimeError(outcome[1])

    def _run(self, request: _Request) -> tuple[Any, ...]:
        worker = self._borrow()
        try:
            outcome = worker.run(request, self._timeout_s)
        except _WorkerDiedError:
            self._retire(worker, dead=True)
            raise
        except BaseException:
            self._retire(worker, dead=False)
            raise
        self._give_back(worker)
        return outcome

    def _borrow(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise PoolClosedError("decoder pool closed")
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            try:
                worker = _Worker(self._ctx)
            except Exception as exc:  # no /tmp for the forkserver's socket, fork refused, ...
                raise DecoderUnavailableError(f"cannot start a decoder process: {exc}") from exc
        with self._lock:
            if self._closed:
                worker.stop()
                raise PoolClosedError("decoder pool closed")
            self._busy.add(worker)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
            keep = not self._closed and worker.tasks < self._max_tasks
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.stop()

    def _retire(self, worker: _Worker, *, dead: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            closed = self._closed
            if dead and not closed:
                self.crashes += 1
        worker.kill()
        worker.conn.close()
        if closed:
            raise PoolClosedError("decoder pool closed")

    def close(self) -> None:
        """Stop every worker; decodes in progress raise PoolClosedError."""
        with self._lock:
            self._closed = True
            idle, busy = list(self._idle), list(self._busy)
            self._idle.clear()
        for worker in idle:
            worker.stop()
        for worker in busy:  # their callers see the pipe close and give up
            worker.kill()
