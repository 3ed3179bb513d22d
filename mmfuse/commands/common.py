"""What every sub-command shares: its help formatter and a `print` that reaches a redirected log at once."""

from __future__ import annotations

import argparse
import functools
from typing import Any

say = functools.partial(print, flush=True)
"""`print` for progress lines (`echo` of `finetune`, `run_suite`): a log that stdout is redirected to gets each line
when it happens, not when a block buffer fills or the process ends."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter that names each default once: not where an option's help already states its
    default, and not the defaults that say nothing (None, a switch's False, an empty list or string)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or _says_nothing(action.default):
            return action.help
        return super()._get_help_string(action)


def _says_nothing(default: Any) -> bool:
    return default is None or default is False or default is argparse.SUPPRESS or default in ([], "")
