"""``cryophile completion bash|zsh`` and ``cryophile help COMMAND``, through the real CLI.

The bash script is checked by ``bash -n`` and then by running its completion
function in a real bash, the way bash calls it on <Tab>.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cryophile.cli.completion import describe
from cryophile.cli.parsers import COMMANDS, build_parser
from support.cli import Cli

COMMAND_NAMES = [*COMMANDS, "help"]


def script(cli: Cli, shell: str) -> str:
    result = cli.run(["completion", shell])
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def complete(bash_script: Path, *words: str) -> list[str]:
    """What bash offers for ``words`` (the last one being completed)."""
    array = " ".join(f"'{word}'" for word in words)
    program = (f"source {bash_script}\nCOMP_WORDS=({array})\nCOMP_CWORD={len(words) - 1}\n"
               '_cryophile\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program],
                            capture_output=True, text=True, check=True)
    return sorted(line for line in result.stdout.splitlines() if line)


def test_every_command_and_option_is_in_both_scripts(cli: Cli) -> None:
    _, commands = describe(build_parser())
    assert sorted(command.name for command in commands) == sorted(COMMAND_NAMES)
    for shell in ("bash", "zsh"):
        text = script(cli, shell)
        for command in commands:
            assert command.name in text
            for option in command.options:
                for name in option.names:
                    assert name in text, (shell, command.name, name)


def test_bash_script_is_valid_and_completes(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "cryophile.bash"
    path.write_text(script(cli, "bash"))
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert complete(path, "cryophile", "pr") == ["prune"]
    assert complete(path, "cryophile", "") == sorted(COMMAND_NAMES)
    assert complete(path, "cryophile", "-S", "/tmp/spool", "st") == ["status"]
    assert complete(path, "cryophile", "prune", "--keep-") == [
        "--keep-daily", "--keep-last", "--keep-monthly", "--keep-weekly"]
    assert complete(path, "cryophile", "completion", "") == ["bash", "zsh"]
    assert complete(path, "cryophile", "help", "ve") == ["verify"]
    assert complete(path, "cryophile", "backup", "-C", "") == ["lz4", "none", "zstd"]
    (tmp_path / "keyfile.cert").write_text("")
    assert complete(path, "cryophile", "backup", "-k", str(tmp_path / "keyf")) == [
        str(tmp_path / "keyfile.cert")]


def test_zsh_script_is_well_formed(cli: Cli) -> None:
    text = script(cli, "zsh")
    assert text.startswith("#compdef cryophile\n")
    # Every single-quoted word is closed: an odd count of unescaped quotes breaks zsh.
    assert text.replace("'\\''", "").count("'") % 2 == 0
    assert "'1:command:->command'" in text
    assert "(bash zsh)" in text
    # And zsh itself parses it (scripts/test installs zsh).
    path = cli.home / "_cryophile"
    path.write_text(text)
    checked = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("command", ["prune", "freeze", "completion"])
def test_help_command_prints_the_command_help(cli: Cli, command: str) -> None:
    helped = cli.run(["help", command])
    direct = cli.run([command, "--help"])
    assert helped.returncode == direct.returncode == 0
    assert helped.stdout == direct.stdout
    assert helped.stdout.startswith(f"usage: cryophile {command}".encode())


def test_help_without_a_command_and_with_a_wrong_one(cli: Cli) -> None:
    top = cli.run(["help"])
    assert top.returncode == 0
    assert top.stdout == cli.run(["--help"]).stdout
    wrong = cli.run(["help", "nope"])
    assert wrong.returncode == 64
    assert "invalid choice: 'nope'" in wrong.stderr
