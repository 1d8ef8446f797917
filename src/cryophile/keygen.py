"""``cryophile keygen``: a storage-encryption key pair made with the OpenPGP tool the
machine has — ``sq``, ``sqop`` or GnuPG — for ``backup`` (the certificate) and
``restore`` (the secret key).

The tool makes the key; nothing here is cryptography. What this module adds:

- one command line per tool and version (Debian's ``sq`` 0.27 writes a key with
  ``--export``, sq ≥ 1.0 with ``--own-key --without-password --output``; it asks
  ``sq key generate --help`` which one it is);
- the certificate and the secret key in two files (``NAME.cert.asc`` 0644,
  ``NAME.secret.asc`` 0600, and the revocation certificate ``NAME.rev.asc``
  0600 when the tool makes one), never overwriting a file, written only once
  both are checked as cryophile will use them (:func:`load_recipients`,
  :func:`load_secret_keys`);
- a refusal to write the secret key where it must never be (:func:`refuse_place`):
  in or beside the spool of this host's configuration, or in a directory the
  backup host's keyring comes from. The backup host holds certificates only.

The secret key is made without a passphrase unless one is given (``--pass-fd``,
with sqop and gpg; sq 0.27 asks for passwords only on a terminal).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryophile.errors import AlreadyExistsError, ServiceError, StorageIOError, UsageError
from cryophile.pipeline.keys import gpg_form, load_recipients, load_secret_keys

#: The tools tried, in this order, when ``--tool`` is not given.
TOOLS = ("sq", "sqop", "gpg")
#: How long a tool may take to make a key (rsa is not used: cv25519 takes well under 1 s).
TOOL_TIMEOUT = 120.0


@dataclass(frozen=True)
class KeyPair:
    """What keygen wrote: the files, the tool, the fingerprints (gpg's form)."""

    tool: str
    certificate: Path
    secret_key: Path
    revocation: Path | None
    fingerprint: str
    encryption_subkeys: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        """``keygen --json``."""
        return {"tool": self.tool, "certificate": str(self.certificate),
                "secret_key": str(self.secret_key),
                "revocation": None if self.revocation is None else str(self.revocation),
                "fingerprint": self.fingerprint,
                "encryption_subkeys": list(self.encryption_subkeys)}


@dataclass(frozen=True)
class Generated:
    """A tool's output, before it is checked and written out."""

    certificate: bytes
    secret_key: bytes
    revocation: bytes | None


def default_userid() -> str:
    """``cryophile backups <USER@HOST>``."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
    return f"cryophile backups <{user}@{socket.gethostname()}>"


def choose_tool(wanted: str | None) -> str:
    """``wanted`` if it is installed, else the first of :data:`TOOLS` that is; ServiceError
    (69) naming what to install when none is."""
    candidates = (wanted,) if wanted else TOOLS
    for tool in candidates:
        if shutil.which(tool) is not None:
            return tool
    if wanted:
        raise ServiceError(f"--tool {wanted}: {wanted!r} is not installed (Debian: apt install "
                           f"{_PACKAGES[wanted]}), or choose another with --tool")
    raise ServiceError("no OpenPGP tool found to make a key: install one of sq, sqop, gnupg "
                       "(Debian: apt install sq | sqop | gnupg)")


_PACKAGES = {"sq": "sq", "sqop": "sqop", "gpg": "gnupg"}


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def forbidden_places(spool_root: Path, keyring_files: Iterable[Path],
                     config_file: Path | None) -> list[tuple[Path, str]]:
    """Directories where the secret key must never be written, with why: the spool, the
    directory holding it (and the embedded vaults beside it), the directories of the
    backup host's keyring files and configuration, and ``/etc/cryophile``."""
    spool = Path(os.path.realpath(spool_root))
    places = [(spool, "the spool"),
              (Path(f"{spool}-vaults"), "the embedded vaults beside the spool"),
              (spool.parent, "beside the spool")]
    places += [(Path(os.path.realpath(path)).parent, f"the directory of keyring {path}")
               for path in keyring_files]
    if config_file is not None:
        places.append((Path(os.path.realpath(config_file)).parent,
                       f"the directory of the configuration {config_file}"))
    places.append((Path("/etc/cryophile"), "the backup host's configuration directory"))
    return places


def refuse_place(output_dir: Path, places: Sequence[tuple[Path, str]]) -> None:
    """UsageError (64) when ``output_dir`` is one of ``places`` or inside one (the spool's
    parent itself only, not every directory below it)."""
    target = Path(os.path.realpath(output_dir))
    for place, why in places:
        exact_only = why == "beside the spool"
        if (target == place) if exact_only else _inside(target, place):
            raise UsageError(
                f"refusing to write the secret key in {str(output_dir)!r}: that is {why} "
                f"({place}), on the backup host, which must only ever hold the certificate; "
                "run keygen on the machine that restores (or an offline one) and give "
                "--output-dir a directory there")


def generate(tool: str, userid: str, output_dir: Path, *, passphrase: str | None = None,
             env: Mapping[str, str] | None = None) -> KeyPair:
    """Make a key pair with ``tool`` and write it into ``output_dir`` (which must exist).

    Raises ServiceError when the tool fails (its stderr in the message),
    UsageError for a passphrase with sq 0.27, AlreadyExistsError rather than
    overwrite a file, ConfigError when the result would not work with cryophile.
    """
    try:
        is_directory = output_dir.is_dir()
    except OSError as error:  # ENAMETOOLONG, ELOOP: the user's bad value
        is_directory, why = False, error.strerror
    else:
        why = "not a directory"
    if not is_directory:
        shown = str(output_dir) if len(str(output_dir)) <= 80 else str(output_dir)[:80] + "…"
        raise UsageError(f"invalid --output-dir {shown!r}: {why}")
    if not userid.strip() or not userid.isprintable():
        # A newline would add lines to gpg's parameter file (%no-protection among them).
        raise UsageError(f"invalid --userid {userid!r}: a non-empty line of printable "
                         "characters, e.g. 'backup storage key <root@host>'")
    environment = dict(env if env is not None else os.environ)
    with _private_dir(output_dir) as work:
        made = _MAKERS[tool](work, userid, passphrase, environment)
        certificate, secret = work / "cert.asc", work / "secret.asc"
        _write(certificate, made.certificate, 0o644)
        _write(secret, made.secret_key, 0o600)
        recipients = load_recipients([certificate])
        [key] = load_secret_keys([secret])
        name = f"cryophile-{gpg_form(key.fingerprint)[:16]}"
        final = {"cert": output_dir / f"{name}.cert.asc",
                 "secret": output_dir / f"{name}.secret.asc",
                 "rev": output_dir / f"{name}.rev.asc"}
        for path in final.values():
            if os.path.lexists(path):
                raise AlreadyExistsError(f"{path} already exists; refusing to overwrite it")
        revocation = None
        if made.revocation is not None:
            _write(work / "rev.asc", made.revocation, 0o600)
            _publish(work / "rev.asc", final["rev"])
            revocation = final["rev"]
        _publish(secret, final["secret"])
        _publish(certificate, final["cert"])
    return KeyPair(tool, final["cert"], final["secret"], revocation, gpg_form(key.fingerprint),
                   tuple(gpg_form(subkey) for subkey in recipients.subkeys))


@contextlib.contextmanager
def _private_dir(parent: Path) -> Iterator[Path]:
    """A 0700 scratch directory in ``parent`` (the secret key is never written elsewhere,
    except into gpg's throwaway home), removed afterwards."""
    try:
        path = Path(tempfile.mkdtemp(prefix=".cryophile-keygen-", dir=parent))
    except OSError as error:
        raise StorageIOError(f"cannot write in {str(parent)!r}: {error.strerror}") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, final: Path) -> None:
    try:
        os.link(path, final)  # never clobbers
    except FileExistsError:
        raise AlreadyExistsError(f"{final} already exists; refusing to overwrite it") from None


def _run(argv: Sequence[str | Path], env: Mapping[str, str], *, stdin: bytes | None = None,
         pass_fds: Sequence[int] = ()) -> bytes:
    try:
        completed = subprocess.run(
            [str(part) for part in argv], input=stdin if stdin is not None else b"",
            capture_output=True, env=dict(env), timeout=TOOL_TIMEOUT, check=False,
            pass_fds=tuple(pass_fds))
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServiceError(f"{argv[0]} failed: {error}") from None
    if completed.returncode != 0:
        said = completed.stderr.decode(errors="replace").strip().splitlines()
        raise ServiceError(f"{' '.join(map(str, argv[:3]))} failed (exit "
                           f"{completed.returncode}): {said[-1] if said else 'no message'}")
    return completed.stdout


@contextlib.contextmanager
def _secret_fd(passphrase: str) -> Iterator[int]:
    """A pipe's read end holding ``passphrase`` and a newline, for a child to read."""
    read, write = os.pipe()
    try:
        os.write(write, passphrase.encode() + b"\n")
        os.close(write)
        write = -1
        yield read
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def _sq(work: Path, userid: str, passphrase: str | None, env: dict[str, str]) -> Generated:
    env.setdefault("SEQUOIA_HOME", str(work / "sequoia"))
    help_text = _run(["sq", "key", "generate", "--help"], env).decode(errors="replace")
    key, cert, rev = work / "sq.key", work / "sq.cert", work / "sq.rev"
    if "--export" in help_text:  # sq 0.x (Debian 12: 0.27)
        if passphrase is not None:
            raise UsageError("sq 0.27 asks for a key's password on a terminal only: run "
                             "keygen without --pass-fd and protect the key afterwards with "
                             "'sq key password', or use --tool sqop or --tool gpg")
        _run(["sq", "key", "generate", "--userid", userid, "--cipher-suite", "cv25519",
              "--export", key, "--rev-cert", rev], env)
        _run(["sq", "key", "extract-cert", "--output", cert, key], env)
    else:  # sq >= 1.0
        password: list[str | Path] = ["--without-password"]
        if passphrase is not None:
            secret_file = work / "password"
            _write(secret_file, passphrase.encode(), 0o600)
            password = ["--new-password-file", secret_file]
        _run(["sq", "key", "generate", "--own-key", *password, "--userid", userid,
              "--cipher-suite", "cv25519", "--output", key, "--rev-cert", rev], env)
        _run(["sq", "toolbox", "extract-cert", "--output", cert, key], env)
    return Generated(cert.read_bytes(), key.read_bytes(),
                     rev.read_bytes() if rev.exists() else None)


def _sqop(work: Path, userid: str, passphrase: str | None, env: dict[str, str]) -> Generated:
    del work
    if passphrase is None:
        key = _run(["sqop", "generate-key", "--", userid], env)
    else:
        with _secret_fd(passphrase) as fd:
            key = _run(["sqop", "generate-key", f"--with-key-password=@FD:{fd}", "--", userid],
                       env, pass_fds=[fd])
    cert = _run(["sqop", "extract-cert"], env, stdin=key)
    return Generated(cert, key, None)


def _gpg(work: Path, userid: str, passphrase: str | None, env: dict[str, str]) -> Generated:
    del work
    # The agent's socket lives in the home when /run/user/UID is absent: keep the path
    # short (sun_path holds 108 bytes).
    base = tempfile.gettempdir()
    home = Path(tempfile.mkdtemp(prefix="cryophile-gpg-", dir=base if len(base) < 60 else "/tmp"))
    env = {**env, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback"]
    params = ("Key-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\n"
              "Subkey-Type: ecdh\nSubkey-Curve: cv25519\nSubkey-Usage: encrypt\n"
              f"Name-Real: {userid}\nExpire-Date: 0\n"
              + ("%no-protection\n" if passphrase is None else f"Passphrase: {passphrase}\n")
              + "%commit\n")
    try:
        _run([*gpg, "--gen-key"], env, stdin=params.encode())
        listing = _run([*gpg, "--with-colons", "--list-secret-keys"], env).decode()
        fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                           if line.startswith("fpr:"))
        cert = _run([*gpg, "--armor", "--export", fingerprint], env)
        if passphrase is None:
            secret = _run([*gpg, "--armor", "--export-secret-keys", fingerprint], env)
        else:
            with _secret_fd(passphrase) as fd:
                secret = _run([*gpg, "--passphrase-fd", str(fd), "--armor",
                               "--export-secret-keys", fingerprint], env, pass_fds=[fd])
        revocation = home / "openpgp-revocs.d" / f"{fingerprint}.rev"
        return Generated(cert, secret,
                         revocation.read_bytes() if revocation.exists() else None)
    finally:
        for command in (["--kill", "all"], ["--remove-socketdir"]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["gpgconf", "--homedir", str(home), *command],
                               capture_output=True, env=env, timeout=30, check=False)
        shutil.rmtree(home, ignore_errors=True)


_MAKERS = {"sq": _sq, "sqop": _sqop, "gpg": _gpg}
