"""Where a secret key's passphrase comes from, in order:

1. ``--pass-fd N``: the first line read from file descriptor N;
2. the program named by ``CRYOPHILE_ASKPASS`` (called with a prompt, like
   ssh-askpass; its first line of output);
3. the controlling terminal (``/dev/tty``), without echo.

Never from argv or the environment: both are visible to other users. Asked
only when a key turns out to be protected.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
from collections.abc import Callable, Mapping

from cryophile.errors import KeyAccessError, UsageError
from cryophile.pipeline.keys import SecretKey, gpg_form

MAX_PASSPHRASE_BYTES = 64 * 1024


def read_first_line(fd: int) -> str:
    """Read up to the first newline (or EOF) from ``fd``; strip the line ending."""
    data = bytearray()
    try:
        while len(data) < MAX_PASSPHRASE_BYTES:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data.extend(chunk)
            if b"\n" in chunk:
                break
    except OSError as error:
        raise UsageError(f"cannot read the passphrase from --pass-fd {fd}: "
                         f"{error.strerror}") from None
    line = bytes(data).split(b"\n", 1)[0].removesuffix(b"\r")
    return line.decode("utf-8", errors="surrogateescape")


#: How long a CRYOPHILE_ASKPASS program may take to answer when no --timeout is given.
ASKPASS_TIMEOUT = 600.0


def passphrase_source(pass_fd: int | None, env: Mapping[str, str], *,
                      timeout: float | None = None) -> Callable[[SecretKey], str]:
    """A callable that returns the passphrase for a key, from the first source that applies.

    ``timeout`` bounds a ``CRYOPHILE_ASKPASS`` program that never answers
    (default :data:`ASKPASS_TIMEOUT`).
    """
    cache: list[str] = []

    def ask(key: SecretKey) -> str:
        if cache:
            return cache[0]
        prompt = f"Passphrase for OpenPGP key {gpg_form(key.fingerprint)}: "
        if pass_fd is not None:
            answer = read_first_line(pass_fd)
        elif env.get("CRYOPHILE_ASKPASS"):
            answer = _askpass(env["CRYOPHILE_ASKPASS"], prompt,
                              ASKPASS_TIMEOUT if timeout is None else timeout)
        else:
            answer = _terminal(prompt, key)
        cache.append(answer)
        return answer

    return ask


def _has_terminal() -> bool:
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


def _askpass(program: str, prompt: str, timeout: float) -> str:
    try:
        # Without a terminal (cron, systemd) its own session: on a timeout the whole
        # group goes, so a child it started cannot keep our pipe open and hang us.
        # With one it stays in ours, since a program asking on /dev/tty needs it.
        isolated = not _has_terminal()
        process = subprocess.Popen([program, prompt], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=isolated)
    except OSError as error:
        raise KeyAccessError(f"CRYOPHILE_ASKPASS program {program!r} failed: {error}") from None
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if isolated:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # A child of it still holds the pipe (not ours to kill in our own group).
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            process.wait()
        raise KeyAccessError(f"CRYOPHILE_ASKPASS program {program!r} gave no passphrase "
                             f"within {timeout:g} s (--timeout); no passphrase") from None
    if process.returncode != 0:
        raise KeyAccessError(f"CRYOPHILE_ASKPASS program {program!r} exited with status "
                             f"{process.returncode}: no passphrase")
    return stdout.split(b"\n", 1)[0].removesuffix(b"\r").decode(
        "utf-8", errors="surrogateescape")


def _terminal(prompt: str, key: SecretKey) -> str:
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        raise KeyAccessError(
            f"secret key {gpg_form(key.fingerprint)} (from {key.source}) is passphrase-protected "
            "and there is no terminal to ask on: use --pass-fd N or CRYOPHILE_ASKPASS") from None
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise KeyAccessError("no passphrase entered") from None
