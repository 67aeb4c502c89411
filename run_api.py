"""Start the GRPO API server: ``python run_api.py [--host 127.0.0.1] [--port 8000] ...``.

Flags override the ``GRPO_*`` environment variables, which override the defaults of ``settings.Settings``.
"""

import argparse
import logging
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from data_lock import DataFolderInUse, DataLocks
from settings import LogLevel, Settings


def make_parser() -> argparse.ArgumentParser:
    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(description="GRPO training and serving API")
    # Unset flags stay None so that they fall through to the environment and the defaults.
    parser.add_argument("--host", help=f"address to bind (default {defaults['host'].default})")
    parser.add_argument("--port", type=int, help=f"port to listen on (default {defaults['port'].default})")
    parser.add_argument("--models-dir", dest="models_dir", help="where models are saved (default models/)")
    parser.add_argument("--db", dest="db_path", help="SQLite file of jobs and models (default <models-dir>/grpo.db)")
    parser.add_argument(
        "--max-concurrent-jobs", dest="max_concurrent_jobs", type=int, help="training jobs at once (default: CPUs)"
    )
    parser.add_argument("--executor", choices=("thread", "ray"), help="where jobs train (default thread)")
    parser.add_argument(
        "--ray-address", dest="ray_address", help="Ray cluster to train on (default: start a local Ray)"
    )
    parser.add_argument("--api-key", dest="api_key", help="require this X-API-Key on every request (default: none)")
    parser.add_argument("--api-keys-file", dest="api_keys_file", help="keys with scopes, '<id> <scope> <key>' a line")
    parser.add_argument("--ssl-certfile", dest="ssl_certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", dest="ssl_keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--security-log", dest="security_log", help="append security events here (JSON lines)")
    parser.add_argument("--log-level", dest="log_level", choices=LogLevel.__args__, help="default info")
    parser.add_argument(
        "--plugins", help="comma-separated modules that register environments and reward functions (GRPO_PLUGINS)"
    )
    parser.add_argument("--presets", dest="presets_file", help="presets file (default hyperparams/grpo.yml)")
    return parser


def load_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The settings from the flags, the environment and the defaults; a value they refuse ends the program with
    a usage message naming the flag and its variable (exit status 2), as argparse does for a bad flag."""
    try:
        return Settings(**{key: value for key, value in vars(args).items() if value is not None})
    except ValidationError as error:
        flags = {action.dest: "/".join(action.option_strings) for action in parser._actions}
        problems = []
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else ""
            names = " / ".join(name for name in (flags.get(field), f"GRPO_{field.upper()}") if name)
            problems.append(f"{names}: {problem['msg'].removeprefix('Value error, ')}")
        parser.error("; ".join(problems))


def create_app(settings: Settings) -> Any:
    """``api.create_app``, imported only once the data folder is ours: torch and SB3 take seconds to load, and a
    server refused its folder should say so at once."""
    from api import create_app as build_app

    return build_app(settings)


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    settings = load_settings(parser, parser.parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    locks = DataLocks(settings)
    try:
        # Before anything is opened: a second server on the same folder leaves it untouched and says who has it.
        locks.acquire()
    except DataFolderInUse as error:
        sys.exit(f"run_api.py: {error}")
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
        )
    finally:
        locks.release()


if __name__ == "__main__":
    main()
