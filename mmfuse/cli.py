"""The `mmfuse` command: sub-commands (`mmfuse/commands/`) map to library functions; user mistakes print one line
and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from .commands import COMMANDS
from .errors import MmfuseError


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mmfuse", description="Multimodal fusion: fine-tune and use models "
                                                                "that join text, images and audio.")
    parser.add_argument("--version", action="version", version=f"mmfuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        import_module(f"mmfuse.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MmfuseError as err:
        print(f"mmfuse: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch's SIGCHLD handler reports a dead loader worker wherever the main thread is
        if not str(err).startswith("DataLoader worker"):
            raise
        print(f"mmfuse: error: a loader worker process died ({str(err).splitlines()[0][:160]}); rerun with 0 "
              f"loader workers to find the sample", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmfuse: interrupted", file=sys.stderr)
        return 130
