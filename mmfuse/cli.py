"""The `mmfuse` command: sub-commands (`mmfuse/commands/`) map to library functions; user mistakes print one line
and exit 2."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from importlib import import_module

from .commands import COMMANDS
from .errors import MmfuseError

# filesystem errors of the user's paths (an output on a read-only or full disk, a file where a folder is needed)
FILESYSTEM = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
              errno.ENAMETOOLONG, errno.EFBIG}


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
        message = str(err).strip()
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: the error is its last line
            message = message.splitlines()[-1].partition(": ")[2]
        print(f"mmfuse: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch's SIGCHLD handler reports a dead loader worker wherever the main thread is
        if not str(err).startswith("DataLoader worker"):
            raise
        print(f"mmfuse: error: a loader worker process died ({str(err).splitlines()[0][:160]}); rerun with 0 "
              f"loader workers to find the sample", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in FILESYSTEM:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"mmfuse: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmfuse: interrupted", file=sys.stderr)
        return 130
