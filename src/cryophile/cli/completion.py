"""``cryophile completion bash|zsh``: a shell completion script generated from the parser.

Nothing here is written by hand per command: the commands, their options,
which options take a value, the values' choices and whether a value is a file
or a directory all come from :func:`cryophile.cli.main.build_parser`, so the
completion can never fall behind the command line.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryophile.cli.parsers import build_parser
from cryophile.pipeline.stages import write_all

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

# -- what the parser says ----------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option (or a positional, with no ``names``) and what its value is."""

    names: tuple[str, ...]
    help: str
    takes_value: bool
    repeatable: bool
    choices: tuple[str, ...] = ()
    value: str = ""  # "file", "dir" or "" (anything)
    metavar: str = "VALUE"


@dataclass(frozen=True)
class Command:
    """A command, its one-line help, its options and its positional arguments."""

    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[Option, ...]


def _option(action: argparse.Action) -> Option:
    takes_value = action.nargs != 0
    choices = tuple(str(choice) for choice in action.choices) if action.choices else ()
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    value = ""
    if action.type is Path or metavar in ("FILE", "PATH"):
        value = "file"
    if metavar == "DIR":
        value = "dir"
    help_text = action.help if isinstance(action.help, str) else ""
    help_text = help_text.replace("%(default)s", str(action.default)).replace("%%", "%")
    return Option(tuple(action.option_strings), help_text, takes_value,
                  isinstance(action, argparse._AppendAction | argparse._CountAction),
                  choices, value, metavar)


def _split(parser: argparse.ArgumentParser) -> tuple[list[Option], list[Option]]:
    options: list[Option] = []
    positionals: list[Option] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        (options if action.option_strings else positionals).append(_option(action))
    return options, positionals


def describe(parser: argparse.ArgumentParser) -> tuple[list[Option], list[Command]]:
    """The global options and every command, in the parser's order."""
    global_options, _ = _split(parser)
    commands: list[Command] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            options, positionals = _split(sub)
            commands.append(Command(name, helps.get(name, ""), tuple(options),
                                    tuple(positionals)))
    return global_options, commands


# -- bash -----------------------------------------------------------------------------


def _words(items: list[str]) -> str:
    return " ".join(items)


def _bash_value_cases(prefix: str, options: list[Option] | tuple[Option, ...]) -> list[str]:
    cases = []
    for option in options:
        if not option.takes_value:
            continue
        pattern = "|".join(f"{prefix}:{name}" for name in option.names)
        if option.choices:
            action = f'COMPREPLY=($(compgen -W "{_words(list(option.choices))}" -- "$cur"))'
        elif option.value == "file":
            action = 'COMPREPLY=($(compgen -f -- "$cur"))'
        elif option.value == "dir":
            action = 'COMPREPLY=($(compgen -d -- "$cur"))'
        else:
            action = "COMPREPLY=()"
        cases.append(f"        {pattern}) {action}; return ;;")
    return cases


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion script (``complete -F``) for ``parser``."""
    global_options, commands = describe(parser)
    global_names = [name for option in global_options for name in option.names]
    value_options = [name for option in global_options if option.takes_value
                     for name in option.names]
    value_cases = _bash_value_cases("*", global_options)
    option_cases, positional_cases = [], []
    for command in commands:
        value_cases += _bash_value_cases(command.name, command.options)
        names = [name for option in command.options for name in option.names]
        option_cases.append(f'        {command.name}) opts="{_words(names)}" ;;')
        choices = [choice for positional in command.positionals for choice in positional.choices]
        if choices:
            positional_cases.append(f'        {command.name}) words="{_words(choices)}" ;;')
        value_options += [name for option in command.options if option.takes_value
                          for name in option.names]
    lines = [
        "# bash completion for cryophile; generated by `cryophile completion bash`",
        "_cryophile() {",
        "    local cur prev command i opts words skip",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    command=""',
        "    skip=0",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        if ((skip)); then skip=0; continue; fi",
        '        case "${COMP_WORDS[i]}" in',
        f"            {'|'.join(sorted(set(value_options)))}) skip=1 ;;",
        "            -*) ;;",
        '            *) command="${COMP_WORDS[i]}"; break ;;',
        "        esac",
        "    done",
        '    case "${command:-*}:$prev" in',
        *value_cases,
        "    esac",
        '    if [[ -z "$command" ]]; then',
        '        if [[ "$cur" == -* ]]; then',
        f'            COMPREPLY=($(compgen -W "{_words(global_names)}" -- "$cur"))',
        "        else",
        f'            COMPREPLY=($(compgen -W "{_words([c.name for c in commands])}" -- "$cur"))',
        "        fi",
        "        return",
        "    fi",
        '    opts=""',
        '    words=""',
        '    case "$command" in',
        *option_cases,
        "    esac",
        '    case "$command" in',
        *positional_cases,
        "    esac",
        '    if [[ "$cur" == -* || -z "$words" ]]; then',
        f'        COMPREPLY=($(compgen -W "$opts {_words(global_names)}" -- "$cur"))',
        "    else",
        '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        "    fi",
        "}",
        "complete -F _cryophile cryophile",
    ]
    return "\n".join(lines) + "\n"


# -- zsh --------------------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    """``text`` as one single-quoted zsh word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_help(text: str) -> str:
    # Inside an _arguments spec, brackets and colons are syntax.
    text = re.sub(r"\s+", " ", text).strip()
    return text.replace("\\", "\\\\").replace("[", "(").replace("]", ")").replace(":", "\\:")


def _zsh_action(option: Option) -> str:
    if option.choices:
        return f"({' '.join(option.choices)})"
    if option.value == "file":
        return "_files"
    if option.value == "dir":
        return "_files -/"
    return " "


def _zsh_specs(options: list[Option] | tuple[Option, ...]) -> list[str]:
    specs = []
    for option in options:
        help_text = _zsh_help(option.help)
        for name in option.names:
            repeat = "*" if option.repeatable else ""
            if not option.takes_value:
                spec = f"{repeat}{name}[{help_text}]"
            else:
                suffix = "=" if name.startswith("--") else "+"
                metavar = _zsh_help(option.metavar)
                spec = f"{repeat}{name}{suffix}[{help_text}]:{metavar}:{_zsh_action(option)}"
            specs.append(_zsh_quote(spec))
    return specs


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """A zsh completion function (``#compdef``) for ``parser``."""
    global_options, commands = describe(parser)
    global_specs = _zsh_specs(global_options)
    described = [_zsh_quote(f"{command.name}:{_zsh_help(command.help)}")
                 for command in commands]
    lines = [
        "#compdef cryophile",
        "# zsh completion for cryophile; generated by `cryophile completion zsh`",
        "_cryophile() {",
        "  local curcontext=$curcontext state line ret=1",
        "  typeset -A opt_args",
        "  local -a commands",
        f"  commands=({' '.join(described)})",
        "  _arguments -C \\",
        *[f"    {spec} \\" for spec in global_specs],
        "    '1:command:->command' \\",
        "    '*::argument:->argument' && ret=0",
        "  case $state in",
        "    command) _describe -t commands 'cryophile command' commands && ret=0 ;;",
        "    argument)",
        "      case $words[1] in",
    ]
    for command in commands:
        specs = _zsh_specs(command.options) + global_specs
        for index, positional in enumerate(command.positionals, start=1):
            action = _zsh_action(positional)
            specs.append(_zsh_quote(f"{index}:{_zsh_help(positional.metavar)}:{action}"))
        lines.append(f"        {command.name})")
        lines.append("          _arguments \\")
        lines += [f"            {spec} \\" for spec in specs]
        lines.append("            && ret=0 ;;")
    lines += [
        "      esac ;;",
        "  esac",
        "  return ret",
        "}",
        '_cryophile "$@"',
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Print the script for ``args.shell``."""
    parser = build_parser()
    script = bash_script(parser) if args.shell == "bash" else zsh_script(parser)
    write_all(environment.stdout_fd, script.encode())
    return 0
