"""Child-process side of the reference OpenPGP engine (pysequoia).

pysequoia holds the GIL for a whole ``encrypt_file``/``decrypt_file`` call
and streams only between file paths, so it runs here, in its own process, on
its standard input and output, while the parent compresses, splits and hashes
in threads.

Usage: ``python -m cryophile.pipeline.openpgp_worker encrypt|decrypt FD``.
Keys arrive as one JSON document on file descriptor FD (never in argv or the
environment): ``{"certificates": [base64, ...]}`` to encrypt,
``{"key": base64, "passphrase": str | null, "password": str | null}`` to
decrypt: with a password, the message starts with an SKESK packet that it
opens and the key is not used (pysequoia would refuse an expired or revoked
subkey; the parent recovered the session key instead). Exit status 0 on
success, 65 when the input is not a valid message for this key (damaged,
truncated, wrong key), 64 on a bad invocation; the reason is one line on
standard error.
"""

from __future__ import annotations

import base64
import json
import os
import sys

EXIT_DATA = 65
EXIT_USAGE = 64


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def main(argv: list[str]) -> int:
    """Run one encryption or decryption from stdin to stdout."""
    if len(argv) != 2 or argv[0] not in ("encrypt", "decrypt"):
        print("usage: openpgp_worker encrypt|decrypt FD", file=sys.stderr)
        return EXIT_USAGE
    with os.fdopen(int(argv[1]), "rb") as control:
        request = json.loads(control.read())
    import pysequoia  # noqa: PLC0415 - only the child needs it loaded

    try:
        if argv[0] == "encrypt":
            certs = [pysequoia.Cert.from_bytes(base64.b64decode(item))
                     for item in request["certificates"]]
            pysequoia.encrypt_file("/dev/stdin", "/dev/stdout", recipients=certs, armor=False)
        elif request.get("password"):
            pysequoia.decrypt_file("/dev/stdin", "/dev/stdout", passwords=[request["password"]])
        else:
            tsk = pysequoia.Tsk.from_bytes(base64.b64decode(request["key"]))
            decryptor = tsk.decryptor(request["passphrase"])
            pysequoia.decrypt_file("/dev/stdin", "/dev/stdout", decryptor=decryptor)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            return 130
        print(_first_line(error), file=sys.stderr)
        return EXIT_DATA
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
