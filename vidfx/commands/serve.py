"""`vidfx serve`: the streaming node (ZeroMQ data plane and control channel, /healthz /readyz /metrics)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from vidfx.config import add_settings_flags, settings_from_args


def register(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Every flag has a VIDFX_ environment variable (sections nested with __) and may sit in a .env file; "
        "flags win over the environment, which wins over .env, which wins over the defaults shown."
    )
    add_settings_flags(p)
    p.add_argument("--model", dest="model__name", default=None, help="same as --model-name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from zmq import ZMQError

    from vidfx.node import ConfigError, serve
    from vidfx.weights import CheckpointError

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"vidfx serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "token", None) is not None:
        logging.getLogger("vidfx").warning(
            "--token is readable by every local user in /proc/<pid>/cmdline: prefer VIDFX_TOKEN or --token-file"
        )
    try:
        return asyncio.run(serve(settings))
    except (ConfigError, CheckpointError, ZMQError, OSError, ValueError) as exc:  # bad model, address in use, …
        print(f"vidfx serve: {exc}", file=sys.stderr)
        return 2
