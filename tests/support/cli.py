"""The real ``cryophile`` command, run in a subprocess against one spool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import oracles

#: The vault id the tests back up to (the embedded directory vault unless configured).
VAULT = "6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b"


@dataclass
class Result:
    """What a finished cryophile process left behind."""

    returncode: int
    stdout: bytes
    stderr: str


@dataclass
class Cli:
    """Runs the real ``cryophile`` command in a subprocess against one spool."""

    spool: Path
    home: Path
    #: The configuration ``backup`` is given (-c), if any: a backup is bound for the
    #: vault its configuration names, and freeze refuses to send it elsewhere.
    config: Path | None = None

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CRYOPHILE_")}
        env.update({"CRYOPHILE_SPOOL": str(self.spool), "HOME": str(self.home),
                    "XDG_CONFIG_HOME": str(self.home / ".config")})
        env.update(extra or {})
        return env

    def run(self, args: Sequence[str | os.PathLike[str]], *, stdin: bytes | int | None = None,
            env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = (),
            timeout: float = 300) -> Result:
        command = [sys.executable, "-m", "cryophile", *map(str, args)]
        kwargs: dict[str, object] = {}
        if isinstance(stdin, int):
            kwargs["stdin"] = stdin
        else:
            kwargs["input"] = stdin if stdin is not None else b""
        completed = subprocess.run(command, capture_output=True, env=self.environment(env),
                                   pass_fds=tuple(pass_fds), timeout=timeout, check=False,
                                   **kwargs)  # type: ignore[call-overload]
        return Result(completed.returncode, completed.stdout,
                      completed.stderr.decode(errors="replace"))

    def backup(self, key: oracles.KeyPair, data: bytes, *extra: str, prefix: str = "hosts/db1",
               size: str = "5M") -> str:
        """Back ``data`` up; return the new backup's ULID (asserting success)."""
        config: list[str | Path] = ["-c", self.config] if self.config is not None else []
        result = self.run(["backup", "-v", VAULT, "-p", prefix, "-k", key.cert, "-s", size,
                           "--json", *config, *extra], stdin=data)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        ulid: str = document["ulid"]
        return ulid

    def freeze_dir(self, ulid: str, prefix: str = "hosts/db1") -> Path:
        return self.spool / "freeze" / VAULT / prefix / ulid

    def restore_dir(self, ulid: str, prefix: str = "hosts/db1") -> Path:
        return self.spool / "restore" / VAULT / prefix / ulid

    def stage_for_restore(self, ulid: str, prefix: str = "hosts/db1") -> Path:
        """Hard-link a frozen backup into the restore queue (what thaw will do)."""
        source = self.freeze_dir(ulid, prefix)
        target = self.restore_dir(ulid, prefix)
        target.mkdir(parents=True)
        for item in source.iterdir():
            os.link(item, target / item.name)
        return target
