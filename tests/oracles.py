"""Reference OpenPGP implementations ("oracles") for the test suite.

Makes real OpenPGP keys with the real tools (GnuPG 2.2, ``sq`` 0.27, ``sqop`` 0.27) and
encrypts/decrypts with them, so that cryophile's own OpenPGP output is checked against
independent implementations rather than against itself.

Contracts shared by every function here:

* Offline, non-interactive and terminal-free: every child runs in a new session
  (``start_new_session=True``) with stdin from ``/dev/null`` unless fed, so a tool that
  tries to prompt fails at once instead of hanging.  The only exception is the protection
  step of :func:`make_sq_key`, which deliberately gives ``sq`` a *pseudo*-terminal.
* Throwaway state: each call uses its own temporary GnuPG ``--homedir`` (0700, short path
  so the agent socket fits ``sun_path``) and its own ``HOME``; ``~/.gnupg`` and any
  user state are never read or written.  GnuPG's agent is stopped with
  ``gpgconf --homedir H --kill all`` before the directory is removed.
* Passphrases never appear on a command line: they go through an inherited pipe
  (``--passphrase-fd N`` / ``--with-key-password=@FD:N``) or a pseudo-terminal.
* Failures of a tool raise :class:`OracleError` carrying the command and its stderr;
  on failure the ``out`` file of an encrypt/decrypt function does not exist.
* Nothing is cached between calls.  Costs on a 2-vCPU machine: cv25519 keys
  (gpg/sq/sqop) ≈ 0.02–0.1 s, plus ≈ 0.2 s for a protected sq key; gpg rsa3072
  ≈ 0.6–2 s, occasionally more (two RSA-3072 keys, prime search) — make few.  Each
  oracle encrypt/decrypt ≈ 0.01–0.1 s; gpg_decrypt of an sq/sqop *protected* key
  ≈ 0.3 s (their S2K uses 65 011 712 hash bytes).

Measured facts about the keys and messages these tools produce are in
``tests/ORACLE_FINDINGS.md``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysequoia

__all__ = [
    "DEBIAN_PACKAGES",
    "KeyPair",
    "OracleError",
    "SubkeyHistory",
    "gpg_change_key",
    "gpg_decrypt",
    "gpg_encrypt",
    "gpg_fingerprints",
    "make_gpg_key",
    "make_gpg_subkey_history",
    "make_sq_key",
    "make_sq_subkey_history",
    "make_sqop_key",
    "missing_tools",
    "sq_decrypt",
    "sqop_decrypt",
    "sqop_encrypt",
    "tool_available",
]

#: Executable name → Debian 12 package that ships it (CI must install these).
DEBIAN_PACKAGES: dict[str, str] = {
    "gpg": "gpg",
    "gpgconf": "gpgconf",
    "gpg-agent": "gpg-agent",
    "sq": "sq",
    "sqop": "sqop",
    "setsid": "util-linux",
}

_TIMEOUT = 120.0  # seconds per child process; RSA keygen is the slowest step
_UID_DOMAIN = "cryophile.invalid"
_GPG_ALGOS = ("cv25519", "rsa3072")
# GnuPG's agent calibrates its S2K count to ~100 ms per key, which made a protected
# `gpg --gen-key` take 3.5-5 s here.  65536 (the minimum) makes it ~0.04 s.  The
# exported secret keys then use 65536 S2K hash bytes: fine for throwaway test keys.
_GPG_AGENT_CONF = "s2k-count 65536\n"


class OracleError(Exception):
    """A reference tool failed; the message holds the command line and its stderr."""


@dataclass(frozen=True)
class KeyPair:
    """A key made by one of the ``make_*_key`` functions.

    Attributes:
        tool: ``"gpg-cv25519"``, ``"gpg-rsa3072"``, ``"sq"`` or ``"sqop"``.
        cert: public certificate (transferable public key).  gpg: binary or armored as
            requested with ``armor=``; sq and sqop: always ASCII-armored.
        secret: transferable secret key as the tool exports it, in the same encoding as
            ``cert``; protected with ``passphrase`` when that is not ``None``.
        passphrase: the passphrase protecting ``secret``, or ``None`` if unprotected.
            Use ``dataclasses.replace(key, passphrase="wrong")`` to test bad ones.
        fingerprint: primary key fingerprint, lowercase hex without spaces (v4: 40 chars).

    Every kind has exactly one encryption subkey flagged for transport *and* storage
    encryption (key flags 0x0C) and a Features subpacket of MDC only (no SEIPD v2), so
    encrypting to any of them with pysequoia 0.1.35 yields PKESK v3 + SEIPD v1.
    """

    tool: str
    cert: Path
    secret: Path
    passphrase: str | None
    fingerprint: str


def tool_available(name: str) -> bool:
    """Return whether executable ``name`` is on ``PATH`` (``shutil.which``)."""
    return shutil.which(name) is not None


def missing_tools(*names: str) -> str | None:
    """Return ``None`` if all executables ``names`` exist, else a message naming them
    and the Debian packages that ship them (for ``pytest.fail``)."""
    missing = [n for n in names if not tool_available(n)]
    if not missing:
        return None
    packages = sorted({DEBIAN_PACKAGES.get(n, n) for n in missing})
    return (
        f"required OpenPGP oracle tool(s) not found on PATH: {', '.join(missing)}; "
        f"install Debian package(s): apt-get install {' '.join(packages)}"
    )


# --------------------------------------------------------------------------- helpers


def _require(*names: str) -> None:
    message = missing_tools(*names)
    if message is not None:
        raise OracleError(message)


def _check_passphrase(passphrase: str | None) -> None:
    if passphrase is None:
        return
    if passphrase == "":
        raise ValueError("empty passphrase: use passphrase=None for an unprotected key")
    if "\n" in passphrase or "\r" in passphrase or "\0" in passphrase:
        raise ValueError("passphrase must not contain newline, carriage return or NUL")


def _env(home: Path, gnupghome: Path | None = None) -> dict[str, str]:
    """A child environment isolated from the user's OpenPGP state."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"GNUPGHOME", "GPG_AGENT_INFO", "GPG_TTY", "SQ_HOME", "DISPLAY"}
        and not k.startswith(("SEQUOIA_", "SQ_"))
    }
    env["HOME"] = str(home)
    env["LC_ALL"] = "C.UTF-8"
    env["LANGUAGE"] = "C"
    if gnupghome is not None:
        env["GNUPGHOME"] = str(gnupghome)
    return env


def _describe(args: Sequence[str | Path]) -> str:
    return " ".join(str(a) for a in args)


#: Placeholder in an argument list: replaced by the passphrase option(s), or dropped.
_PW = "\0passphrase\0"


def _run(
    args: Sequence[str | Path],
    *,
    env: dict[str, str],
    stdin: bytes | None = None,
    passphrase: str | None = None,
    passphrase_opt: str = "",
) -> bytes:
    """Run ``args`` terminal-free and return its stdout; raise OracleError on failure.

    If ``passphrase`` is given it is written (plus ``\\n``) into a pipe whose read end the
    child inherits, and the :data:`_PW` placeholder in ``args`` is replaced by
    ``passphrase_opt`` with ``{fd}`` set to that descriptor number (split on spaces).
    Without a passphrase the placeholder is dropped.
    """
    pass_fds: tuple[int, ...] = ()
    read_fd = -1
    pw_args: list[str] = []
    if passphrase is not None:
        if _PW not in args or not passphrase_opt:
            raise ValueError("passphrase given but no _PW placeholder / passphrase_opt")
        read_fd, write_fd = os.pipe()
        with os.fdopen(write_fd, "wb") as writer:  # far below the pipe buffer size
            writer.write(passphrase.encode("utf-8") + b"\n")
        pass_fds = (read_fd,)
        pw_args = passphrase_opt.format(fd=read_fd).split(" ")
    argv: list[str] = []
    for arg in args:
        if arg == _PW:
            argv.extend(pw_args)
        else:
            argv.append(str(arg))
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            env=env,
            pass_fds=pass_fds,
            start_new_session=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OracleError(f"{_describe(argv)}: timed out after {_TIMEOUT} s") from exc
    except OSError as exc:
        raise OracleError(f"{_describe(argv)}: cannot run: {exc}") from exc
    finally:
        if read_fd >= 0:
            os.close(read_fd)
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise OracleError(f"{_describe(argv)}: exit status {proc.returncode}: {stderr}")
    return proc.stdout


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A private temporary directory (0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cryo-oracle-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _gpg_home() -> Iterator[tuple[Path, dict[str, str]]]:
    """A throwaway GnuPG home and matching environment; stops its daemons afterwards."""
    _require("gpg", "gpgconf", "gpg-agent")
    base = tempfile.gettempdir()
    # The agent's socket lives in the homedir when /run/user/UID is absent; keep the
    # path far below the 108-byte sun_path limit.
    if len(base) > 60:
        base = "/tmp"
    home = Path(tempfile.mkdtemp(prefix="cryo-gpg-", dir=base))
    try:
        (home / "gpg-agent.conf").write_text(_GPG_AGENT_CONF, encoding="ascii")
        yield home, _env(home, gnupghome=home)
    finally:
        env = _env(home, gnupghome=home)
        for args in (
            ["gpgconf", "--homedir", str(home), "--kill", "all"],
            ["gpgconf", "--homedir", str(home), "--remove-socketdir"],
        ):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    env=env,
                    start_new_session=True,
                    timeout=30,
                    check=False,
                )
        shutil.rmtree(home, ignore_errors=True)


def _gpg(home: Path) -> list[str]:
    # Loopback always: gpg never starts a pinentry; without --passphrase-fd a needed
    # passphrase makes it fail at once ("Sorry, we are in batchmode").
    return [
        "gpg",
        "--homedir",
        str(home),
        "--batch",
        "--no-tty",
        "--no-greeting",
        "--pinentry-mode",
        "loopback",
    ]


@contextlib.contextmanager
def _output_guard(out: Path) -> Iterator[None]:
    """Remove ``out`` if the body raises, so a failed oracle leaves no partial file."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()
        raise


def _fingerprint(cert: Path) -> str:
    try:
        return pysequoia.Cert.from_file(str(cert)).fingerprint.lower()
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise OracleError(f"cannot parse certificate {cert}: {first}") from exc


def _uid(tool: str) -> str:
    return f"cryophile test {tool} <{tool}@{_UID_DOMAIN}>"


# --------------------------------------------------------------------------- key makers


def make_gpg_key(
    workdir: Path,
    *,
    algo: str = "cv25519",
    passphrase: str | None = None,
    armor: bool = True,
) -> KeyPair:
    """Make a key with GnuPG 2.2 in a throwaway homedir and export it into ``workdir``.

    ``algo="cv25519"``: Ed25519 primary (certify, sign) + Curve25519 ECDH subkey;
    ≈ 0.05 s.  ``algo="rsa3072"``: RSA-3072 primary + RSA-3072 encryption subkey;
    ≈ 0.6 s, sometimes several seconds (prime generation) — use sparingly.  The key never
    expires.  The encryption subkey has key flags 0x0C (transport + storage); Features
    is 0x01 (MDC only), so senders use SEIPD v1.

    Files written: ``workdir/gpg-<algo>-<fpr[:16]>.cert.{asc|pgp}`` (``gpg --export``)
    and ``….secret.{asc|pgp}`` (``gpg --export-secret-keys``), ASCII-armored iff
    ``armor``.  With a ``passphrase`` the exported secret key is protected with it
    (iterated+salted S2K with only 65536 hash bytes — fast, test keys only).

    Raises:
        ValueError: unknown ``algo``, or an empty/multi-line passphrase.
        OracleError: a gpg tool is missing or failed.
    """
    if algo not in _GPG_ALGOS:
        raise ValueError(f"algo must be one of {_GPG_ALGOS}, not {algo!r}")
    _check_passphrase(passphrase)
    tool = f"gpg-{algo}"
    if algo == "cv25519":
        key_params = (
            "Key-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\n"
            "Subkey-Type: ecdh\nSubkey-Curve: cv25519\nSubkey-Usage: encrypt\n"
        )
    else:
        key_params = (
            "Key-Type: RSA\nKey-Length: 3072\nKey-Usage: sign\n"
            "Subkey-Type: RSA\nSubkey-Length: 3072\nSubkey-Usage: encrypt\n"
        )
    params = (
        ("%no-protection\n" if passphrase is None else "")
        + key_params
        + f"Name-Real: cryophile test {tool}\nName-Email: {tool}@{_UID_DOMAIN}\n"
        + "Expire-Date: 0\n%commit\n"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    pw_fd = "--passphrase-fd {fd}"
    with _gpg_home() as (home, env):
        _run(
            [*_gpg(home), _PW, "--gen-key"],
            env=env,
            stdin=params.encode("utf-8"),
            passphrase=passphrase,
            passphrase_opt=pw_fd,
        )
        listing = _run([*_gpg(home), "--with-colons", "--list-secret-keys"], env=env)
        fprs = [
            line.split(":")[9]
            for line in listing.decode("utf-8", "replace").splitlines()
            if line.startswith("fpr:")
        ]
        if not fprs:
            raise OracleError(f"gpg made no key? --list-secret-keys said: {listing!r}")
        fpr = fprs[0].lower()  # the first fpr line belongs to the primary key
        ext = "asc" if armor else "pgp"
        cert = workdir / f"{tool}-{fpr[:16]}.cert.{ext}"
        secret = workdir / f"{tool}-{fpr[:16]}.secret.{ext}"
        armor_opt = ["--armor"] if armor else []
        _run(
            [*_gpg(home), *armor_opt, "--yes", "--output", cert, "--export", fpr],
            env=env,
        )
        _run(
            [
                *_gpg(home),
                _PW,
                *armor_opt,
                "--yes",
                "--output",
                secret,
                "--export-secret-keys",
                fpr,
            ],
            env=env,
            passphrase=passphrase,
            passphrase_opt=pw_fd,
        )
    secret.chmod(0o600)
    return KeyPair(tool=tool, cert=cert, secret=secret, passphrase=passphrase, fingerprint=fpr)


def _answer_password_prompts(argv: Sequence[str], passphrase: str, env: dict[str, str]) -> None:
    """Run ``argv`` with a pseudo-terminal as its controlling tty and answer every
    ``…password: `` prompt with ``passphrase``.

    ``sq`` 0.27 reads passwords only from ``/dev/tty``.  ``setsid --ctty --wait`` (from
    util-linux) starts a new session and makes the pty on stdin its controlling
    terminal, which avoids ``os.fork`` in a possibly multi-threaded pytest process.
    """
    _require("setsid")
    full = ["setsid", "--ctty", "--wait", *argv]
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(full, stdin=slave, stdout=slave, stderr=slave, env=env)
    except OSError as exc:
        os.close(master)
        os.close(slave)
        raise OracleError(f"{_describe(full)}: cannot run: {exc}") from exc
    os.close(slave)
    transcript = b""
    answered = 0
    deadline = time.monotonic() + _TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every slave end is closed, the child is gone
                    chunk = b""
                if not chunk:
                    break
                transcript += chunk
                while transcript.count(b"assword: ") > answered:
                    if answered >= 4:
                        raise OracleError(f"{_describe(full)}: too many prompts: {transcript!r}")
                    os.write(master, passphrase.encode("utf-8") + b"\n")
                    answered += 1
            elif proc.poll() is not None:
                break
        else:
            raise OracleError(f"{_describe(full)}: timed out; terminal said {transcript!r}")
        try:
            returncode = proc.wait(timeout=_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise OracleError(f"{_describe(full)}: did not exit: {transcript!r}") from exc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    if returncode != 0:
        text = transcript.decode("utf-8", "replace").strip()
        raise OracleError(f"{_describe(full)}: exit status {returncode}: {text}")


def make_sq_key(workdir: Path, *, passphrase: str | None = None) -> KeyPair:
    """Make a key with ``sq`` 0.27 (``sq key generate``, cipher suite cv25519).

    Ed25519 primary (certify) with authentication, signing and encryption subkeys; the
    encryption subkey is flagged for transport and storage (EtEr); Features is MDC only
    (sq 0.27 certs do *not* advertise SEIPD v2, unlike sequoia 2.x); expires in ~3 years.
    ≈ 0.02 s.

    ``sq`` 0.27 prompts for passwords on ``/dev/tty`` only (no fd/file option), so with a
    ``passphrase`` the key is generated unprotected and then protected by ``sq key
    password`` running under a pseudo-terminal whose prompts this function answers
    (S2K: iterated+salted SHA256, 65 011 712 hash bytes ≈ 0.14 s per unlock).

    Files written (both ASCII-armored): ``workdir/sq-<fpr[:16]>.cert.asc`` and
    ``….secret.asc`` (mode 0600).

    Raises:
        ValueError: an empty/multi-line passphrase.
        OracleError: ``sq`` is missing or failed.
    """
    _check_passphrase(passphrase)
    _require("sq")
    workdir.mkdir(parents=True, exist_ok=True)
    with _scratch() as tmp:
        env = _env(tmp)
        plain_key = tmp / "key.asc"
        _run(
            [
                "sq",
                "key",
                "generate",
                "--userid",
                _uid("sq"),
                "--cipher-suite",
                "cv25519",
                "--export",
                plain_key,
                "--rev-cert",
                tmp / "key.rev",
            ],
            env=env,
        )
        cert_tmp = tmp / "cert.asc"
        _run(["sq", "key", "extract-cert", "--output", cert_tmp, plain_key], env=env)
        if passphrase is None:
            secret_tmp = plain_key
        else:
            secret_tmp = tmp / "protected.asc"
            _answer_password_prompts(
                ["sq", "key", "password", "--output", str(secret_tmp), str(plain_key)],
                passphrase,
                env,
            )
        fpr = _fingerprint(cert_tmp)
        cert = workdir / f"sq-{fpr[:16]}.cert.asc"
        secret = workdir / f"sq-{fpr[:16]}.secret.asc"
        shutil.copyfile(cert_tmp, cert)
        shutil.copyfile(secret_tmp, secret)
    secret.chmod(0o600)
    return KeyPair(tool="sq", cert=cert, secret=secret, passphrase=passphrase, fingerprint=fpr)


def make_sqop_key(workdir: Path, *, passphrase: str | None = None) -> KeyPair:
    """Make a key with ``sqop generate-key`` and ``sqop extract-cert`` (SOP, sqop 0.27).

    Ed25519 primary (certify) with signing and encryption subkeys; the encryption subkey
    is flagged for transport and storage (EtEr); Features is MDC only; expires in 3
    years.  ≈ 0.02 s.  With a ``passphrase`` (given as ``--with-key-password=@FD:n``)
    the secret key uses iterated+salted SHA256 S2K with 65 011 712 hash bytes
    (≈ 0.14 s per unlock in pysequoia).

    Files written (both ASCII-armored): ``workdir/sqop-<fpr[:16]>.cert.asc`` and
    ``….secret.asc`` (mode 0600).

    Raises:
        ValueError: an empty/multi-line passphrase.
        OracleError: ``sqop`` is missing or failed.
    """
    _check_passphrase(passphrase)
    _require("sqop")
    workdir.mkdir(parents=True, exist_ok=True)
    with _scratch() as tmp:
        env = _env(tmp)
        key_bytes = _run(
            ["sqop", "generate-key", _PW, "--", _uid("sqop")],
            env=env,
            passphrase=passphrase,
            passphrase_opt="--with-key-password=@FD:{fd}",
        )
        cert_bytes = _run(["sqop", "extract-cert"], env=env, stdin=key_bytes)
        cert_tmp = tmp / "cert.asc"
        cert_tmp.write_bytes(cert_bytes)
        fpr = _fingerprint(cert_tmp)
    cert = workdir / f"sqop-{fpr[:16]}.cert.asc"
    secret = workdir / f"sqop-{fpr[:16]}.secret.asc"
    cert.write_bytes(cert_bytes)
    secret.write_bytes(key_bytes)
    secret.chmod(0o600)
    return KeyPair(tool="sqop", cert=cert, secret=secret, passphrase=passphrase, fingerprint=fpr)


# --------------------------------------------------------------------------- key histories


@dataclass(frozen=True)
class SubkeyHistory:
    """One key at two moments: while its encryption subkey was valid, and after a change.

    Attributes:
        before: the key and certificate while the encryption subkey ``subkey`` was valid
            (what a backup is made with).
        after: the same key after ``subkey`` expired or was revoked (what restores it).
        subkey: fingerprint of the original encryption subkey (lowercase hex).
        changed: when ``subkey`` was revoked, or set to expire one day later (UTC).
        new_subkey: with ``change="rotate"``, the valid encryption subkey added after
            ``subkey`` expired (gpg) or was revoked (sq); else ``None``.
    """

    before: KeyPair
    after: KeyPair
    subkey: str
    changed: datetime
    new_subkey: str | None = None


_GPG_CHANGES = ("expire", "revoke", "rotate")
# gpg --edit-key answers to revoke subkey 1: select it, revkey, "really?", reason 0 (no
# reason given), an empty description, "okay?", save.
_REVKEY_COMMANDS = "key 1\nrevkey\ny\n0\n\ny\nsave\n"


def _faked(when: datetime) -> list[str]:
    # The trailing "!" freezes gpg's clock at that instant.
    return ["--faked-system-time", when.strftime("%Y%m%dT%H%M%S") + "!"]


def make_gpg_subkey_history(
    workdir: Path, change: str, *, passphrase: str | None = None
) -> SubkeyHistory:
    """A GnuPG 2.2 key whose Curve25519 encryption subkey expired, was revoked, or was
    replaced after expiring, exported before and after the change.

    The key is made two years ago (``--faked-system-time``): an Ed25519 primary (certify,
    sign; never expires) and a cv25519 encryption subkey that never expires — ``before``.
    One year ago: ``change="expire"`` sets the subkey to expire one day later
    (``--quick-set-expire FPR 1d SUBFPR``), so it has been expired for a year;
    ``"revoke"`` revokes it (``--edit-key``: ``key 1``, ``revkey``); ``"rotate"`` expires
    it the same way and then, today, adds a new cv25519 encryption subkey
    (``--quick-add-key``). The primary key stays valid throughout. ≈ 0.2 s.

    Files written: ``workdir/gpg-<change>-<fpr[:16]>.{before,after}.{cert,secret}.pgp``
    (binary; secrets 0600, protected with ``passphrase`` when given).

    Raises:
        ValueError: unknown ``change``, or an empty/multi-line passphrase.
        OracleError: a gpg tool is missing or failed.
    """
    if change not in _GPG_CHANGES:
        raise ValueError(f"change must be one of {_GPG_CHANGES}, not {change!r}")
    _check_passphrase(passphrase)
    now = datetime.now(UTC).replace(microsecond=0)
    made, changed = now - timedelta(days=730), now - timedelta(days=365)
    tool = f"gpg-{change}"
    workdir.mkdir(parents=True, exist_ok=True)
    # An unprotected key needs an explicit empty passphrase in batch mode; an empty one
    # is no secret, so it may be on the command line.
    pw = [_PW] if passphrase is not None else ["--passphrase", ""]
    pw_fd = "--passphrase-fd {fd}"

    def gpg(home: Path, env: dict[str, str], *args: str | Path, stdin: bytes | None = None,
            ) -> bytes:
        return _run([*_gpg(home), *pw, *args], env=env, stdin=stdin, passphrase=passphrase,
                    passphrase_opt=pw_fd)

    def fingerprints(home: Path, env: dict[str, str]) -> list[str]:
        listing = _run([*_gpg(home), "--with-colons", "--list-keys"], env=env)
        return [line.split(":")[9].lower() for line in listing.decode().splitlines()
                if line.startswith("fpr:")]

    def export(home: Path, env: dict[str, str], fpr: str, moment: str) -> KeyPair:
        cert = workdir / f"{tool}-{fpr[:16]}.{moment}.cert.pgp"
        secret = workdir / f"{tool}-{fpr[:16]}.{moment}.secret.pgp"
        _run([*_gpg(home), "--yes", "--output", cert, "--export", fpr], env=env)
        gpg(home, env, "--yes", "--output", secret, "--export-secret-keys", fpr)
        secret.chmod(0o600)
        return KeyPair(tool=tool, cert=cert, secret=secret, passphrase=passphrase,
                       fingerprint=fpr)

    with _gpg_home() as (home, env):
        gpg(home, env, *_faked(made), "--quick-gen-key", _uid(tool), "ed25519", "cert,sign",
            "never")
        fpr = fingerprints(home, env)[0]
        gpg(home, env, *_faked(made), "--quick-add-key", fpr, "cv25519", "encr", "never")
        subkey = fingerprints(home, env)[1]
        before = export(home, env, fpr, "before")
        if change == "revoke":
            gpg(home, env, *_faked(changed), "--command-fd", "0", "--edit-key", fpr,
                stdin=_REVKEY_COMMANDS.encode())
        else:
            gpg(home, env, *_faked(changed), "--quick-set-expire", fpr, "1d", subkey)
        new_subkey = None
        if change == "rotate":
            gpg(home, env, "--quick-add-key", fpr, "cv25519", "encr", "never")
            new_subkey = fingerprints(home, env)[2]
        after = export(home, env, fpr, "after")
    return SubkeyHistory(before=before, after=after, subkey=subkey, changed=changed,
                         new_subkey=new_subkey)


_SQ_CHANGES = ("revoke", "rotate")


def make_sq_subkey_history(workdir: Path, change: str) -> SubkeyHistory:
    """An ``sq`` 0.27 key (:func:`make_sq_key`, unprotected) whose encryption subkey is
    then revoked, or revoked and replaced: what a user of Debian 12's ``sq`` can do.

    ``change="revoke"``: ``sq revoke subkey --certificate KEY SUBFPR retired MESSAGE``
    prints the primary key and that subkey with the revocation added (secret material
    included); ``after.secret`` is that merged into the key (``sq keyring merge``, which
    keeps the secrets). ``"rotate"`` then also generates a second key (``sq key generate``)
    and binds its encryption subkey into the first (``sq key adopt --keyring NEW --key
    NEWSUBFPR KEY``); that subkey is ``new_subkey``. ``after.cert`` is ``sq key
    extract-cert`` of ``after.secret``. sq 0.27 cannot change a subkey's expiry or add a
    new subkey of its own, so these are the changes it can make. ≈ 0.1 s.

    Raises:
        ValueError: unknown ``change``.
        OracleError: ``sq`` is missing or failed.
    """
    if change not in _SQ_CHANGES:
        raise ValueError(f"change must be one of {_SQ_CHANGES}, not {change!r}")
    before = make_sq_key(workdir / "before")
    subkey = _encryption_subkey(before.cert)
    changed = datetime.now(UTC)
    after_dir = workdir / "after"
    after_dir.mkdir(parents=True, exist_ok=True)
    new_subkey = None
    with _scratch() as tmp:
        env = _env(tmp)
        revocation = tmp / "revocation.asc"
        revocation.write_bytes(_run(["sq", "revoke", "subkey", "--certificate", before.secret,
                                     subkey, "retired", "replaced by a new subkey"], env=env))
        secret = after_dir / before.secret.name
        _run(["sq", "keyring", "merge", "--output", secret, before.secret, revocation], env=env)
        if change == "rotate":
            donor = make_sq_key(tmp / "donor")
            new_subkey = _encryption_subkey(donor.cert)
            revoked = tmp / "revoked.asc"
            secret.rename(revoked)
            _run(["sq", "key", "adopt", "--keyring", donor.secret, "--key", new_subkey,
                  "--output", secret, "--", revoked], env=env)
        secret.chmod(0o600)
        cert = after_dir / before.cert.name
        _run(["sq", "key", "extract-cert", "--output", cert, secret], env=env)
    after = KeyPair(tool="sq", cert=cert, secret=secret, passphrase=None,
                    fingerprint=before.fingerprint)
    return SubkeyHistory(before=before, after=after, subkey=subkey, changed=changed,
                         new_subkey=new_subkey)


def _encryption_subkey(cert: Path) -> str:
    """Fingerprint of the first subkey flagged for encryption in ``cert``."""
    from pysequoia.packet import PacketPile, Tag  # noqa: PLC0415

    current: str | None = None
    for packet in PacketPile.from_file(str(cert)):
        if packet.tag in (Tag.PublicSubkey, Tag.SecretSubkey):
            current = packet.fingerprint
        elif packet.tag == Tag.Signature and current is not None and packet.key_flags \
                and (packet.key_flags.storage_encryption
                     or packet.key_flags.transport_encryption):
            return current
    raise OracleError(f"{cert}: no encryption subkey")


def gpg_change_key(key: KeyPair, args: Sequence[str], workdir: Path) -> KeyPair:
    """Run ``gpg ARGS`` on ``key`` as its owner would, and export the key it leaves.

    For the fixes cryophile's messages advise (``--quick-set-expire FPR 2y SUBFPR``,
    ``--quick-add-key FPR cv25519 encr 2y``): ``key.secret`` is imported into a throwaway
    homedir, ``gpg --batch --pinentry-mode loopback [--passphrase-fd N] ARGS`` runs there
    (``--passphrase ""`` for an unprotected key), and the certificate and secret key are
    exported again, binary, as ``workdir/gpg-changed-<fpr[:16]>.{cert,secret}.pgp``.

    Raises:
        OracleError: a gpg tool is missing or failed (e.g. a command gpg does not know).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pw = [_PW] if key.passphrase is not None else ["--passphrase", ""]
    pw_fd = "--passphrase-fd {fd}"
    cert = workdir / f"gpg-changed-{key.fingerprint[:16]}.cert.pgp"
    secret = workdir / f"gpg-changed-{key.fingerprint[:16]}.secret.pgp"
    with _gpg_home() as (home, env):
        _run([*_gpg(home), "--import", key.secret], env=env)
        _run([*_gpg(home), *pw, *args], env=env, passphrase=key.passphrase,
             passphrase_opt=pw_fd)
        _run([*_gpg(home), "--yes", "--output", cert, "--export", key.fingerprint], env=env)
        _run([*_gpg(home), *pw, "--yes", "--output", secret, "--export-secret-keys",
              key.fingerprint], env=env, passphrase=key.passphrase, passphrase_opt=pw_fd)
    secret.chmod(0o600)
    return KeyPair(tool=f"{key.tool}-changed", cert=cert, secret=secret,
                   passphrase=key.passphrase, fingerprint=key.fingerprint)


def gpg_fingerprints(cert: Path) -> list[str]:
    """The fingerprints of ``cert``'s primary key and subkeys as gpg prints them.

    ``gpg --import`` into a throwaway homedir, then the ``fpr`` lines of ``gpg
    --with-colons --list-keys``: uppercase hex, primary first, subkeys in order (the
    form of ``gpg --list-keys --with-subkey-fingerprint``).

    Raises:
        OracleError: a gpg tool is missing or failed.
    """
    with _gpg_home() as (home, env):
        _run([*_gpg(home), "--import", cert], env=env)
        listing = _run([*_gpg(home), "--with-colons", "--list-keys"], env=env)
    return [line.split(":")[9] for line in listing.decode().splitlines()
            if line.startswith("fpr:")]


# --------------------------------------------------------------------------- decrypt


def gpg_decrypt(message: Path, key: KeyPair, out: Path) -> None:
    """Decrypt ``message`` (binary or armored) with GnuPG 2.2 into ``out``.

    Imports ``key.secret`` into a throwaway homedir (``--batch --import``, which needs no
    passphrase), then ``gpg --batch --pinentry-mode loopback [--passphrase-fd N]
    --decrypt``.  Works for keys of every kind made here.  GnuPG checks the MDC and
    exits non-zero on tampering.  The agent is stopped afterwards.

    Raises:
        OracleError: with gpg's stderr, e.g. a wrong passphrase
            (``public key decryption failed: Bad passphrase`` … ``No secret key``), a
            message not encrypted to ``key``, or a corrupt message; ``out`` is removed.
    """
    with _output_guard(out), _gpg_home() as (home, env):
        _run([*_gpg(home), "--import", key.secret], env=env)
        _run(
            [*_gpg(home), _PW, "--yes", "--output", out, "--decrypt", message],
            env=env,
            passphrase=key.passphrase,
            passphrase_opt="--passphrase-fd {fd}",
        )


def sqop_decrypt(message: Path, key: KeyPair, out: Path) -> None:
    """Decrypt ``message`` with ``sqop decrypt [--with-key-password=@FD:n] KEY`` into ``out``.

    Raises:
        OracleError: with sqop's stderr: exit 67 ("A KEY input is protected with a
            password and unlocking failed") for a wrong/missing passphrase, exit 29
            ("Unable to decrypt") when ``key`` is not a recipient; ``out`` is removed.
    """
    _require("sqop")
    with _output_guard(out), _scratch() as tmp:
        plain = _run(
            ["sqop", "decrypt", _PW, "--", key.secret],
            env=_env(tmp),
            stdin=message.read_bytes(),
            passphrase=key.passphrase,
            passphrase_opt="--with-key-password=@FD:{fd}",
        )
        out.write_bytes(plain)


def sq_decrypt(message: Path, key: KeyPair, out: Path) -> None:
    """Decrypt ``message`` with ``sq decrypt --recipient-key KEY`` (sq 0.27) into ``out``.

    Only for unprotected keys: sq 0.27 can read a key password only from a terminal.
    (``make_sq_key`` shows a pseudo-terminal would work, but prompt texts and retry
    behaviour of ``sq decrypt`` are not pinned down, so this oracle does not try.)
    sq withholds the last 25 MiB of output until the MDC has been checked.

    Raises:
        OracleError: ``key.passphrase`` is not ``None``; or sq failed (its stderr
            included); ``out`` is removed.
    """
    if key.passphrase is not None:
        raise OracleError(
            "sq_decrypt: sq 0.27 reads key passwords only from a terminal; "
            "use gpg_decrypt or sqop_decrypt for passphrase-protected keys"
        )
    _require("sq")
    with _output_guard(out), _scratch() as tmp:
        _run(
            ["sq", "--force", "decrypt", "--recipient-key", key.secret, "--output", out, message],
            env=_env(tmp),
        )


# --------------------------------------------------------------------------- encrypt


def gpg_encrypt(plain: Path, key: KeyPair, out: Path) -> None:
    """Encrypt ``plain`` to ``key.cert`` with GnuPG 2.2 into ``out`` (binary).

    ``gpg --batch --trust-model always --compress-algo none --recipient-file CERT
    --encrypt`` in a throwaway homedir: PKESK v3 + SEIPD v1 (tag 18) around an
    uncompressed literal data packet.

    Raises:
        OracleError: with gpg's stderr; ``out`` is removed.
    """
    with _output_guard(out), _gpg_home() as (home, env):
        _run(
            [
                *_gpg(home),
                "--trust-model",
                "always",
                "--compress-algo",
                "none",
                "--recipient-file",
                key.cert,
                "--yes",
                "--output",
                out,
                "--encrypt",
                plain,
            ],
            env=env,
        )


def sqop_encrypt(plain: Path, key: KeyPair, out: Path) -> None:
    """Encrypt ``plain`` to ``key.cert`` with ``sqop encrypt --no-armor CERT`` into ``out``.

    Output is binary: PKESK v3 + SEIPD v1 for every key kind made here.

    Raises:
        OracleError: with sqop's stderr; ``out`` is removed.
    """
    _require("sqop")
    with _output_guard(out), _scratch() as tmp:
        data = _run(
            ["sqop", "encrypt", "--no-armor", "--", key.cert],
            env=_env(tmp),
            stdin=plain.read_bytes(),
        )
        out.write_bytes(data)
