"""Tampering after upload, and signed manifests (``backup --sign-key``, ``--signed-by``).

Everything runs the real ``cryophile`` in subprocesses, against the embedded
directory vault and a real SeaweedFS S3 server, with keys made by the real
``gpg`` and ``sq``; signatures are checked by the real ``gpg --verify`` and
``sqop verify``.

1. Fragments damaged in the vault (a flipped byte, a truncated object, a
   missing one, a swapped pair, one fragment copied over another): restore
   refuses with exit 65 naming the fragment and what is wrong, releases no
   wrong byte (``-o`` leaves no file; stdout carries at most a true prefix), and
   ``verify --download`` names every bad fragment with exit 65.
2. The forged backup: someone who can write to the vault encrypts a stream of
   their own to the same public key and rewrites the manifest to match. Without
   a signature restore accepts it (the honest limit, README "What a backup
   proves"); with ``--signed-by`` it is refused before any thaw or output —
   unsigned, signed by another key, or edited after signing.
3. The good signed backup restores byte-identical through both vaults, its
   ``chunk.0.sig`` verifies with gpg and sqop, and bad ``--sign-key`` files are
   refused before a byte of input is read.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import oracles
from e2e.test_list_verify_status import configure_s3_vault, vault_dir, wipe_spool
from s3server import S3Bucket
from stress import full
from support.cli import VAULT, Cli, Result
from support.files import snapshot

PREFIX = "hosts/db1"
MiB = 1 << 20
DAMAGES = ["flipped", "truncated", "missing", "swapped", "duplicated"]
# Every damage on the directory vault in every run; on SeaweedFS (a server round trip
# per step) two of them in a normal run and all five under scripts/stress.
TABLE = [pytest.param("dir", kind, id=f"dir-{kind}") for kind in DAMAGES] + [
    pytest.param("seaweedfs", kind, id=f"seaweedfs-{kind}", marks=pytest.mark.stress)
    for kind in DAMAGES if full() or kind in ("flipped", "swapped")]


# -- signing keys made by the real tools ----------------------------------------------------


@dataclass(frozen=True)
class SigningPair:
    """A signing-only key: ``secret`` for the backup host, ``cert`` for restore."""

    tool: str
    secret: Path
    cert: Path
    fingerprint: str
    passphrase: str | None = None


def make_gpg_signing_key(workdir: Path, passphrase: str | None = None) -> SigningPair:
    """``gpg --quick-gen-key UID ed25519 sign never``: an Ed25519 key that can only sign."""
    workdir.mkdir(parents=True, exist_ok=True)
    gpg_pw = "--passphrase-fd {fd}"
    no_pw = ["--passphrase", ""] if passphrase is None else []
    uid = f"cryophile signer <signer-{workdir.name}@cryophile.invalid>"
    with oracles._gpg_home() as (home, env):
        oracles._run([*oracles._gpg(home), oracles._PW, *no_pw, "--quick-gen-key", uid,
                      "ed25519", "sign", "never"], env=env, passphrase=passphrase,
                     passphrase_opt=gpg_pw)
        secret, cert = workdir / "sign.key", workdir / "sign.cert"
        oracles._run([*oracles._gpg(home), oracles._PW, "--yes", "--output", secret,
                      "--export-secret-keys", uid], env=env, passphrase=passphrase,
                     passphrase_opt=gpg_pw)
        oracles._run([*oracles._gpg(home), "--yes", "--output", cert, "--export", uid], env=env)
    return SigningPair("gpg", secret, cert, oracles._fingerprint(cert), passphrase)


def make_sq_key(workdir: Path, *capabilities: str) -> SigningPair:
    """``sq key generate`` with ``capabilities`` (e.g. ``--cannot-encrypt``), exported."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret, cert = workdir / "key.asc", workdir / "cert.asc"
    env = oracles._env(workdir)
    oracles._run(["sq", "key", "generate", "--userid", "cryophile sq <sq@cryophile.invalid>",
                  *capabilities, "--export", secret, "--rev-cert", workdir / "key.rev"], env=env)
    oracles._run(["sq", "key", "extract-cert", "--output", cert, secret], env=env)
    return SigningPair("sq", secret, cert, oracles._fingerprint(cert))


@pytest.fixture(scope="module")
def gpg_signer(tmp_path_factory: pytest.TempPathFactory) -> SigningPair:
    return make_gpg_signing_key(tmp_path_factory.mktemp("gpg-signer"))


@pytest.fixture(scope="module")
def sq_signer(tmp_path_factory: pytest.TempPathFactory) -> SigningPair:
    return make_sq_key(tmp_path_factory.mktemp("sq-signer"), "--cannot-encrypt",
                       "--cannot-authenticate")


@pytest.fixture(scope="module")
def attacker_signer(tmp_path_factory: pytest.TempPathFactory) -> SigningPair:
    return make_gpg_signing_key(tmp_path_factory.mktemp("attacker"))


def gpg_verify(signature: Path, data: Path, signer: SigningPair) -> str:
    """The real ``gpg --verify SIG DATA`` with only ``signer``'s certificate imported;
    returns the primary fingerprint from its VALIDSIG status line."""
    with oracles._gpg_home() as (home, env):
        oracles._run([*oracles._gpg(home), "--import", signer.cert], env=env)
        status = oracles._run([*oracles._gpg(home), "--status-fd", "1", "--verify", signature,
                               data], env=env).decode(errors="replace")
    match = re.search(r"^\[GNUPG:\] VALIDSIG \S+ .* (\S+)$", status, re.M)
    assert match is not None, status
    return match.group(1).lower()


def sqop_verify(signature: Path, data: Path, signer: SigningPair) -> str:
    """The real ``sqop verify SIG CERT < DATA``; returns the primary fingerprint it names."""
    out = oracles._run(["sqop", "verify", signature, signer.cert], env=oracles._env(data.parent),
                       stdin=data.read_bytes()).decode()
    return out.split()[2].lower()


# -- vaults as the tests see them: objects to read, damage and replace ------------------------


class Objects:
    """A backup's objects in a vault, by name (``chunk.N``, ``chunk.0.sig``)."""

    env: dict[str, str] | None = None

    def get(self, name: str) -> bytes:
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> None:
        """Replace an object as someone with write access would."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def names(self) -> set[str]:
        raise NotImplementedError


class DirObjects(Objects):
    """The embedded directory vault. Damage keeps the vault's sidecar records (bit rot,
    an operator's ``cp``); a forger (``forged=True``) removes them, so the records agree."""

    def __init__(self, cli: Cli, ulid: str) -> None:
        self.root = vault_dir(cli)
        self.key_prefix = f"{PREFIX}/{ulid}"
        self.forged = False

    def get(self, name: str) -> bytes:
        return (self.root / self.key_prefix / name).read_bytes()

    def put(self, name: str, data: bytes) -> None:
        (self.root / self.key_prefix / name).write_bytes(data)
        if self.forged:
            (self.root / ".cryophile" / "meta" / self.key_prefix / f"{name}.json").unlink(
                missing_ok=True)

    def delete(self, name: str) -> None:
        (self.root / self.key_prefix / name).unlink()

    def names(self) -> set[str]:
        directory = self.root / self.key_prefix
        return {path.name for path in directory.iterdir()} if directory.exists() else set()


class S3Objects(Objects):
    """A bucket on SeaweedFS. Objects are rewritten with checksums that match their new
    content: the vault's own records agree, only the manifest can tell."""

    def __init__(self, bucket: S3Bucket, env: dict[str, str], ulid: str) -> None:
        self.client = bucket.endpoint.client()
        self.bucket = bucket.name
        self.env = env
        self.key_prefix = f"{PREFIX}/{ulid}"

    def get(self, name: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket,
                                             Key=f"{self.key_prefix}/{name}")["Body"].read()
        return body

    def put(self, name: str, data: bytes) -> None:
        digest = hashlib.sha256(data).digest()
        self.client.put_object(Bucket=self.bucket, Key=f"{self.key_prefix}/{name}", Body=data,
                               Metadata={"sha256": digest.hex()}, ChecksumAlgorithm="SHA256",
                               ChecksumSHA256=base64.b64encode(digest).decode())

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.key_prefix}/{name}")

    def names(self) -> set[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.key_prefix}/")
        return {entry["Key"].rsplit("/", 1)[1] for entry in listed.get("Contents", [])}


def damage(objects: Objects, kind: str) -> list[int]:
    """Damage the backup's fragments in the vault; return the fragments now wrong."""
    if kind == "flipped":
        content = bytearray(objects.get("chunk.2"))
        content[len(content) // 3] ^= 0x20
        objects.put("chunk.2", bytes(content))
        return [2]
    if kind == "truncated":
        objects.put("chunk.2", objects.get("chunk.2")[: 3 * MiB])
        return [2]
    if kind == "missing":
        objects.delete("chunk.2")
        return [2]
    if kind == "swapped":
        first, second = objects.get("chunk.1"), objects.get("chunk.2")
        objects.put("chunk.1", second)
        objects.put("chunk.2", first)
        return [1, 2]
    assert kind == "duplicated"
    objects.put("chunk.2", objects.get("chunk.1"))
    return [2]


@dataclass
class Setup:
    """A frozen backup and the means to reach its vault."""

    cli: Cli
    ulid: str
    data: bytes
    objects: Objects
    freeze_log: str

    @property
    def env(self) -> dict[str, str] | None:
        return self.objects.env

    def run(self, args: list[str | os.PathLike[str]], **kwargs: Any) -> Result:
        return self.cli.run(args, env=self.env, **kwargs)

    def restore(self, key: oracles.KeyPair, *extra: str | os.PathLike[str]) -> Result:
        return self.run(["restore", "-v", VAULT, "-p", PREFIX, "-u", self.ulid, "-k",
                         key.secret, "--thaw", "--poll", "0.05", "--timeout", "120", *extra])

    def verify(self, *extra: str | os.PathLike[str]) -> Result:
        return self.run(["verify", "-v", VAULT, "-p", PREFIX, "-u", self.ulid, *extra])


def frozen_backup(cli: Cli, key: oracles.KeyPair, kind: str, request: pytest.FixtureRequest,
                  tmp_path: Path, data: bytes, *extra: str) -> Setup:
    """Back ``data`` up (5 MiB fragments, no compression), freeze it into a ``kind``
    vault and wipe the spool: what is left is the vault alone."""
    env = None
    if kind == "seaweedfs":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        env = configure_s3_vault(cli, bucket, tmp_path, "STANDARD")
    ulid = cli.backup(key, data, "-C", "none", *extra)
    frozen = cli.run(["freeze", "--once"], env=env)
    assert frozen.returncode == 0, frozen.stderr
    wipe_spool(cli)
    objects: Objects = (DirObjects(cli, ulid) if env is None
                        else S3Objects(request.getfixturevalue("s3_bucket"), env, ulid))
    return Setup(cli, ulid, data, objects, frozen.stderr)


def queues_empty(cli: Cli) -> bool:
    """No file anywhere in the spool: nothing was requested, downloaded or left behind."""
    return not [path for path in cli.spool.rglob("*") if path.is_file()]


# -- 1. fragments damaged after upload --------------------------------------------------------


@pytest.mark.parametrize(("vault_kind", "kind"), TABLE)
def test_damaged_fragments_are_refused_and_named(
        cli: Cli, gpg_key: oracles.KeyPair, vault_kind: str, kind: str,
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    data = random.Random(kind).randbytes(12 * MiB)  # three fragments: 5 + 5 + 2 MiB
    setup = frozen_backup(cli, gpg_key, vault_kind, request, tmp_path, data)
    bad = damage(setup.objects, kind)
    # What is wrong, as both verify and restore say it.
    problem = {"missing": "missing", "truncated": f"{3 * MiB} bytes"}.get(kind, "SHA-256")

    # verify --download names every bad fragment (and no good one), exit 65.
    checked = setup.verify("--download")
    assert checked.returncode == 65, checked.stdout + checked.stderr.encode()
    report = checked.stdout.decode()
    assert f"{VAULT}/{PREFIX}/{setup.ulid}: DAMAGED" in report
    for index in (1, 2, 3):
        named = f"fragment {index} ({PREFIX}/{setup.ulid}/chunk.{index})" in report
        assert named == (index in bad), report
    assert problem in report

    # restore -o: refused, naming the first bad fragment and what is wrong; no file at all.
    output = tmp_path / "restored.bin"
    refused = setup.restore(gpg_key, "-o", output)
    assert refused.returncode == 65, refused.stderr
    assert f"fragment {bad[0]}" in refused.stderr
    assert problem in refused.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".restored", "restored"))]

    # restore to stdout: refused again; whatever came out is a true prefix of the data.
    again = setup.restore(gpg_key)
    assert again.returncode == 65, again.stderr
    assert f"fragment {bad[0]}" in again.stderr
    assert data.startswith(again.stdout)
    if again.stdout:
        assert "the output is incomplete" in again.stderr


# -- 2. the forged backup ----------------------------------------------------------------------


def forge(setup: Setup, victim: oracles.KeyPair, tmp_path: Path, payload: bytes) -> None:
    """Replace the backup with ``payload``, encrypted by the real gpg to the victim's
    *public* key, and rewrite the manifest's fragment list to match, as anyone with
    write access to the vault and the certificate could."""
    public_only = dataclasses.replace(victim, secret=tmp_path / "no-secret-key-here")
    plain, message = tmp_path / "payload", tmp_path / "payload.gpg"
    plain.write_bytes(payload)
    oracles.gpg_encrypt(plain, public_only, message)
    ciphertext = message.read_bytes()
    manifest = json.loads(setup.objects.get("chunk.0"))
    size = manifest["fragment_size"]
    pieces = [ciphertext[at:at + size] for at in range(0, len(ciphertext), size)]
    for index in range(1, len(manifest["fragments"]) + 1):
        setup.objects.delete(f"chunk.{index}")
    for index, piece in enumerate(pieces, start=1):
        setup.objects.put(f"chunk.{index}", piece)
    manifest["compression"] = "none"
    manifest["fragments"] = [{"index": index, "size": len(piece),
                              "sha256": hashlib.sha256(piece).hexdigest()}
                             for index, piece in enumerate(pieces, start=1)]
    setup.objects.put("chunk.0", json.dumps(manifest, indent=1).encode() + b"\n")


def test_unsigned_manifest_is_forgeable_signed_one_is_not(
        cli: Cli, gpg_key: oracles.KeyPair, gpg_signer: SigningPair,
        attacker_signer: SigningPair, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    data = random.Random(2).randbytes(7 * MiB)
    setup = frozen_backup(cli, gpg_key, "dir", request, tmp_path, data, "--sign-key",
                          str(gpg_signer.secret))
    assert isinstance(setup.objects, DirObjects)
    setup.objects.forged = True
    genuine_signature = setup.objects.get("chunk.0.sig")
    payload = b"the attacker's stream, not yours\n" * 1000
    forge(setup, gpg_key, tmp_path, payload)

    # The honest limit: without --signed-by the forgery is healthy, even decrypted by
    # verify -k (the OpenPGP integrity check passes: the message is intact, just not
    # ours), and restores.
    decrypted = setup.verify("--download", "-k", gpg_key.secret)
    assert decrypted.returncode == 0, decrypted.stdout
    assert f"decrypted and decompressed: {len(payload)} bytes" in decrypted.stdout.decode()
    accepted = setup.restore(gpg_key)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == payload
    wipe_spool(cli)

    def refused(*expected: str) -> None:
        """--signed-by refuses before filing a thaw or writing a byte; so does verify."""
        before = snapshot(vault_dir(cli))
        result = setup.restore(gpg_key, "--signed-by", gpg_signer.cert)
        assert result.returncode == 65, result.stderr
        for text in expected:
            assert text in result.stderr
        assert f"backup {VAULT}/{PREFIX}/{setup.ulid}" in result.stderr
        assert result.stdout == b""
        assert queues_empty(cli)
        assert snapshot(vault_dir(cli)) == before
        checked = setup.verify("--signed-by", gpg_signer.cert)
        assert checked.returncode == 65
        assert f"manifest signature ({PREFIX}/{setup.ulid}/chunk.0.sig)" in (
            checked.stdout.decode())

    # The genuine signature, but over the manifest before the forger edited it: the real
    # gpg and sqop say so too, for recovery without cryophile.
    forged, signature = tmp_path / "chunk.0", tmp_path / "chunk.0.sig"
    forged.write_bytes(setup.objects.get("chunk.0"))
    signature.write_bytes(genuine_signature)
    for check in (gpg_verify, sqop_verify):
        with pytest.raises(oracles.OracleError, match=r"BAD signature|No acceptable signatures"):
            check(signature, forged, gpg_signer)
    refused(f"does not verify against {gpg_signer.fingerprint} (from {gpg_signer.cert})",
            f"it was made by key {gpg_signer.fingerprint}", "changed after signing")
    # No signature at all.
    setup.objects.delete("chunk.0.sig")
    refused("no manifest signature (chunk.0.sig), but one from "
            f"{gpg_signer.fingerprint} (from {gpg_signer.cert}) is required")
    dry = setup.run(["restore", "-v", VAULT, "-p", PREFIX, "-u", setup.ulid, "--dry-run",
                     "--signed-by", gpg_signer.cert])
    assert dry.returncode == 65, dry.stderr
    assert dry.stdout == b""
    # The forger signs the forged manifest with a key of their own.
    forged_manifest = tmp_path / "forged-chunk.0"
    forged_manifest.write_bytes(setup.objects.get("chunk.0"))
    setup.objects.put("chunk.0.sig", sign_with(attacker_signer, forged_manifest.read_bytes()))
    refused(f"it was made by key {attacker_signer.fingerprint}")
    # Junk too large to be a signature is not even downloaded.
    setup.objects.put("chunk.0.sig", os.urandom(100_000))
    junk = setup.restore(gpg_key, "--signed-by", gpg_signer.cert)
    assert junk.returncode == 65, junk.stderr
    assert f"{PREFIX}/{setup.ulid}/chunk.0.sig is 100000 bytes: not a signature" in junk.stderr
    assert queues_empty(cli)
    setup.objects.put("chunk.0.sig", sign_with(attacker_signer, forged_manifest.read_bytes()))
    # The signed_by setting in the configuration does the same as --signed-by.
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'signed_by = "{gpg_signer.cert}"\n')
    by_config = setup.restore(gpg_key)
    assert by_config.returncode == 65
    assert f"made by key {attacker_signer.fingerprint}" in by_config.stderr
    # Put the genuine backup's signature back: the forged manifest still does not match it.
    setup.objects.put("chunk.0.sig", genuine_signature)
    assert setup.restore(gpg_key).returncode == 65
    assert queues_empty(cli)


def sign_with(signer: SigningPair, data: bytes) -> bytes:
    """A detached signature by the real gpg (the forger's own tool and key)."""
    with oracles._gpg_home() as (home, env):
        oracles._run([*oracles._gpg(home), "--import", signer.secret], env=env)
        signature: bytes = oracles._run([*oracles._gpg(home), "--detach-sign", "--output", "-"],
                                        env=env, stdin=data)
    return signature


# -- 3. the good signed backup ----------------------------------------------------------------


def test_signed_backup_restores_through_the_directory_vault_and_prunes_cleanly(
        cli: Cli, gpg_key: oracles.KeyPair, gpg_signer: SigningPair,
        request: pytest.FixtureRequest, tmp_path: Path, tar_stream: bytes) -> None:
    setup = frozen_backup(cli, gpg_key, "dir", request, tmp_path, tar_stream, "--sign-key",
                          str(gpg_signer.secret))
    assert setup.objects.names() == {"chunk.0", "chunk.0.sig", "chunk.1"}
    uploads = re.findall(r"uploaded \S+/(chunk\.\S+) ", setup.freeze_log)
    assert uploads[-2:] == ["chunk.0.sig", "chunk.0"], setup.freeze_log  # the manifest last
    objects = vault_dir(cli) / PREFIX / setup.ulid
    assert gpg_verify(objects / "chunk.0.sig", objects / "chunk.0", gpg_signer) == (
        gpg_signer.fingerprint)
    assert sqop_verify(objects / "chunk.0.sig", objects / "chunk.0", gpg_signer) == (
        gpg_signer.fingerprint)

    checked = setup.verify("--download", "--signed-by", gpg_signer.cert)
    assert checked.returncode == 0, checked.stdout
    assert f"manifest signed by {gpg_signer.fingerprint}" in checked.stdout.decode()
    output = tmp_path / "restored.tar"
    restored = setup.restore(gpg_key, "--signed-by", gpg_signer.cert, "-o", output)
    assert restored.returncode == 0, restored.stderr
    assert output.read_bytes() == tar_stream
    # Signed backups restore without --signed-by as well, and list as usual.
    assert setup.restore(gpg_key).stdout == tar_stream
    listed = json.loads(cli.run(["list", "--json", "-v", VAULT]).stdout)
    assert [(entry["ulid"], entry["state"]) for entry in listed] == [(setup.ulid, "frozen")]

    # Prune removes a signed backup completely, signature included.
    newer = cli.backup(gpg_key, b"newer", "--sign-key", str(gpg_signer.secret))
    assert cli.run(["freeze", "--once"]).returncode == 0
    pruned = cli.run(["prune", "-v", VAULT, "--keep-last", "1"])
    assert pruned.returncode == 0, pruned.stderr
    assert not objects.exists()
    assert {path.name for path in (vault_dir(cli) / PREFIX / newer).iterdir()} == {
        "chunk.0", "chunk.0.sig", "chunk.1"}


def test_signed_backup_restores_through_seaweedfs_via_freeze_and_thaw(
        cli: Cli, sq_key: oracles.KeyPair, sq_signer: SigningPair,
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(11 * MiB)
    setup = frozen_backup(cli, sq_key, "seaweedfs", request, tmp_path, data, "--sign-key",
                          str(sq_signer.secret))
    assert setup.objects.names() == {"chunk.0", "chunk.0.sig", "chunk.1", "chunk.2", "chunk.3"}
    (tmp_path / "chunk.0").write_bytes(setup.objects.get("chunk.0"))
    (tmp_path / "chunk.0.sig").write_bytes(setup.objects.get("chunk.0.sig"))
    for check in (gpg_verify, sqop_verify):
        assert check(tmp_path / "chunk.0.sig", tmp_path / "chunk.0", sq_signer) == (
            sq_signer.fingerprint)
    # The thaw daemon brings the signature along; then restore checks it, offline.
    request_filed = setup.run(["restore", "-v", VAULT, "-p", PREFIX, "-u", setup.ulid, "-k",
                               sq_key.secret, "--signed-by", sq_signer.cert, "--no-thaw",
                               "--timeout", "0"])
    assert request_filed.returncode == 75, request_filed.stderr
    assert setup.run(["thaw", "--once"]).returncode == 0
    restore_dir = cli.restore_dir(setup.ulid)
    assert (restore_dir / "chunk.0.sig").read_bytes() == setup.objects.get("chunk.0.sig")
    restored = setup.run(["restore", "-v", VAULT, "-p", PREFIX, "-u", setup.ulid, "-k",
                          sq_key.secret, "--signed-by", sq_signer.cert])
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == data
    assert "ignoring" not in restored.stderr  # chunk.0.sig is not taken for a stray fragment
    checked = setup.verify("--signed-by", sq_signer.cert)
    assert checked.returncode == 0, checked.stdout


# -- --sign-key refusals, before any input is read ---------------------------------------------


@pytest.fixture(scope="module")
def protected_signer(tmp_path_factory: pytest.TempPathFactory) -> SigningPair:
    return make_gpg_signing_key(tmp_path_factory.mktemp("protected-signer"), "sign here")


def backup_reading_nothing(cli: Cli, key: oracles.KeyPair, *extra: str | os.PathLike[str],
                           env: dict[str, str] | None = None,
                           pass_fds: tuple[int, ...] = ()) -> tuple[Result, bytes]:
    """Run a backup with stdin a pipe holding data; return the result and what the
    backup left unread in the pipe."""
    payload = b"input that must not be read\n" * 100
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, payload)
        os.close(write_fd)
        result = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", key.cert, *extra],
                         stdin=read_fd, env=env, pass_fds=pass_fds)
        fcntl.fcntl(read_fd, fcntl.F_SETFL, os.O_NONBLOCK)
        left = os.read(read_fd, len(payload) + 1)
    finally:
        os.close(read_fd)
    assert left == payload or result.returncode == 0
    return result, left


@pytest.fixture(scope="module")
def encryption_only(tmp_path_factory: pytest.TempPathFactory) -> SigningPair:
    return make_sq_key(tmp_path_factory.mktemp("encryption-only"), "--cannot-sign",
                       "--cannot-authenticate")


@pytest.mark.parametrize("case", ["certificate", "cannot-sign", "missing", "not-openpgp",
                                  "no-passphrase", "wrong-passphrase"])
def test_bad_sign_key_is_refused_before_reading_input(
        cli: Cli, gpg_key: oracles.KeyPair, gpg_signer: SigningPair,
        protected_signer: SigningPair, encryption_only: SigningPair, tmp_path: Path,
        case: str) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a key\n")
    wrong = tmp_path / "wrong-passphrase"
    wrong.write_text("not it\n")
    askpass_fails = {"CRYOPHILE_ASKPASS": "/bin/false"}
    sign_key, code, message, env = {
        "certificate": (gpg_signer.cert, 78, "holds no secret key (only a certificate)", None),
        "cannot-sign": (encryption_only.secret, 78, "has no signing-capable key", None),
        "missing": (tmp_path / "absent.key", 66, "does not exist", None),
        "not-openpgp": (garbage, 78, "is not OpenPGP key data", None),
        "no-passphrase": (protected_signer.secret, 77, "no passphrase", askpass_fails),
        "wrong-passphrase": (protected_signer.secret, 77, "wrong passphrase for signing key",
                             None),
    }[case]
    extra: list[str | os.PathLike[str]] = ["--sign-key", sign_key]
    fd = os.open(wrong, os.O_RDONLY)
    try:
        if case == "wrong-passphrase":
            extra += ["--sign-pass-fd", str(fd)]
        result, _ = backup_reading_nothing(cli, gpg_key, *extra, env=env, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert str(sign_key) in result.stderr or protected_signer.fingerprint in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert queues_empty(cli)


def test_protected_sign_key_and_the_sign_key_setting(
        cli: Cli, gpg_key: oracles.KeyPair, protected_signer: SigningPair,
        gpg_signer: SigningPair, tmp_path: Path) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("sign here\n")
    fd = os.open(passphrase, os.O_RDONLY)
    try:
        result = cli.run(["backup", "-v", VAULT, "-p", PREFIX, "-k", gpg_key.cert, "--json",
                          "--sign-key", protected_signer.secret, "--sign-pass-fd", str(fd)],
                         stdin=b"signed with a protected key", pass_fds=(fd,))
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    ulid = json.loads(result.stdout)["ulid"]
    queued = cli.freeze_dir(ulid)
    assert gpg_verify(queued / "chunk.0.sig", queued / "chunk.0", protected_signer) == (
        protected_signer.fingerprint)
    # sign_key in the configuration, relative to the file: every backup is signed.
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    (config.parent / "host-sign.key").write_bytes(gpg_signer.secret.read_bytes())
    config.write_text('sign_key = "host-sign.key"\n')
    second = cli.backup(gpg_key, b"signed by the configured key")
    queued = cli.freeze_dir(second)
    assert sqop_verify(queued / "chunk.0.sig", queued / "chunk.0", gpg_signer) == (
        gpg_signer.fingerprint)


def test_the_manifest_in_the_restore_queue_is_checked_before_output(
        cli: Cli, gpg_key: oracles.KeyPair, gpg_signer: SigningPair) -> None:
    """The manifest restore actually uses is checked, not only the vault's: one changed
    in the restore queue (after a thaw, or copied in by hand) is refused before output."""
    data = b"local restore " * 1000
    ulid = cli.backup(gpg_key, data, "--sign-key", str(gpg_signer.secret))
    staged = cli.stage_for_restore(ulid)
    args: list[str | os.PathLike[str]] = ["restore", "-v", VAULT, "-p", PREFIX, "-u", ulid,
                                          "-k", gpg_key.secret, "--signed-by", gpg_signer.cert,
                                          "--keep"]
    good = cli.run(args)
    assert good.returncode == 0, good.stderr
    assert good.stdout == data
    manifest = json.loads((staged / "chunk.0").read_bytes())
    manifest["compression"] = "lz4" if manifest["compression"] != "lz4" else "none"
    (staged / "chunk.0").unlink()  # a hard link to the freeze queue's copy: replace it
    (staged / "chunk.0").write_bytes(json.dumps(manifest, indent=1).encode() + b"\n")
    changed = cli.run(args)
    assert changed.returncode == 65, changed.stderr
    assert "does not verify against" in changed.stderr
    assert changed.stdout == b""
    (staged / "chunk.0.sig").unlink()
    unsigned = cli.run(args)
    assert unsigned.returncode == 65, unsigned.stderr
    assert "no manifest signature (chunk.0.sig)" in unsigned.stderr
    assert unsigned.stdout == b""
