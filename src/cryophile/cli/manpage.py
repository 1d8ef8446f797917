"""The man page, cryophile(1), rendered in roff from the same parsers as ``--help``,
so that it cannot drift from the options: one section per command, each option
with its help, the examples and exit statuses of every command, the environment.

``cryophile man`` prints it; see the README (Install) for where it goes.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from cryophile import __version__


def _escape(text: str) -> str:
    """``text`` safe in roff: backslashes and hyphens escaped, no line opening a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [f"\\&{line}" if line.startswith((".", "'")) else line for line in text.split("\n")]
    return "\n".join(lines)


def _flags(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{_escape(flag)}\\fR" for flag in action.option_strings)
    if not action.option_strings:
        names = f"\\fI{_escape(str(action.metavar or action.dest))}\\fR"
    elif action.nargs != 0:
        metavar = action.metavar or (action.dest.upper() if not action.choices
                                     else "{" + ",".join(map(str, action.choices)) + "}")
        names += f" \\fI{_escape(str(metavar))}\\fR"
    return names


def _options(parser: argparse.ArgumentParser, *, skip_global: bool) -> list[str]:
    lines: list[str] = []
    for group in parser._action_groups:
        if skip_global and group.title == "global options":
            continue
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or isinstance(
                    action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            help_text = (action.help or "").replace("%(default)s", str(action.default))
            lines += [".TP", _flags(action), _escape(help_text)]
    return lines


def _block(text: str) -> list[str]:
    return [".PP", ".nf", _escape(text.rstrip("\n")), ".fi"]


def render(parser: argparse.ArgumentParser) -> str:
    """The whole man page of ``parser`` (cryophile's full parser) as roff."""
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    page = [f'.TH CRYOPHILE 1 "{date}" "cryophile {__version__}" "User Commands"',
            ".SH NAME", "cryophile \\- " + _escape(parser.description or ""),
            ".SH SYNOPSIS", "\\fBcryophile\\fR [\\fIglobal options\\fR] \\fICOMMAND\\fR "
            "[\\fIoptions\\fR]", ".SH GLOBAL OPTIONS",
            "Global options work before or after the command."]
    page += _options(parser, skip_global=False)
    page.append(".SH COMMANDS")
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    for name, sub in commands.choices.items():
        page += [f".SS cryophile {_escape(name)}", _escape(summaries.get(name) or ""),
                 ".PP", ".nf", _escape(sub.format_usage().removeprefix("usage: ").rstrip()),
                 ".fi"]
        if sub.description:
            page += [".PP", _escape(sub.description.strip())]
        page += _options(sub, skip_global=True)
        if sub.epilog:
            page += _block(sub.epilog)
    if parser.epilog:
        environment, _, exits = parser.epilog.partition("\nexit codes:")
        page += [".SH ENVIRONMENT", *_block(environment.partition("\n")[2])]
        page += [".SH EXIT STATUS", _escape(exits.strip())]
    page += [".SH SEE ALSO", "\\fBgpg\\fR(1), \\fBsq\\fR(1), \\fBsqop\\fR(1), "
             "\\fBsystemd.exec\\fR(5); the README of cryophile."]
    return "\n".join(page) + "\n"
