"""The ``artd`` command: ``process`` (one-shot), ``generate`` (images from noise), ``run``
(the daemon), ``check`` (settings).

``python -m daemon`` is ``artd run``. Each command's flags are generated from its settings
class (core.config.add_settings_flags); the settings, the model and the service are imported
only once a command is chosen, so ``artd --help`` never loads torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

import core
from core.config import (
    SettingsError,
    add_settings_flags,
    flag_for,
    settings_from_args,
    settings_from_flags,
)
from daemon import logs

if TYPE_CHECKING:
    from daemon.settings import DaemonSettings, ProcessSettings

EXIT_OK, EXIT_FATAL = 0, 1
DAEMON_DESCRIPTION = "Every setting is also an ARTD_<NAME> env var or a key of --config FILE.toml."


# --- artd process --------------------------------------------------------------------------


def process_parser() -> argparse.ArgumentParser:
    from daemon.settings import ProcessSettings

    parser = argparse.ArgumentParser(
        prog="artd process", description="Run files or folders through the model once."
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    add_settings_flags(parser, ProcessSettings, skip=("ray_address",))
    # An optional value, which the generic flags do not have: `--ray` alone is a local Ray.
    parser.add_argument(
        flag_for(ProcessSettings, "ray_address"),
        dest="ray_address",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run as a Ray Data pipeline on the cluster at ADDRESS (HOST:PORT, "
        "ray://HOST:PORT, 'auto'); without ADDRESS: a Ray of this process's own "
        "(give it after the PATHs, or as --ray=ADDRESS)",
    )
    return parser


def run_process(argv: list[str]) -> int:
    """``artd process PATH... --out DIR``: its exit status (core of it: daemon.oneshot)."""
    from daemon.settings import ProcessSettings

    args = vars(process_parser().parse_args(argv))
    # Imported after parsing so that --help and flag errors do not wait for torch.
    from core.outputs.settings import OutputSettings
    from daemon.oneshot import decoder_pool, process
    from daemon.workers import LocalModelWorker, WorkerUnavailable

    paths, out = args.pop("paths"), args.pop("out")
    try:
        settings = settings_from_flags(ProcessSettings, args)
    except SettingsError as exc:
        logger.error("{}", exc)
        return EXIT_FATAL
    if settings.ray_address is not None:
        return run_process_on_ray(paths, out, settings)
    # The model in a worker process of its own, as the daemon runs it, and the decoders in
    # theirs, started while it loads: an input that kills either costs that input, not the
    # run (daemon.oneshot).
    output = OutputSettings.from_settings(settings)
    decoders = decoder_pool(output, settings.workers)
    worker = LocalModelWorker("process")
    try:
        try:
            worker.start(settings.checkpoint, settings.engine_options())
        except WorkerUnavailable as exc:
            logger.error("cannot load the model: {}", exc.reason)
            return EXIT_FATAL
        report = process(
            paths,
            out,
            worker,
            size=settings.size,
            resize=settings.resize,
            fmt=settings.output_format,
            workers=settings.workers,
            request=settings.sampler_request(),
            output=output,
            decoders=decoders,
        )
    finally:
        worker.stop()
        decoders.close()
    logger.info("{} written, {} rejected", len(report.written), len(report.rejected))
    return report.exit_code


def run_process_on_ray(paths: list[Path], out: Path, settings: ProcessSettings) -> int:
    """``artd process --ray [ADDRESS]``: the same job as a Ray Data pipeline (daemon.oneshot_ray);
    a cluster that cannot serve it (daemon.cluster) is fatal before anything is written."""
    from daemon.cluster import ClusterError
    from daemon.oneshot_ray import RayJobFailed, process_on_ray

    try:
        report = process_on_ray(paths, out, settings)
    except (ClusterError, RayJobFailed) as exc:
        logger.error("{}", exc)
        return EXIT_FATAL
    for line in report.summary():
        logger.info("{}", line)
    return report.exit_code


# --- artd generate -------------------------------------------------------------------------


def generate_parser() -> argparse.ArgumentParser:
    from daemon.settings import GenerateSettings

    parser = argparse.ArgumentParser(
        prog="artd generate",
        description=(
            "Make images from noise with a denoise checkpoint: DIR/<seed>-<index>.<ext>, "
            "never overwriting a file. The same --seed and settings repeat a run exactly."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    add_settings_flags(parser, GenerateSettings)
    return parser


def run_generate(argv: list[str]) -> int:
    """``artd generate --count N --size WxH [--seed S] --out DIR``: its exit status."""
    from daemon.settings import GenerateSettings

    args = vars(generate_parser().parse_args(argv))
    from core.checkpoint import CheckpointError
    from daemon.oneshot import GenerateRefused, generate_files

    out = args.pop("out")
    try:
        settings = settings_from_flags(GenerateSettings, args)
    except SettingsError as exc:
        logger.error("{}", exc)
        return EXIT_FATAL
    if settings.strength is not None:
        logger.warning("generation is always strength 1: ignoring --strength {}", settings.strength)
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**32)
    try:
        engine = settings.load_engine()
    except (CheckpointError, ValueError, RuntimeError) as exc:
        logger.error("cannot load the model: {}", exc)
        return EXIT_FATAL
    # The run's seed names the files and labels each image; the sampler's own seed stays unset.
    request = dataclasses.replace(settings.sampler_request(), strength=None, seed=None)
    try:
        report = generate_files(
            engine,
            out,
            count=settings.count,
            width=settings.width,
            height=settings.height,
            seed=seed,
            fmt=settings.output_format,
            request=request,
            guide=settings.guide,
        )
    except GenerateRefused as exc:
        logger.error("{}", exc)
        return EXIT_FATAL
    for path in report.written:
        print(path)
    logger.info("{} written, {} failed (seed {})", len(report.written), len(report.rejected), seed)
    return report.exit_code


# --- artd run / artd check -----------------------------------------------------------------


def daemon_parser(prog: str = "artd run") -> argparse.ArgumentParser:
    from daemon.settings import DaemonSettings

    parser = argparse.ArgumentParser(prog=prog, description=DAEMON_DESCRIPTION)
    parser.add_argument("--config", type=Path, default=None, help="TOML file of settings")
    add_settings_flags(parser, DaemonSettings)
    return parser


def resolve(argv: list[str], prog: str = "artd run") -> DaemonSettings:
    """The daemon's settings from ``argv``, ``ARTD_*`` and ``--config``; raises SettingsError."""
    from daemon.settings import DaemonSettings

    args = vars(daemon_parser(prog).parse_args(argv))
    return settings_from_args(DaemonSettings, args, other_prefixes=("ARTD_TRAIN_",))


def check(settings: DaemonSettings) -> int:
    """Settings, folders and model, as ExecStartPre and support requests need them."""
    from core.checkpoint import CheckpointError
    from daemon.spool import Spool, SpoolError

    problems: list[str] = []
    spool = Spool(settings.root, settings.instance, output_ext=settings.output_extension)
    try:
        spool.prepare_folders()
    except SpoolError as exc:
        problems.append(str(exc))
    try:
        engine = settings.load_engine()
        sampler_settings = engine.sampler_settings(settings.sampler_request())
        model = {
            "version": engine.version,
            "objective": engine.objective,
            "device": str(engine.device),
            "precision": engine.precision,
            "sampler": None if sampler_settings is None else sampler_settings.to_dict(),
        }
    except (CheckpointError, ValueError, RuntimeError, OSError) as exc:
        problems.append(f"model: {exc}")
        model = {}
    report: dict[str, Any] = {
        "settings": json.loads(settings.model_dump_json()),
        "model": model,
        "presets": check_presets(settings, problems),
        "problems": problems,
    }
    print(json.dumps(report, indent=2))
    return EXIT_FATAL if problems else EXIT_OK


def check_presets(settings: DaemonSettings, problems: list[str]) -> dict[str, Any]:
    """Every preset (and the defaults) with its resolved settings; a checkpoint that does not
    load is a problem naming the preset and the key."""
    from core import objectives
    from core.checkpoint import CheckpointError, load_checkpoint
    from daemon.settings import Resolver

    try:
        presets = Resolver(settings).describe()
    except ValueError as exc:
        problems.append(str(exc))
        return {}
    default = str(settings.checkpoint)
    for name, preset in presets.items():
        if preset["checkpoint"] == default:
            continue
        try:
            checkpoint = load_checkpoint(preset["checkpoint"])
            objectives.of(checkpoint.meta)  # an objective this version serves, fields checked
            preset["model"] = checkpoint.version
        except (CheckpointError, ValueError, OSError) as exc:
            problems.append(f"preset {name!r}: key 'checkpoint': {exc}")
    return presets


def run_daemon(argv: list[str], *, check_only: bool = False) -> int:
    """``artd run`` (the service until SIGTERM) or ``artd check``: the exit status."""
    try:
        settings = resolve(argv, "artd check" if check_only else "artd run")
    except SettingsError as exc:
        logger.error("{}", exc)
        return EXIT_FATAL
    logs.configure(settings)
    if check_only:
        return check(settings)
    from daemon.service import Service

    return Service(settings).run()


# --- artd ----------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "process": ("run files or folders through the model once", run_process),
    "generate": ("make images from noise with a denoise model", run_generate),
    "run": ("run the hot-folder daemon", run_daemon),
    "check": ("validate settings, folders and the model", lambda a: run_daemon(a, check_only=True)),
}


def build_parser() -> argparse.ArgumentParser:
    """The top level: ``--help``, ``--version`` and the command names; each command parses
    its own flags (``artd COMMAND --help``)."""
    parser = argparse.ArgumentParser(
        prog="artd", description="A folder-watching art generator; see artd COMMAND --help."
    )
    parser.add_argument("--version", action="version", version=f"artd {core.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logs.configure()  # from ARTD_LOG_*, until a command's own settings say more
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][1](argv[1:])
    build_parser().parse_args(argv)  # --help, --version, or a usage error: exits
    return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
