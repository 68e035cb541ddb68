"""The worker process: its main loop, its heartbeat thread and the poison hook.

**The child.** Started with the ``spawn`` method: a fresh interpreter that inherits no thread,
lock or CUDA context of the service (CUDA cannot be forked), and that leaves the decoders'
forkserver and its preload list alone. (Spawn imports the service's main module again as
``__mp_main__``, so that module must keep its work under ``if __name__ == "__main__"``, as
artd's entry points do.) It loads the checkpoint with
``core.runtime.engine.Engine`` (the precision probe runs there, and the OOM back-off and NaN
retry stay inside ``Engine.run``), checks it with :func:`probe` and answers each
batch with ``core.runtime.img2img.Inference.run``, returning pixels (encoding stays in the
service). It ignores SIGINT (the terminal's Ctrl-C is the service's to handle); on SIGTERM it
exits at once when idle, and otherwise finishes the batch in hand, answers it, then exits, so a
plain ``kill`` of a worker, or systemd stopping the whole unit, charges no file (and the
service's drain still gets its last batch). It exits by itself within
:data:`HEARTBEAT_INTERVAL_S` when the service dies, even mid-batch. It only attaches to the
service's shared memory (daemon.workers.segments) and answers in daemon.workers.messages' terms.

Test hook, inert in production: when the environment holds ``_ARTD_WORKER_POISON=<sha256>``
as the child starts (docs/reliability.md's ``_ARTD_POISON_SHA256`` does the same to the whole
service), the child SIGKILLs itself on any batch with that input hash in it. The name does not
start with ``ARTD_``, so the daemon's settings never see it; only the child reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from core.diffusion.sampler_settings import SamplerRequest
from core.outputs.settings import OutputSettings
from daemon.workers import messages
from daemon.workers.interface import EngineOptions, model_info
from daemon.workers.segments import BEAT, kind_of

POISON_ENV = "_ARTD_WORKER_POISON"  # test-only (module docstring)
HEARTBEAT_INTERVAL_S = 0.5


def probe(engine: Any) -> None:
    """Run a textured image through a freshly loaded engine; raise when the output is
    unusable (NaN or Inf): a checkpoint that fails it is refused, the old model serving on."""
    import torch

    from core.checkpoint import CheckpointError

    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(1, 3, 64, 64, generator=generator)
    output = engine.infer(pixels)
    if not torch.isfinite(output).all():
        raise CheckpointError(f"{engine.checkpoint.path}: the probe image gave NaN/Inf output")


def child_main(conn: Connection, beat_name: str, parent_pid: int) -> None:
    """The child's entry point (spawned: this package is all it imports before the model)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = _Child(conn, beat_name, parent_pid)
    signal.signal(signal.SIGTERM, child.on_sigterm)
    child.serve()


class _Child:
    def __init__(self, conn: Connection, beat_name: str, parent_pid: int) -> None:
        from daemon import logs

        logs.configure()
        self.conn = conn
        self.parent_pid = parent_pid
        self.beat = shared_memory.SharedMemory(name=beat_name)
        self.held = 0
        self.beat_lock = threading.Lock()  # a beat never writes back a stale batch number
        self.busy = False
        self.exit_when_idle = False
        self.poison = os.environ.get(POISON_ENV) or None
        self.engine: Any = None
        self.attached: dict[str, shared_memory.SharedMemory] = {}
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while True:
            with self.beat_lock:
                BEAT.pack_into(self.beat.buf, 0, time.monotonic(), self.held)
            if os.getppid() != self.parent_pid:
                os._exit(0)  # the service is gone: nobody will read our answer
            time.sleep(HEARTBEAT_INTERVAL_S)

    def _hold(self, number: int) -> None:
        with self.beat_lock:
            self.held = number
            BEAT.pack_into(self.beat.buf, 0, time.monotonic(), number)

    def on_sigterm(self, signum: int, frame: object) -> None:
        if not self.busy:
            os._exit(0)
        self.exit_when_idle = True  # answer the batch in hand first

    def serve(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the service closed our pipe
            kind = message[0]
            if kind == "stop":
                os._exit(0)
            self.busy = True
            if kind == "load":
                reply = self.load(Path(message[1]), message[2])
            else:
                reply = self._answer(message)
                # Let go of the batch before answering: once the service has the answer, the
                # segment never shows this batch as held (a death now is not the batch's).
                self._hold(0)
            self.conn.send(reply)
            self.busy = False
            if self.exit_when_idle:
                os._exit(0)

    def load(self, path: Path, options: EngineOptions) -> tuple[Any, ...]:
        from core.runtime.engine import Engine
        from daemon import memory

        try:
            engine = Engine.from_path(path, **dataclasses.asdict(options))
            probe(engine)
        except Exception as exc:  # a bad file, out of memory, no device: the reason, not a trace
            logger.error("model worker cannot load {}: {}", path, exc)
            return ("refused", f"{type(exc).__name__}: {exc}"[:500])
        old, self.engine = self.engine, engine
        if old is not None:
            del old
            memory.release("a model switch in the model worker")
        return ("loaded", model_info(engine, path))

    def _answer(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            return self.run(*message[1:])
        except Exception as exc:  # a bug here must cost the batch's answers, not a death
            logger.exception("model worker failed on a batch")
            return messages.failed(message[1], len(message[6]), exc)

    def _attach(self, name: str) -> shared_memory.SharedMemory:
        segment = self.attached.get(name)
        if segment is None:
            kind = kind_of(name)
            for old_name in [n for n in self.attached if kind_of(n) == kind]:
                with contextlib.suppress(BufferError):
                    self.attached.pop(old_name).close()
            segment = self.attached[name] = shared_memory.SharedMemory(name=name)
        return segment

    def run(
        self,
        number: int,
        in_name: str,
        out_name: str,
        out_size: int,
        shape: tuple[int, int, int],
        sha256s: list[str],
        request: SamplerRequest | None,
        output: OutputSettings,
    ) -> tuple[Any, ...]:
        from core.runtime.img2img import Inference

        self._hold(number)
        if self.poison is not None and self.poison in sha256s:
            logger.warning("{}: the poison input is in the batch; dying", POISON_ENV)
            os.kill(os.getpid(), signal.SIGKILL)
        inp = self._attach(in_name)
        batch = np.ndarray((len(sha256s), *shape), np.uint8, buffer=inp.buf)
        started = time.perf_counter()
        results = Inference(self.engine, output, request).run(list(batch), sha256s)
        model_s = time.perf_counter() - started
        del batch
        answers = messages.pack(results, self._attach(out_name), out_size)
        return ("done", number, answers, model_s)
