"""The ``artd`` command: ``process`` (one-shot), ``run`` (the daemon), ``check`` (settings)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loguru import logger

import core
from core import imaging
from core.precision import PRECISIONS
from daemon import logs


def _process(args: argparse.Namespace) -> int:
    # Imported here so `artd check` and `--help` stay fast.
    from core.checkpoint import CheckpointError
    from core.engine import Engine
    from daemon.oneshot import EXIT_FATAL, process

    try:
        engine = Engine.from_path(
            args.checkpoint,
            device=args.device,
            precision=args.precision,
            max_batch=args.batch,
            compile=args.compile,
        )
    except (CheckpointError, ValueError, RuntimeError) as exc:
        logger.error("cannot load the model: {}", exc)
        return EXIT_FATAL
    try:
        imaging.target_size(args.size, args.size, args.size, args.resize)
    except ValueError as exc:
        logger.error("--size: {}", exc)
        return EXIT_FATAL
    report = process(
        args.paths,
        args.out,
        engine,
        size=args.size,
        resize=args.resize,
        fmt=args.format,
        workers=args.workers,
    )
    logger.info("{} written, {} rejected", len(report.written), len(report.rejected))
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"artd {core.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    proc = commands.add_parser("process", help="run files or folders through the model once")
    proc.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    proc.add_argument("--out", type=Path, required=True, metavar="DIR")
    proc.add_argument("--checkpoint", type=Path, default=core.DEFAULT_CHECKPOINT)
    proc.add_argument("--size", type=int, default=256, help="longer side (fit) or side (stretch)")
    proc.add_argument("--resize", choices=["fit", "stretch"], default="fit")
    proc.add_argument("--format", choices=sorted(imaging.OUTPUT_FORMATS), default="png")
    proc.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    proc.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS])
    proc.add_argument("--batch", type=int, default=None, help="largest micro-batch")
    proc.add_argument("--workers", type=int, default=None, help="decode/encode threads")
    proc.add_argument(
        "--compile", action="store_true", help="torch.compile the model (10-15 s per shape)"
    )
    proc.set_defaults(handler=_process)

    for name, help_text in (("run", "run the hot-folder daemon"), ("check", "validate settings")):
        sub = commands.add_parser(name, help=help_text, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(handler=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logs.configure()
    if argv and argv[0] in ("run", "check"):
        from daemon.__main__ import main as daemon_main

        return daemon_main(argv[1:], check_only=argv[0] == "check")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
