"""Fuzz tests (issue 6, "Bad input"): the manifest parser and the command line.

(a) :func:`cryophile.manifest.parse` is fed JSON-ish documents shaped like a
    manifest, mutated manifests and arbitrary bytes: it returns a valid
    Manifest or raises DataError, never anything else (``test_manifest.py``
    fuzzes single fields; this goes for whole documents and raw text).
(b) The in-process entry point ``cryophile.cli.main.run`` is fed random
    command lines built from the real parser's commands and options with
    hostile values, against a spool holding a real backup: the result is
    always an exit code from the README's table and never a traceback, and no
    exception escapes.

Example counts are moderate (``pick``: more under ``scripts/stress``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracles
from cryophile.backup_id import parse_timestamp, ulid_for_timestamp
from cryophile.cli.main import Environment, run
from cryophile.cli.parsers import build_parser
from cryophile.errors import DataError
from cryophile.manifest import MAX_FRAGMENT_SIZE, parse
from stress import pick
from support.cli import VAULT
from unit.test_manifest import BACKUP, sample

#: The README's exit code table, minus 70 (internal error: a bug) and 130 (interrupted).
DOCUMENTED = {0, 64, 65, 66, 69, 73, 74, 75, 77, 78}
TIMESTAMP = "2026-11-26T03:00:00Z"
TIMESTAMP_ULID = str(ulid_for_timestamp(parse_timestamp(TIMESTAMP)))

# -- (a) the manifest parser -----------------------------------------------------------------

HOSTILE_STRINGS = ["", "..", "../x", "/etc/passwd", "a\u2215b", "\uff0e\uff0e", "\u202e",
                   "\u200d", "\0", "x" * 2000, "NaN", "-1", "1e400", "chunk.0", "zstd", "openpgp",
                   "cryophile-manifest", "9999-12-31T23:59:59-23:59", "2026-11-26T03:00:00Z"]
HOSTILE_INTS = [-1, 0, 1, 2, 2**31, 2**63, 2**64 + 1, 10**30, -(10**30), MAX_FRAGMENT_SIZE,
                MAX_FRAGMENT_SIZE + 1]

scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from(HOSTILE_INTS)
           | st.floats() | st.text(max_size=20) | st.sampled_from(HOSTILE_STRINGS))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def _valid() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(sample().to_json())
    return loaded


fragment_entries = st.fixed_dictionaries(
    {"index": st.sampled_from([1, 2, 3, -1, 0]) | json_values,
     "size": st.sampled_from([100, 42, 0, -1, 10**30]) | json_values,
     "sha256": st.sampled_from([f"{1:064x}", "../x", "A" * 64]) | json_values},
    optional={"name": st.sampled_from(["../x", "/abs"]) | json_values})


@st.composite
def manifest_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest with some fields replaced, dropped or added."""
    document = _valid()
    for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=4, unique=True)):
        if draw(st.booleans()):
            del document[key]
        else:
            document[key] = draw(json_values)
    if draw(st.booleans()):
        document["fragments"] = draw(st.lists(fragment_entries, max_size=4))
    if draw(st.integers(0, 5)) == 0:
        document[draw(st.text(max_size=10))] = draw(json_values)
    return document


def _parse_or_data_error(data: bytes) -> None:
    """The one contract: a Manifest that is internally consistent, or DataError."""
    message: str | None = None
    try:
        manifest = parse(data)
    except DataError as error:
        message = str(error)
    if message is not None:
        assert message, "an error must say what is wrong"
        assert "\n" not in message, "one line"
        return
    assert [f.index for f in manifest.fragments] == list(range(1, len(manifest.fragments) + 1))
    assert all(0 < f.size <= manifest.fragment_size for f in manifest.fragments)
    assert manifest.created.utcoffset() is not None


@settings(max_examples=pick(200, 3000), deadline=None)
@given(manifest_documents())
def test_fuzz_manifest_documents(document: dict[str, Any]) -> None:
    _parse_or_data_error(json.dumps(document).encode())


@settings(max_examples=pick(200, 2000), deadline=None)
@given(st.data())
def test_fuzz_mutated_manifest_bytes(data: st.DataObject) -> None:
    """Byte-level damage to a real manifest: flips, cuts, insertions, huge numbers."""
    text = bytearray(sample(3).to_json())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "digits"]))
        if action == "flip" and position < len(text):
            text[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del text[position:position + data.draw(st.integers(1, 50))]
        elif action == "insert":
            text[position:position] = data.draw(st.binary(min_size=1, max_size=20))
        else:  # a number longer than Python's int-from-text limit (4300 digits)
            text[position:position] = b"9" * data.draw(st.sampled_from([20, 4300, 5000]))
    _parse_or_data_error(bytes(text))


@settings(max_examples=pick(200, 2000), deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=200).map(str.encode))
def test_fuzz_manifest_arbitrary_bytes(data: bytes) -> None:
    _parse_or_data_error(data)


def test_manifest_round_trip_still_parses() -> None:
    """The control for the fuzzers above: what we write, we read."""
    assert parse(sample(5).to_json(), expected=BACKUP) == sample(5)


# -- (b) the command line --------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One option of one command, as the real parser defines it."""

    flags: tuple[str, ...]
    takes_value: bool
    choices: tuple[str, ...]
    kind: str  # "path", "fd", "value" or "flag"


PATH_METAVARS = {"FILE", "DIR", "CERT"}


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "flag"
    if action.metavar in PATH_METAVARS:
        return "path"
    if "fd" in action.dest:
        return "fd"
    return "value"


def catalog() -> dict[str, list[Option]]:
    """Every command with its options (positionals as an option without flags)."""
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    table: dict[str, list[Option]] = {}
    for name, sub in commands.choices.items():
        table[name] = [Option(tuple(action.option_strings), action.nargs != 0,
                              tuple(map(str, action.choices or ())), _kind(action))
                       for action in sub._actions if not isinstance(action, argparse._HelpAction)]
    return table


COMMANDS = catalog()

HOSTILE_VALUES = ["", ".", "..", "/", "//", "a//b", "/a/", "a/", "./..", "a\u2215b", "\uff0e",
                  "\u202eabc", "a\u200db", "x" * 2000, "-5", "-0", "0", "99999999999999999999",
                  "1e9", "-5M", "5MB", "99999999999999T", "nan", "inf", "1e400", "\u00b2",
                  "\u0663", "\udcff", "--", "-", "=", "01ARZ3NDEKTSV4RRFFQ69G5FAVX", "0" * 26,
                  "81ARZ3NDEKTSV4RRFFQ69G5FAV", "9999-12-31T23:59:59-23:59",
                  VAULT.upper(), VAULT + "x"]


@dataclass(frozen=True)
class World:
    """The fuzzed commands' surroundings: a spool with a real backup, keys, a work dir."""

    root: Path
    spool: Path
    cert: Path  # copies of the session's key: a fuzzed command may not harm the original
    secret: Path

    @property
    def plausible(self) -> list[str]:
        return [VAULT, "hosts/db1", TIMESTAMP, TIMESTAMP_ULID, "5M", "1", "3", "zstd",
                str(self.cert), str(self.secret)]

    @property
    def inputs(self) -> list[str]:
        """Values of options a command reads: existing, missing, odd."""
        return [str(self.spool), str(self.root / "missing"), str(self.root / "file"),
                str(self.cert), str(self.secret), "/dev/null", str(self.root),
                "relative-name", "x" * 2000, "a\u2215b", "\u202etxt", "\udcff"]

    @property
    def outputs(self) -> list[str]:
        """Values of options a command writes (-o, --metrics): only inside the work dir,
        never /dev/null or a key (metrics are replaced by rename)."""
        return [str(self.root / "out" / "file"), str(self.root / "missing" / "x"),
                str(self.root / "file"), str(self.root), "relative-name", "x" * 2000,
                "\u202etxt", "\udcff"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, gpg_key: oracles.KeyPair,
          ) -> Iterator[World]:
    """A spool holding a real backup (frozen into the embedded vault and staged for
    restore), with the process in a scratch directory so relative paths stay there."""
    root = tmp_path_factory.mktemp("fuzzcli")
    spool = root / "spool"
    spool.mkdir()
    (root / "file").write_bytes(b"not a key, not a config\n")
    (root / "out").mkdir()
    world = World(root, spool, root / "cert.pgp", root / "secret.pgp")
    shutil.copy(gpg_key.cert, world.cert)
    shutil.copy(gpg_key.secret, world.secret)
    source = root / "data"
    source.write_bytes(b"fuzzed backup payload\n" * 1000)
    for argv in (["backup", "-v", VAULT, "-p", "hosts/db1", "-t", TIMESTAMP, "-k",
                  str(world.cert), "-i", str(source)], ["freeze", "--once"]):
        code, stderr = invoke(world, argv, {})
        assert code == 0, stderr
    previous = Path.cwd()
    os.chdir(root)
    try:
        yield world
    finally:
        os.chdir(previous)


def invoke(world: World, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``run(argv)`` as ``main()`` would, stdin /dev/null, stdout a scratch file."""
    stderr = io.StringIO()
    environment = {"CRYOPHILE_SPOOL": str(world.spool), "HOME": str(world.root),
                   "XDG_CONFIG_HOME": str(world.root / "config"),
                   "CRYOPHILE_ASKPASS": "/bin/false", **env}
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        with (world.root / "stdout").open("wb") as stdout:
            code = run(argv, Environment(env=environment, stdin_fd=stdin,
                                         stdout_fd=stdout.fileno(), stderr=stderr))
    finally:
        os.close(stdin)
    return code, stderr.getvalue()


@st.composite
def command_lines(draw: st.DrawFn, world: World) -> tuple[list[str], dict[str, str]]:
    """A command, some of its real options with hostile or plausible values, maybe an env."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    argv = [command]
    options = COMMANDS[command]
    for option in draw(st.lists(st.sampled_from(options), max_size=6)):
        if option.flags:
            argv.append(draw(st.sampled_from(option.flags)))
        if option.takes_value:
            argv.append(draw(_values(option, world)))
    # The daemons must do one pass, and restore must not wait for a thaw that
    # nobody serves: these go last, so they win over what was drawn.
    if command in ("freeze", "thaw"):
        argv.append("--once")
    if command == "restore":
        argv += ["--timeout", "0"]
    if command == "keygen" and not {"-o", "--output-dir"} & set(argv):
        keys = world.root / "keys"  # never the current directory (the checkout)
        keys.mkdir(exist_ok=True)
        argv += ["--output-dir", str(keys)]
    env: dict[str, str] = {}
    if draw(st.integers(0, 9)) == 0:
        env[draw(st.sampled_from(["CRYOPHILE_LOG", "CRYOPHILE_LOG_STYLE"]))] = draw(
            st.sampled_from(["debug", "json", "", "\u202e", "x" * 2000]) | st.text(max_size=8))
    return argv, env


def _values(option: Option, world: World) -> st.SearchStrategy[str]:
    if option.kind == "path":
        writes = {"-o", "--output", "--metrics"} & set(option.flags)
        return st.sampled_from(world.outputs if writes else world.inputs)
    if option.kind == "fd":
        # Only numbers that cannot be an open descriptor of this test process: reading
        # the passphrase from the terminal or from a pytest pipe would block.
        return st.sampled_from(["-1", "x", "", "\u0663", "99999", "99999999999999999999"])
    anything = (st.sampled_from(HOSTILE_VALUES) | st.sampled_from(world.plausible)
                | st.text(max_size=30).filter(lambda s: "\0" not in s))
    if option.choices:
        return st.sampled_from(option.choices) | anything
    return anything


@settings(max_examples=pick(200, 2000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_command_lines(world: World, data: st.DataObject) -> None:
    argv, env = data.draw(command_lines(world), label="argv, env")
    with contextlib.redirect_stdout(io.StringIO()):  # --help and --version print there
        code, stderr = invoke(world, argv, env)
    assert code in DOCUMENTED, (code, stderr)
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    if code != 0:
        errors = [line for line in stderr.splitlines() if line.startswith("cryophile: error:")]
        assert errors, stderr


def test_catalog_covers_every_command() -> None:
    """The fuzzer's view of the parser is the parser: all commands, their options."""
    assert set(COMMANDS) == {"backup", "restore", "freeze", "thaw", "list", "verify", "status",
                             "prune", "keygen", "completion", "man", "unit-paths", "help"}
    flags = {flag for option in COMMANDS["restore"] for flag in option.flags}
    assert {"-v", "-u", "-k", "-P", "-o", "--timeout", "-S", "-c"} <= flags
    kinds = {option.flags[0]: option.kind for option in COMMANDS["restore"] if option.flags}
    assert kinds["-k"] == "path"
    assert kinds["-P"] == "fd"
