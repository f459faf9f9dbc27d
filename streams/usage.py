"""How drex's commands describe their flags and report what went wrong.

Every subcommand ends with one of three statuses (``drex --help`` says so too):

* 0: it did its job.
* 1 (:data:`EXIT_FAILURE`): it ran and failed: a port in use, a file not found, a broker
  out of reach, data it cannot use. One line on stderr, ``drex <command>: <why>``.
* 2 (:data:`EXIT_USAGE`): the command line or a ``DREX_*`` variable cannot be right: an
  unknown flag or name, a value of the wrong type or out of range. argparse's own errors
  (usage, then ``drex <command>: error: <why>``) exit 2 as well; a setting refused after
  parsing says ``drex <command>: <why>`` on one line. Nothing has been started.

``drex worker`` also ends with 75 when a stop outlasts its grace (docs/operations.md).
Importing this module imports no torch.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

EXIT_FAILURE = 1
EXIT_USAGE = 2

EXIT_STATUSES = (
    "exit status: 0 done; 1 failed while running (a port in use, a file not found, a "
    "broker out of reach: one line on stderr); 2 a usage error (an unknown flag or name, "
    "a value of the wrong type or out of range, in a flag or a DREX_* variable)"
)


def fail(command: str, message: object, status: int = EXIT_FAILURE) -> int:
    """Say ``drex <command>: <message>`` on stderr, on one line; ``status`` to return."""
    text = " ".join(str(message).split())
    print(f"drex {command}: {text}", file=sys.stderr, flush=True)
    return status


def port_number(text: str) -> int:
    """argparse type of a TCP port: 0 to 65535 (a usage error otherwise).

    >>> port_number("8000")
    8000
    >>> port_number("70000")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: port 70000 is out of range: 0 to 65535
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range: 0 to 65535")
    return port


def override(pair: str) -> tuple[str, Any]:
    """argparse type of ``--set KEY=VALUE``: the pair, typed as its DReXConfig field
    (``dict()`` of the list makes the overrides); a bad one is a usage error. Imports
    torch (drex_model.model) when a pair is given."""
    from drex_model.model import parse_overrides

    try:
        ((key, value),) = parse_overrides([pair]).items()
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return key, value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help as drex's commands write it.

    Descriptions and epilogs are filled to the terminal's width paragraph by paragraph,
    but for indented ones (a command line) and lists, kept as written; reST's double
    backquotes are dropped. After a flag's help, ``(default: X)`` only where X tells
    something: not for None, an empty value or a switch, nor when the help already speaks
    of its default.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in re.split(r"\n\s*\n", textwrap.dedent(text.replace("``", "")).strip()):
            lines = paragraph.splitlines()
            if any(line.startswith((" ", "* ", "- ")) for line in lines):  # as written
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default in ("", [], ())
            or action.option_strings == []
        ):
            return text
        if isinstance(default, Sequence) and not isinstance(default, str):
            shown = " ".join(str(value) for value in default).replace("%", "%%")
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"
