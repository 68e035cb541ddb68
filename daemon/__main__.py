"""``python -m daemon`` / ``artd run``: the hot-folder daemon. ``artd check`` validates only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from loguru import logger
from pydantic.fields import FieldInfo

from core.config import SettingsError, load_settings
from daemon import logs
from daemon.settings import DaemonSettings

EXIT_OK, EXIT_FATAL = 0, 1


def _add_flag(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    flag = "--" + name.replace("_", "-")
    help_text = field.description or ""
    if field.annotation is bool:
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
        return
    choices = get_args(field.annotation) or None
    # Values stay strings: pydantic converts and validates them with the env vars' rules.
    parser.add_argument(flag, default=None, choices=choices, metavar=name.upper(), help=help_text)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Every setting is also an ARTD_<NAME> env var or a key of --config FILE.toml.",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML file of settings")
    for name, field in DaemonSettings.model_fields.items():
        _add_flag(parser, name, field)
    return parser


def resolve(argv: list[str], prog: str = "artd run") -> DaemonSettings:
    args = vars(build_parser(prog).parse_args(argv))
    config = args.pop("config")
    return load_settings(DaemonSettings, args, config, other_prefixes=("ARTD_TRAIN_",))


def check(settings: DaemonSettings) -> int:
    """Settings, folders and model, as ExecStartPre and support requests need them."""
    from core.checkpoint import CheckpointError
    from daemon.service import load_engine
    from daemon.spool import Spool, SpoolError

    problems: list[str] = []
    spool = Spool(settings.root, settings.instance, output_ext=settings.output_extension)
    try:
        spool.prepare_folders()
    except SpoolError as exc:
        problems.append(str(exc))
    try:
        engine = load_engine(settings)
        model = {
            "version": engine.version,
            "device": str(engine.device),
            "precision": engine.precision,
        }
    except (CheckpointError, ValueError, RuntimeError, OSError) as exc:
        problems.append(f"model: {exc}")
        model = {}
    report: dict[str, Any] = {
        "settings": json.loads(settings.model_dump_json()),
        "model": model,
        "problems": problems,
    }
    print(json.dumps(report, indent=2))
    return EXIT_FATAL if problems else EXIT_OK


def main(argv: list[str] | None = None, *, check_only: bool = False) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = resolve(argv, "artd check" if check_only else "artd run")
    except SettingsError as exc:
        logs.configure()
        logger.error("{}", exc)
        return EXIT_FATAL
    logs.configure(json=settings.log_json, level=settings.log_level)
    if check_only:
        return check(settings)
    from daemon.service import Service

    return Service(settings).run()


if __name__ == "__main__":
    sys.exit(main())
