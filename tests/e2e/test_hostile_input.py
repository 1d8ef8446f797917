"""Hostile and malformed input to every command (issue 6, "Bad input").

Every case must end in one line on stderr naming the problem, the exit code of
the README's table, no traceback, and no change to the spool or the vault.
``test_cli_errors.py`` covers the first layer (bad ids, sizes, a damaged
fragment); this file goes wider: every command, look-alike characters, NUL
bytes, 2,000-character values, hostile manifests in the restore queue and in
a directory vault, hostile configuration files, keyrings that are not what
they claim, and standard streams that are a directory or closed.

The big tables run in-process through ``cryophile.cli.main.run`` (the code
path of the real command minus the interpreter start, 1 s each on CI);
``test_options_through_the_real_command`` replays a slice of them through the
real ``cryophile`` in a subprocess, as a user would run it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import oracles
from cryophile.cli.main import Environment, run
from e2e.test_cli_errors import SENTINEL, _sign_only_cert, assert_one_line, left_unread
from stress import pick
from support.cli import VAULT, Cli
from support.files import prepare_spool, snapshot

ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
LONG = "x" * 2000
#: What `run` may return for a bad value: the README's exit code table.
DOCUMENTED = {0, 64, 65, 66, 69, 73, 74, 75, 77, 78}


@dataclass
class Outcome:
    """What one in-process command left behind."""

    code: int
    stderr: str
    stdout: bytes
    unread: bytes  # what stayed in the stdin pipe


def run_inprocess(spool: Path, argv: Sequence[str], env: Mapping[str, str] | None = None,
                  stdin_fd: int | None = None) -> Outcome:
    """Run ``cryophile ARGV`` in-process with stdin a pipe holding SENTINEL (or ``stdin_fd``)."""
    environment = {"CRYOPHILE_SPOOL": str(spool), "HOME": str(spool.parent / "home"),
                   "XDG_CONFIG_HOME": str(spool.parent / "home" / ".config"),
                   "CRYOPHILE_ASKPASS": "/bin/false", **(env or {})}
    stderr = io.StringIO()
    read_end, write_end = os.pipe()
    os.write(write_end, SENTINEL)
    os.close(write_end)
    out = spool.parent / "stdout.bin"
    try:
        with out.open("wb") as stdout:
            code = run(list(argv), Environment(env=environment,
                                               stdin_fd=read_end if stdin_fd is None else stdin_fd,
                                               stdout_fd=stdout.fileno(), stderr=stderr))
        unread = left_unread(read_end)
    finally:
        os.close(read_end)
    data = out.read_bytes()
    out.unlink()
    return Outcome(code, stderr.getvalue(), data, unread)


def vault_dir(spool: Path) -> Path:
    """The embedded directory vault of VAULT beside ``spool``."""
    return spool.parent / f"{spool.name}-vaults" / VAULT


def state_of(spool: Path) -> dict[str, Any]:
    """Spool and embedded vaults, to prove a refused command changed neither."""
    vaults = spool.parent / f"{spool.name}-vaults"
    return {"spool": snapshot(spool), "vaults": snapshot(vaults) if vaults.exists() else None}


def without_upload_records(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the sizes of upload records (SPOOL/uploads/…/ULID.json)."""
    spool = {path: entry for path, entry in state["spool"].items()
             if not (path.startswith("uploads/") and path.endswith(".json"))}
    return {**state, "spool": spool}


@pytest.fixture
def ready_spool(spool: Path) -> Path:
    """A spool whose queue directories exist (a writing command creates them on first use)."""
    (spool.parent / "home").mkdir(exist_ok=True)
    prepare_spool(spool)
    return spool


# -- 1. option values -----------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A command line (``{cert}``/``{key}`` are filled in), its exit code and the text the
    one error line must contain."""

    argv: tuple[str, ...]
    code: int
    named: str
    env: Mapping[str, str] = field(default_factory=dict)

    def args(self, key: oracles.KeyPair) -> list[str]:
        return [a.replace("{cert}", str(key.cert)).replace("{key}", str(key.secret))
                for a in self.argv]


def case(*argv: str, code: int = 64, named: str, env: Mapping[str, str] | None = None,
         ) -> Case:
    return Case(tuple(argv), code, named, env or {})


BACKUP = ("backup", "-v", VAULT, "-k", "{cert}")
RESTORE = ("restore", "-v", VAULT, "-u", ULID, "-k", "{key}")

OPTION_CASES: dict[str, Case] = {
    # backup: prefixes with dots, slashes and look-alikes
    "prefix-dotdot-after-dot": case(*BACKUP, "-p", "./..", named="climbs above"),
    "prefix-dotdot-deep": case(*BACKUP, "-p", "a/./../../b", named="climbs above"),
    "prefix-double-slash-abs": case(*BACKUP, "-p", "//etc", named="relative"),
    "prefix-division-slash": case(*BACKUP, "-p", "a\u2215b", named="U+2215"),
    "prefix-fullwidth-dot": case(*BACKUP, "-p", "\uff0e\uff0e/x", named="U+FF0E"),
    "prefix-rtl-override": case(*BACKUP, "-p", "abc\u202etxt.exe", named="U+202E"),
    "prefix-zero-width-joiner": case(*BACKUP, "-p", "db\u200d1", named="U+200D"),
    "prefix-backslash": case(*BACKUP, "-p", "..\\..\\x", named="'\\\\'"),
    "prefix-2000": case(*BACKUP, "-p", LONG, named="key limit"),
    "prefix-ulid-shaped": case(*BACKUP, "-p", f"hosts/{ULID}", named="looks like a ULID"),
    # backup: ids
    "vault-empty": case(*BACKUP, "-v", "", named="invalid vault UUID ''"),
    "vault-dotdot": case(*BACKUP, "-v", "..", named="invalid vault UUID '..'"),
    "vault-with-path": case(*BACKUP, "-v", f"{VAULT}/..", named=f"'{VAULT}/..'"),
    "vault-fullwidth-digit": case(*BACKUP, "-v", "\uff16" + VAULT[1:], named="invalid vault"),
    "vault-2000": case(*BACKUP, "-v", LONG, named="invalid vault UUID"),
    "ulid-too-long": case(*BACKUP, "-u", ULID + "0" * 100, named="invalid ULID"),
    "ulid-letter-u": case(*BACKUP, "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAU", named="invalid ULID"),
    "ulid-overflow": case(*BACKUP, "-u", "81ARZ3NDEKTSV4RRFFQ69G5FAV", named="'81ARZ3"),
    "ulid-cyrillic": case(*BACKUP, "-u", ULID[:-1] + "\u0412", named="invalid ULID"),
    "ulid-empty": case(*BACKUP, "-u", "", named="invalid ULID ''"),
    "time-negative": case(*BACKUP, "-t", "-5", named="'-5'"),
    "time-before-1970": case(*BACKUP, "-t", "1969-12-31T23:59:59Z", named="before 1970"),
    "time-past-9999-in-utc": case(*BACKUP, "-t", "9999-12-31T23:59:59-23:59",
                                  named="out of range"),
    "time-2000": case(*BACKUP, "-t", LONG, named="invalid timestamp"),
    # backup: sizes and numbers
    "size-1e9": case(*BACKUP, "-s", "1e9", named="'1e9'"),
    "size-negative": case(*BACKUP, "--size=-5M", named="'-5M'"),
    "size-decimal-unit": case(*BACKUP, "-s", "5MB", named="'5MB'"),
    "size-huge": case(*BACKUP, "-s", "99999999999999T", named="at most 5T"),
    "size-400-digits": case(*BACKUP, "-s", "9" * 400, named="too large"),
    "size-empty": case(*BACKUP, "-s", "", named="invalid size ''"),
    "size-arabic-digit": case(*BACKUP, "-s", "\u0663\u0663M", named="invalid size"),
    "size-hex": case(*BACKUP, "-s", "0x10M", named="'0x10M'"),
    "level-negative": case(*BACKUP, "--level=-5", named="-5"),
    "level-huge": case(*BACKUP, "-L", "99999999999999999999", named="99999999999999999999"),
    "compression-zwj": case(*BACKUP, "-C", "zstd\u200d", named="invalid choice"),
    "engine-empty": case(*BACKUP, "--engine", "", named="invalid choice: ''"),
    # backup: files
    "input-empty-name": case(*BACKUP, "-i", "", named="is a directory"),
    "input-2000": case(*BACKUP, "-i", LONG, code=74, named="cannot access input"),
    "keyring-empty-name": case("backup", "-v", VAULT, "-k", "", code=78,
                               named="is a directory"),
    "keyring-2000": case("backup", "-v", VAULT, "-k", LONG, code=74, named="keyring"),
    "keyring-nul": case("backup", "-v", VAULT, "-k", "a\0b", named="NUL"),
    "input-nul": case(*BACKUP, "-i", "/dev/null\0x", named="NUL"),
    # global options and environment
    "spool-empty": case(*BACKUP, "-S", "", named="-S/--spool: empty path"),
    "spool-2000": case(*BACKUP, "-S", LONG, code=74, named="cannot use spool directory"),
    "spool-env-2000": case(*BACKUP, code=74, named="cannot use spool directory",
                           env={"CRYOPHILE_SPOOL": LONG}),
    "spool-env-nul": case(*BACKUP, code=74, named="does not exist",
                          env={"CRYOPHILE_SPOOL": "/tmp\0/x"}),
    "config-2000": case("status", "-c", LONG, code=78, named="cannot read configuration"),
    "config-empty": case("status", "-c", "", named="-c/--config: empty path"),
    "log-rtl": case("status", named="CRYOPHILE_LOG", env={"CRYOPHILE_LOG": "\u202edebug"}),
    "log-style-2000": case("status", named="CRYOPHILE_LOG_STYLE",
                           env={"CRYOPHILE_LOG_STYLE": LONG}),
    # restore
    "restore-days-zero": case(*RESTORE, "--days", "0", named="'0'"),
    "restore-days-superscript": case(*RESTORE, "--days", "\u00b2", named="'\u00b2'"),
    "restore-days-arabic": case(*RESTORE, "--days", "\u0663", named="'\u0663'"),
    "restore-timeout-negative": case(*RESTORE, "--timeout=-1", named="'-1'"),
    "restore-timeout-nan": case(*RESTORE, "--timeout", "nan", named="'nan'"),
    "restore-timeout-inf": case(*RESTORE, "--timeout", "inf", named="'inf': at most"),
    "restore-timeout-1e300": case(*RESTORE, "--timeout", "1e300", named="'1e300': at most"),
    "restore-days-past-limit": case(*RESTORE, "--days", "36501", named="'36501': at most"),
    "restore-poll-huge": case(*RESTORE, "--thaw", "--poll", "9" * 400, named="at most"),
    "restore-pass-fd-negative": case(*RESTORE, "--pass-fd=-1", named="'-1'"),
    "restore-pass-fd-arabic": case(*RESTORE, "-P", "\u0663", named="file descriptor"),
    "restore-tier-lowercase": case(*RESTORE, "--tier", "expedited\u200b", named="--tier"),
    "restore-prefix-dotdot": case("restore", "-v", VAULT, "-p", "..", "-u", ULID, "-k",
                                  "{key}", named="climbs above"),
    "restore-output-exists": case(*RESTORE, "-o", "/", code=73, named="already exists"),
    "restore-no-id": case("restore", "-v", VAULT, "-k", "{key}", named="-u/--ulid"),
    # freeze and thaw (always --once: a bad value must not start a daemon)
    "freeze-parallel-zero": case("freeze", "--once", "-j", "0", named="'0'"),
    "freeze-parallel-superscript": case("freeze", "--once", "-j", "\u00b9", named="'\u00b9'"),
    "freeze-rescan-negative": case("freeze", "--once", "--rescan=-5", named="'-5'"),
    "freeze-rescan-inf": case("freeze", "--once", "--rescan", "inf", named="'inf'"),
    "freeze-parallel-huge": case("freeze", "--once", "-j", "100000", named="at most 64"),
    "freeze-prefix-without-vault": case("freeze", "--once", "-p", "x", named="give -v"),
    "freeze-ulid-2000": case("freeze", "--once", "-v", VAULT, "-u", LONG,
                             named="invalid ULID"),
    "thaw-poll-nan": case("thaw", "--once", "--poll", "nan", named="'nan'"),
    "thaw-poll-inf": case("thaw", "--once", "--poll=-inf", named="'-inf'"),
    "thaw-poll-infinity": case("thaw", "--once", "--poll", "Infinity", named="'Infinity'"),
    "thaw-prefix-abs": case("thaw", "--once", "-v", VAULT, "-p", "/etc", named="relative"),
    "thaw-time-empty": case("thaw", "--once", "-v", VAULT, "-t", "", named="''"),
    # list, verify, status, prune, completion, help
    "list-vault-empty": case("list", "-v", "", named="invalid vault UUID ''"),
    "list-prefix-fullwidth-slash": case("list", "-p", "a\uff0fb", named="U+FF0F"),
    "verify-no-target": case("verify", "-v", VAULT, named="one of the arguments"),
    "verify-ulid-2000": case("verify", "-v", VAULT, "-u", LONG, named="invalid ULID"),
    "verify-key-without-download": case("verify", "-v", VAULT, "-u", ULID, "-k", "{key}",
                                        named="--download"),
    "verify-prefix-dotdot": case("verify", "-v", VAULT, "-p", "a/../..", "--all",
                                 named="climbs above"),
    "status-extra-argument": case("status", "..", named="unrecognized arguments: .."),
    "prune-keep-negative": case("prune", "-v", VAULT, "--keep-last=-1", named="'-1'"),
    "prune-keep-fraction": case("prune", "-v", VAULT, "--keep-daily", "1.5", named="'1.5'"),
    "prune-keep-arabic": case("prune", "-v", VAULT, "--keep-last", "\u0663", named="'\u0663'"),
    "prune-no-rule": case("prune", "-v", VAULT, named="at least one"),
    "prune-prefix-dotdot": case("prune", "-v", VAULT, "-p", "../x", "--keep-last", "1",
                                named="climbs above"),
    "completion-fish": case("completion", "fish", named="'fish'"),
    "completion-empty": case("completion", "", named="invalid choice: ''"),
    "help-unknown": case("help", "\u202ebackup", named="invalid choice"),
    "command-unknown": case("frobnicate", named="invalid choice: 'frobnicate'"),
}


def check_refused(outcome: Outcome, expected: Case, before: dict[str, Any],
                  after: dict[str, Any]) -> None:
    """The contract every refusal keeps."""
    assert outcome.code == expected.code, outcome.stderr
    assert expected.named in outcome.stderr
    assert_one_line(outcome.stderr)
    # Naming a 2,000-character value once is fine; repeating it, or dumping a document, not.
    longest = max(map(len, [*expected.argv, *expected.env.values()]), default=0)
    assert len(outcome.stderr) < 800 + longest, "the one line must stay readable"
    assert outcome.stdout == b""
    assert outcome.unread == SENTINEL, "the input was read although the command was refused"
    assert after == before


@pytest.mark.parametrize("name", sorted(OPTION_CASES))
def test_hostile_option_values(name: str, ready_spool: Path, gpg_key: oracles.KeyPair) -> None:
    expected = OPTION_CASES[name]
    before = state_of(ready_spool)
    outcome = run_inprocess(ready_spool, expected.args(gpg_key), expected.env)
    check_refused(outcome, expected, before, state_of(ready_spool))


#: argv cannot carry NUL and subprocess refuses it in the environment: in-process only.
#: A normal run replays every 8th case (1 s each); scripts/stress replays them all.
SUBPROCESS_CASES = sorted(name for name, c in OPTION_CASES.items()
                          if "\0" not in "".join(c.argv) + "".join(c.env.values()))[::pick(8, 1)]


@pytest.mark.stress
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_options_through_the_real_command(name: str, cli: Cli, gpg_key: oracles.KeyPair,
                                          ) -> None:
    expected = OPTION_CASES[name]
    prepare_spool(cli.spool)
    before = state_of(cli.spool)
    read_end, write_end = os.pipe()
    os.write(write_end, SENTINEL)
    os.close(write_end)
    try:
        result = cli.run(expected.args(gpg_key), stdin=read_end,
                         env={"CRYOPHILE_ASKPASS": "/bin/false", **expected.env}, timeout=120)
        unread = left_unread(read_end)
    finally:
        os.close(read_end)
    outcome = Outcome(result.returncode, result.stderr, result.stdout, unread)
    check_refused(outcome, expected, before, state_of(cli.spool))


# -- 2. hostile manifests in the restore queue and in a directory vault --------------------

DATA = b"the plaintext of a small backup\n" * 500


def _doc(raw: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def _edit(change: Callable[[dict[str, Any]], object]) -> Callable[[bytes], bytes]:
    def make(original: bytes) -> bytes:
        document = _doc(original)
        change(document)
        return json.dumps(document).encode()
    return make


def _fragment(change: Callable[[dict[str, Any]], object]) -> Callable[[bytes], bytes]:
    return _edit(lambda d: change(d["fragments"][0]))


def _huge_int(original: bytes) -> bytes:
    text = original.decode()
    size = str(_doc(original)["fragment_size"])
    return text.replace(f'"fragment_size": {size}', '"fragment_size": ' + "9" * 5000).encode()


def _duplicate_key(original: bytes) -> bytes:
    # JSON with a repeated key: the parser keeps the last, a hostile prefix.
    return original.rstrip().rstrip(b"}") + b', "prefix": "../../etc"}'


MANIFESTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty-file": (lambda _: b"", "not valid UTF-8 JSON"),
    "not-utf8": (lambda m: b"\xff\xfe" + m, "not valid UTF-8 JSON"),
    "not-json": (lambda m: m[:-20], "not valid UTF-8 JSON"),
    "json-array": (lambda _: b"[1, 2]", "not a JSON object"),
    "deep-nesting": (lambda _: b"[" * 100_000, "not valid UTF-8 JSON"),
    "10-MB": (_edit(lambda d: d.update(format="x" * 10_000_000)), "not a cryophile manifest"),
    "wrong-type-fragments": (_edit(lambda d: d.update(fragments="chunk.1")),
                             "'fragments' should be list"),
    "wrong-type-index": (_fragment(lambda f: f.update(index="../x")), "'index' should be int"),
    "nan-fragment-size": (lambda m: m.replace(b'"fragment_size": ', b'"fragment_size": NaN, '
                                              b'"x": '), "unknown field 'x'"),
    "huge-size": (_fragment(lambda f: f.update(size=10**30)), "size"),
    "5000-digit-number": (_huge_int, "not valid UTF-8 JSON"),
    "negative-index": (_fragment(lambda f: f.update(index=-1)), "index -1"),
    "sha256-relative-path": (_fragment(lambda f: f.update(sha256="../x")), "bad sha256"),
    "sha256-absolute-path": (_fragment(lambda f: f.update(sha256="/etc/passwd")),
                             "bad sha256"),
    "fragment-name-path": (_fragment(lambda f: f.update(name="../../x")),
                           "unknown field 'name'"),
    "duplicate-fragment": (_edit(lambda d: d.update(fragments=d["fragments"] * 2)),
                           "fragment 1 has size"),
    "duplicate-json-key": (_duplicate_key, "bad backup id"),
    "missing-sha256": (_fragment(lambda f: f.pop("sha256")), "'sha256' is missing"),
    "missing-ulid": (_edit(lambda d: d.pop("ulid")), "'ulid' is missing"),
    "extra-key": (_edit(lambda d: d.update(output="/etc/passwd")), "unknown field 'output'"),
    "another-backup": (_edit(lambda d: d.update(prefix="other")), "describes backup"),
    "created-out-of-range": (_edit(lambda d: d.update(created="9999-12-31T23:59:59-23:59")),
                             "out of range"),
}


@dataclass
class Planted:
    """A backup frozen into the embedded vault and staged in the restore queue (``ulid``),
    and another one still waiting in the freeze queue (``queued``)."""

    spool: Path
    ulid: str
    manifest: bytes
    queued: str

    @property
    def freeze_copy(self) -> Path:
        return self.spool / "freeze" / VAULT / "q" / self.queued

    @property
    def queue_copy(self) -> Path:
        return self.spool / "restore" / VAULT / "p" / self.ulid

    @property
    def vault_copy(self) -> Path:
        return vault_dir(self.spool) / "p" / self.ulid


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, gpg_key: oracles.KeyPair) -> Planted:
    """Made once with the real commands: backup, stage into the restore queue, freeze."""
    root = tmp_path_factory.mktemp("planted")
    spool = root / "spool"
    spool.mkdir()
    (root / "home").mkdir()
    source = root / "data"
    source.write_bytes(DATA)
    outcome = run_inprocess(spool, ["backup", "-v", VAULT, "-p", "p", "-k", str(gpg_key.cert),
                                    "-i", str(source), "--json"])
    assert outcome.code == 0, outcome.stderr
    ulid = json.loads(outcome.stdout)["ulid"]
    frozen = spool / "freeze" / VAULT / "p" / ulid
    staged = spool / "restore" / VAULT / "p" / ulid
    staged.mkdir(parents=True)
    for item in frozen.iterdir():
        shutil.copy(item, staged / item.name)
    assert run_inprocess(spool, ["freeze", "--once"]).code == 0
    assert not frozen.exists()
    outcome = run_inprocess(spool, ["backup", "-v", VAULT, "-p", "q", "-k", str(gpg_key.cert),
                                    "-i", str(source), "--json"])
    assert outcome.code == 0, outcome.stderr
    return Planted(spool, ulid, (staged / "chunk.0").read_bytes(),
                   json.loads(outcome.stdout)["ulid"])


@pytest.fixture
def planted(template: Planted, tmp_path: Path) -> Planted:
    """A private copy of the template (spool, embedded vault and home)."""
    for name in ("spool", "spool-vaults", "home"):
        shutil.copytree(template.spool.parent / name, tmp_path / name, symlinks=True)
    return Planted(tmp_path / "spool", template.ulid, template.manifest, template.queued)


def _plant_in_queue(planted: Planted, content: bytes) -> None:
    (planted.queue_copy / "chunk.0").write_bytes(content)


def _plant_in_vault(planted: Planted, content: bytes) -> None:
    """Replace the vault's object the way a hostile vault would: sidecar included."""
    shutil.rmtree(planted.queue_copy)
    (planted.vault_copy / "chunk.0").write_bytes(content)
    sidecar = vault_dir(planted.spool) / ".cryophile" / "meta" / "p" / planted.ulid / "chunk.0.json"
    sidecar.unlink()


def _assert_restore_refused(planted: Planted, key: oracles.KeyPair, message: str) -> None:
    output = planted.spool.parent / "out.bin"
    outcome = run_inprocess(planted.spool, ["restore", "-v", VAULT, "-p", "p", "-u",
                                            planted.ulid, "-k", str(key.secret), "-o",
                                            str(output), "--keep"])
    assert outcome.code == 65, outcome.stderr
    assert message in outcome.stderr
    assert_one_line(outcome.stderr)
    assert len(outcome.stderr) < 800
    assert not output.exists()
    assert not list(planted.spool.parent.glob(".out.bin*"))


def _assert_reported(outcome: Outcome, code: int) -> None:
    """list/status/verify/prune: the documented code, no traceback, a readable report."""
    assert outcome.code == code, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert "internal error" not in outcome.stderr
    assert len(outcome.stderr) + len(outcome.stdout) < 20_000


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_hostile_manifest_in_restore_queue(name: str, planted: Planted,
                                           gpg_key: oracles.KeyPair) -> None:
    make, message = MANIFESTS[name]
    _plant_in_queue(planted, make(planted.manifest))
    before = state_of(planted.spool)
    _assert_restore_refused(planted, gpg_key, message)
    listing = run_inprocess(planted.spool, ["list", "--json"])
    _assert_reported(listing, 0)
    status = run_inprocess(planted.spool, ["status", "--json"])
    _assert_reported(status, 0)
    restore_entries = json.loads(status.stdout)["restore"]
    assert [entry["ulid"] for entry in restore_entries] == [planted.ulid]
    assert state_of(planted.spool) == before


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_hostile_manifest_in_directory_vault(name: str, planted: Planted,
                                             gpg_key: oracles.KeyPair) -> None:
    make, message = MANIFESTS[name]
    _plant_in_vault(planted, make(planted.manifest))
    before = state_of(planted.spool)
    _assert_restore_refused(planted, gpg_key, message)
    verify = run_inprocess(planted.spool, ["verify", "-v", VAULT, "-p", "p", "-u",
                                           planted.ulid])
    _assert_reported(verify, 65)
    assert message in verify.stdout.decode()
    listing = run_inprocess(planted.spool, ["list", "-v", VAULT, "-p", "p", "--json"])
    _assert_reported(listing, 0)
    entries = json.loads(listing.stdout)
    assert [(e["ulid"], e["state"]) for e in entries] == [(planted.ulid, "damaged")]
    assert message in entries[0]["error"]
    prune = run_inprocess(planted.spool, ["prune", "-v", VAULT, "--keep-last", "1",
                                          "--allow-early-deletion"])
    _assert_reported(prune, 65)
    assert state_of(planted.spool) == before


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_hostile_manifest_in_freeze_queue(name: str, planted: Planted) -> None:
    """freeze refuses the backup (65) before uploading any of it; list and status say so."""
    make, message = MANIFESTS[name]
    manifest = planted.freeze_copy / "chunk.0"
    content = make(manifest.read_bytes())
    manifest.unlink()
    manifest.write_bytes(content)
    before = state_of(planted.spool)
    freeze = run_inprocess(planted.spool, ["freeze", "--once"])
    _assert_reported(freeze, 65)
    assert message in freeze.stderr
    assert not (vault_dir(planted.spool) / "q").exists(), "nothing of it may be uploaded"
    listing = run_inprocess(planted.spool, ["list", "-p", "q", "--json"])
    _assert_reported(listing, 0)
    assert [(e["ulid"], e["in_vault"]) for e in json.loads(listing.stdout)] == [
        (planted.queued, False)]
    status = run_inprocess(planted.spool, ["status", "--json"])
    _assert_reported(status, 0)
    (entry,) = json.loads(status.stdout)["freeze"]
    assert entry["ulid"] == planted.queued
    assert message in entry["error"]
    # Only the backup's upload record changed: it now says why the upload stopped.
    assert without_upload_records(state_of(planted.spool)) == without_upload_records(before)


def test_hostile_manifest_through_the_real_command(planted: Planted, gpg_key: oracles.KeyPair,
                                                   ) -> None:
    """One of the above end to end in subprocesses: the real restore, verify and list."""
    cli = Cli(planted.spool, planted.spool.parent / "home")
    make, message = MANIFESTS["5000-digit-number"]
    _plant_in_vault(planted, make(planted.manifest))
    before = state_of(planted.spool)
    result = cli.run(["restore", "-v", VAULT, "-p", "p", "-u", planted.ulid, "-k",
                      gpg_key.secret])
    assert result.returncode == 65
    assert message in result.stderr
    assert_one_line(result.stderr)
    assert result.stdout == b""
    verify = cli.run(["verify", "-v", VAULT, "-p", "p", "--all"])
    assert verify.returncode == 65, verify.stderr
    assert "Traceback" not in verify.stderr
    listing = cli.run(["list", "-p", "p"])
    assert listing.returncode == 0, listing.stderr
    assert b"damaged" in listing.stdout
    assert state_of(planted.spool) == before


def test_untouched_template_restores(planted: Planted, gpg_key: oracles.KeyPair) -> None:
    """The control: without planting anything the same restore succeeds byte for byte."""
    output = planted.spool.parent / "out.bin"
    outcome = run_inprocess(planted.spool, ["restore", "-v", VAULT, "-p", "p", "-u",
                                            planted.ulid, "-k", str(gpg_key.secret), "-o",
                                            str(output)])
    assert outcome.code == 0, outcome.stderr
    assert output.read_bytes() == DATA


# -- 3. hostile configuration files -------------------------------------------------------

S3 = f'[[vault]]\nid = "{VAULT}"\nprovider = "s3"\nbucket = "b-1"\n'
DIR = f'[[vault]]\nid = "{VAULT}"\nprovider = "dir"\npath = "/tmp"\n'

CONFIGS: dict[str, tuple[bytes | None, str]] = {
    "not-toml": (b"[[vault]\nid = 1\n", "invalid TOML"),
    "not-utf8": (b'spool = "/tmp/\xff"\n', "line 1: not valid UTF-8"),
    "directory": (None, "Is a directory"),
    "unknown-top-key": (b'spol = "/tmp"\n', "unknown key 'spol'"),
    "unknown-vault-key": ((S3 + 'secret_access_key = "x"\n').encode(),
                          "unknown key 'secret_access_key'"),
    "wrong-type-days": ((S3 + 'restore_days = "7"\n').encode(), "'restore_days'"),
    "wrong-type-spool": (b"spool = 5\n", "'spool'"),
    "wrong-type-vault": (b'vault = "x"\n', "[[vault]] tables"),
    "bool-days": ((S3 + "restore_days = true\n").encode(), "True"),
    "vault-id-dotdot": (b'[[vault]]\nid = ".."\nprovider = "dir"\npath = "/tmp"\n',
                        "'..' is not a UUID"),
    "bucket-dotdot": (S3.replace("b-1", "..").encode(), "'..' is not a bucket name"),
    "bucket-path": (S3.replace("b-1", "../etc").encode(), "is not a bucket name"),
    "path-empty": (DIR.replace('"/tmp"', '""').encode(), "non-empty string"),
    "path-nul": (DIR.replace('"/tmp"', '"/tmp\\u0000x"').encode(), "NUL"),
    "spool-nul": (b'spool = "/tmp\\u0000x"\n', "NUL"),
    "endpoint-no-scheme": ((S3 + 'endpoint_url = "localhost:9000"\n').encode(),
                           "not an http:// or https:// URL"),
    "endpoint-ftp": ((S3 + 'endpoint_url = "ftp://host/"\n').encode(), "'ftp://host/'"),
    "endpoint-blank-in-host": ((S3 + 'endpoint_url = "http://a b:9000"\n').encode(),
                               "not an http:// or https:// URL"),
    "endpoint-newline": ((S3 + 'endpoint_url = "http://a\\nb"\n').encode(), "URL"),
    "huge-days": ((S3 + "restore_days = 9223372036854775807\n").encode(), "more than 36500"),
    "huge-lock-days": ((S3 + 'object_lock_mode = "GOVERNANCE"\nobject_lock_days = 10000000000\n'
                        ).encode(), "object_lock_days"),
    "huge-bandwidth": ((S3 + f'max_bandwidth = "{"9" * 400}"\n').encode(), "too large"),
    "negative-bandwidth": ((S3 + "max_bandwidth = -5\n").encode(), "at least 1 byte"),
    "decimal-bandwidth": ((S3 + 'max_bandwidth = "5MB"\n').encode(), "'5MB'"),
    "class-zwj": ((S3 + 'storage_class = "GLACIER\u200d"\n').encode(), "storage_class"),
    "duplicate-vault": ((DIR + DIR).encode(), "duplicate vault id"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hostile_config_file(name: str, ready_spool: Path, gpg_key: oracles.KeyPair) -> None:
    content, message = CONFIGS[name]
    config = ready_spool.parent / "cryophile.toml"
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    before = state_of(ready_spool)
    for argv in (["backup", "-v", VAULT, "-k", str(gpg_key.cert)], ["list"], ["status"],
                 ["freeze", "--once"]):
        outcome = run_inprocess(ready_spool, [*argv, "-c", str(config)])
        expected = Case(tuple(argv), 78, message)
        check_refused(outcome, expected, before, state_of(ready_spool))
        assert str(config) in outcome.stderr


def test_hostile_default_config_through_the_real_command(cli: Cli, gpg_key: oracles.KeyPair,
                                                         ) -> None:
    """The file found in ~/.config (no -c) is just as strict, in the real command."""
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True)
    config.write_bytes(CONFIGS["huge-lock-days"][0] or b"")
    prepare_spool(cli.spool)
    before = state_of(cli.spool)
    read_end, write_end = os.pipe()
    os.write(write_end, SENTINEL)
    os.close(write_end)
    try:
        result = cli.run(["backup", "-v", VAULT, "-k", gpg_key.cert], stdin=read_end)
        assert os.read(read_end, len(SENTINEL) + 1) == SENTINEL
    finally:
        os.close(read_end)
    assert result.returncode == 78
    assert "object_lock_days" in result.stderr
    assert str(config) in result.stderr
    assert_one_line(result.stderr)
    assert state_of(cli.spool) == before


# -- 4. keyrings that are not what they claim ----------------------------------------------

@dataclass(frozen=True)
class BadKeys:
    expired: Path
    revoked: Path
    sign_only: Path
    random: Path


def _gpg(home: Path, *args: str, faked_time: str | None = None) -> None:
    command = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
               "--passphrase", ""]
    if faked_time is not None:
        command += ["--faked-system-time", faked_time]
    subprocess.run([*command, *args], check=True, capture_output=True)


def _new_home(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


@pytest.fixture(scope="module")
def bad_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadKeys]:
    """Real GnuPG certificates: expired (made in 2020 with one day to live) and revoked
    (gpg's own revocation certificate imported); a sign-only one; random bytes."""
    root = tmp_path_factory.mktemp("badkeys")
    old = _new_home(root / "old")
    _gpg(old, "--quick-gen-key", "old <old@example.org>", "future-default", "default", "1d",
         faked_time="20200101T000000")
    _gpg(old, "--export", "-o", str(root / "expired.pgp"))
    revoked_home = _new_home(root / "rev")
    _gpg(revoked_home, "--quick-gen-key", "rev <rev@example.org>", "future-default", "default",
         "never")
    (revocation,) = (revoked_home / "openpgp-revocs.d").iterdir()
    armored = revocation.read_text().replace(":-----BEGIN PGP PUBLIC KEY BLOCK",
                                             "-----BEGIN PGP PUBLIC KEY BLOCK")
    (root / "rev.asc").write_text(armored)
    _gpg(revoked_home, "--import", str(root / "rev.asc"))
    _gpg(revoked_home, "--export", "-o", str(root / "revoked.pgp"))
    (root / "random.pgp").write_bytes(os.urandom(4096))
    yield BadKeys(root / "expired.pgp", root / "revoked.pgp", _sign_only_cert(root),
                  root / "random.pgp")
    for home in (old, revoked_home):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def test_backup_refuses_expired_revoked_and_foreign_keyrings(ready_spool: Path,
                                                             bad_keys: BadKeys) -> None:
    cases = [(bad_keys.expired, "expired on 2020-01-02"), (bad_keys.revoked, "is revoked"),
             (bad_keys.sign_only, "no valid, unexpired, unrevoked encryption subkey"),
             (bad_keys.random, "not OpenPGP"),
             # An endless "keyring" is refused, not read into memory.
             (Path("/dev/zero"), "larger than 16 MiB")]
    before = state_of(ready_spool)
    for keyring, message in cases:
        outcome = run_inprocess(ready_spool, ["backup", "-v", VAULT, "-k", str(keyring)])
        check_refused(outcome, Case((), 78, message), before, state_of(ready_spool))
        assert str(keyring) in outcome.stderr


def test_backup_refuses_a_bad_keyring_among_good_ones(cli: Cli, gpg_key: oracles.KeyPair,
                                                      bad_keys: BadKeys) -> None:
    """The real command: one revoked certificate spoils the backup, nothing is written."""
    prepare_spool(cli.spool)
    before = state_of(cli.spool)
    result = cli.run(["backup", "-v", VAULT, "-k", gpg_key.cert, "-k", bad_keys.revoked],
                     stdin=b"data")
    assert result.returncode == 78
    assert "is revoked" in result.stderr
    assert str(bad_keys.revoked) in result.stderr
    assert_one_line(result.stderr)
    assert state_of(cli.spool) == before


def test_restore_refuses_keyrings_that_are_not_secret_keys(planted: Planted, bad_keys: BadKeys,
                                                           gpg_key: oracles.KeyPair) -> None:
    empty = planted.spool.parent / "empty.pgp"
    empty.write_bytes(b"")
    cases = [(empty, 78, "is empty"), (bad_keys.random, 78, "not OpenPGP"),
             (planted.spool.parent, 78, "is a directory"),
             (gpg_key.cert, 78, "holds no secret key"),
             (bad_keys.revoked, 78, "holds no secret key"),
             (planted.spool.parent / "missing.pgp", 66, "does not exist")]
    before = state_of(planted.spool)
    for keyring, code, message in cases:
        outcome = run_inprocess(planted.spool, ["restore", "-v", VAULT, "-p", "p", "-u",
                                                planted.ulid, "-k", str(keyring)])
        check_refused(outcome, Case((), code, message), before, state_of(planted.spool))


def test_secret_key_as_backup_recipient_works_with_a_warning(cli: Cli,
                                                             gpg_key: oracles.KeyPair) -> None:
    """A secret key holds the certificate: accepted, with a warning naming the file."""
    result = cli.run(["backup", "-v", VAULT, "-p", "tsk", "-k", gpg_key.secret, "--json"],
                     stdin=b"payload")
    assert result.returncode == 0, result.stderr
    assert "only needs the certificate" in result.stderr
    assert str(gpg_key.secret) in result.stderr
    ulid = json.loads(result.stdout)["ulid"]
    cli.stage_for_restore(ulid, prefix="tsk")
    result = cli.run(["restore", "-v", VAULT, "-p", "tsk", "-u", ulid, "-k", gpg_key.secret])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"payload"


# -- 5. empty input, a directory or a closed fd as stdin, a closed stdout -------------------

def test_empty_input_backs_up_and_restores_to_zero_bytes(cli: Cli,
                                                         gpg_key: oracles.KeyPair) -> None:
    result = cli.run(["backup", "-v", VAULT, "-p", "empty", "-k", gpg_key.cert, "--json"],
                     stdin=b"")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input_bytes"] == 0
    assert report["fragments"] == 1  # the OpenPGP framing of nothing
    cli.stage_for_restore(report["ulid"], prefix="empty")
    output = cli.home / "restored"
    result = cli.run(["restore", "-v", VAULT, "-p", "empty", "-u", report["ulid"], "-k",
                      gpg_key.secret, "-o", output])
    assert result.returncode == 0, result.stderr
    assert output.exists()
    assert output.read_bytes() == b""


def test_directory_as_stdin_is_refused(cli: Cli, ready_spool: Path,
                                       gpg_key: oracles.KeyPair) -> None:
    before = state_of(ready_spool)
    directory = os.open(ready_spool.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        outcome = run_inprocess(ready_spool, ["backup", "-v", VAULT, "-k", str(gpg_key.cert)],
                                stdin_fd=directory)
        # The real command never gets that far: CPython itself refuses to start with a
        # directory on fd 0 ("Fatal Python error: init_sys_streams"). Still no backup.
        result = cli.run(["backup", "-v", VAULT, "-k", gpg_key.cert], stdin=directory)
    finally:
        os.close(directory)
    assert outcome.code == 64
    assert "standard input is a directory" in outcome.stderr
    assert_one_line(outcome.stderr)
    assert result.returncode != 0
    assert state_of(ready_spool) == before


def _with_closed(fd: int, cli: Cli, args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run the real command with ``fd`` closed (``<&-`` or ``>&-`` in a shell)."""
    redirect = {0: "<&-", 1: ">&-"}[fd]
    script = f'exec "$@" {redirect}'
    return subprocess.run(["sh", "-c", script, "sh", sys.executable, "-m", "cryophile", *args],
                          env=cli.environment(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                          check=False)


def test_closed_stdin_is_refused_not_backed_up_empty(cli: Cli,
                                                     gpg_key: oracles.KeyPair) -> None:
    """Before the fix the next file opened (the backup's own lock) became fd 0 and an
    empty backup was written with exit 0."""
    prepare_spool(cli.spool)
    before = state_of(cli.spool)
    result = _with_closed(0, cli, ["backup", "-v", VAULT, "-k", str(gpg_key.cert)])
    stderr = result.stderr.decode()
    assert result.returncode == 64, stderr
    assert "standard input is closed" in stderr
    assert_one_line(stderr)
    assert state_of(cli.spool) == before


def test_closed_stdout_is_an_error_not_a_traceback(cli: Cli, gpg_key: oracles.KeyPair) -> None:
    ulid = cli.backup(gpg_key, b"secret plaintext")
    cli.stage_for_restore(ulid)
    before = state_of(cli.spool)
    restore = _with_closed(1, cli, ["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid,
                                    "-k", str(gpg_key.secret), "--keep"])
    listing = _with_closed(1, cli, ["list"])
    for result in (restore, listing):
        stderr = result.stderr.decode()
        assert result.returncode == 74, stderr
        assert_one_line(stderr)
    assert state_of(cli.spool) == before
    # Nothing of the plaintext landed in a file that took fd 1's place.
    for path in cli.spool.rglob("*"):
        assert not path.is_file() or b"secret plaintext" not in path.read_bytes()


def test_every_code_in_the_tables_is_documented() -> None:
    codes = {c.code for c in OPTION_CASES.values()} | {65, 78}
    assert codes <= DOCUMENTED
