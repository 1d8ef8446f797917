"""The reference OpenPGP engine: pysequoia, run in a child process.

It implements :class:`cryophile.pipeline.engines.Engine` (the registry there
names it ``reference``); the fast engine falls back to it for keys and
messages it does not handle.

pysequoia runs in a child process (:mod:`cryophile.pipeline.openpgp_worker`)
because it holds the GIL for a whole call: a feeder thread writes the input to
the child's stdin while the caller reads its stdout, so compression,
encryption and splitting overlap.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import IO

from cryophile.errors import DataError, ServiceError
from cryophile.pipeline.keys import Recipients, SecretKey
from cryophile.pipeline.stages import Buffer, enlarge_pipe, read_blocks, write_all

logger = logging.getLogger(__name__)


WORKER_EXIT_DATA = 65
STDERR_LIMIT = 64 * 1024


class ReferenceEngine:
    """pysequoia in a child process."""

    name = "reference"

    def encrypt(self, plaintext: Iterable[Buffer], recipients: Recipients) -> Iterator[bytes]:
        """See :meth:`cryophile.pipeline.engines.Engine.encrypt`."""
        request = {"certificates": [base64.b64encode(cert).decode()
                                    for cert in recipients.certificates]}
        return _run_worker("encrypt", request, plaintext)

    def decrypt(self, ciphertext: Iterable[Buffer], key: SecretKey,
                passphrase: str | None) -> Iterator[bytes]:
        """See :meth:`cryophile.pipeline.engines.Engine.decrypt`.

        pysequoia 0.1.35 cannot be told which subkey to decrypt with: for a
        backup whose subkey it will not use (expired, revoked, not its first
        encryption subkey) the fast engine recovers the session key and hands
        it over in an SKESK packet (:func:`.fastpgp.session.reference_handover`).
        """
        # Imported on use: encryption (every backup) needs none of the fast
        # engine's decryption parts.
        from cryophile.pipeline.fastpgp.session import reference_handover  # noqa: PLC0415

        message, password = reference_handover(ciphertext, key, passphrase)
        request = {"key": base64.b64encode(key.key_bytes).decode(), "passphrase": passphrase,
                   "password": password}
        return _run_worker("decrypt", request, message)


def _run_worker(operation: str, request: Mapping[str, object],
                source: Iterable[Buffer]) -> Iterator[bytes]:
    control_read, control_write = os.pipe()
    environment = dict(os.environ, RUST_BACKTRACE="0")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "cryophile.pipeline.openpgp_worker", operation,
             str(control_read)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(control_read,), env=environment)
    except OSError as error:
        os.close(control_write)
        raise ServiceError(f"cannot start the OpenPGP worker: {error}") from None
    finally:
        os.close(control_read)
    return _drive(process, control_write, json.dumps(request).encode(), source, operation)


def _drive(process: subprocess.Popen[bytes], control_write: int, control: bytes,
           source: Iterable[Buffer], operation: str) -> Iterator[bytes]:
    stdin: IO[bytes] = process.stdin  # type: ignore[assignment]
    stdout: IO[bytes] = process.stdout  # type: ignore[assignment]
    stderr: IO[bytes] = process.stderr  # type: ignore[assignment]
    feeder_error: list[BaseException] = []
    diagnostics = bytearray()

    def feed() -> None:
        try:
            write_all(control_write, control)
        except OSError:
            pass
        finally:
            os.close(control_write)
        try:
            enlarge_pipe(stdin.fileno())
            for block in source:
                write_all(stdin.fileno(), block)
        except BrokenPipeError:
            pass  # the worker died; its exit status and stderr say why
        except BaseException as error:
            feeder_error.append(error)
            # Kill before closing stdin: on EOF the worker would finish a
            # valid-looking message from a truncated input.
            process.kill()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def drain_stderr() -> None:
        while chunk := stderr.read(4096):
            if len(diagnostics) < STDERR_LIMIT:
                diagnostics.extend(chunk)

    feeder = threading.Thread(target=feed, name=f"openpgp-{operation}-feed", daemon=True)
    reader = threading.Thread(target=drain_stderr, name=f"openpgp-{operation}-stderr",
                              daemon=True)
    feeder.start()
    reader.start()
    finished = False
    try:
        enlarge_pipe(stdout.fileno())
        for block in read_blocks(stdout.fileno()):
            if feeder_error:
                break
            yield bytes(block)
        feeder.join()
        status = process.wait()
        reader.join()
        if feeder_error:
            raise feeder_error[0]
        if status != 0:
            message = diagnostics.decode(errors="replace").strip().splitlines()
            reason = message[-1] if message else f"exit status {status}"
            if status == WORKER_EXIT_DATA:
                raise DataError(f"OpenPGP {operation}ion failed: {reason}")
            raise ServiceError(f"OpenPGP worker ({operation}) failed: {reason}")
        finished = True
    finally:
        if not finished:
            process.kill()
            feeder.join()
            process.wait()
            reader.join()
        stdout.close()
        stderr.close()
