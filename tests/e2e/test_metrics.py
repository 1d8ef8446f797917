"""The daemons' Prometheus textfile, through the real ``freeze --once`` and ``thaw --once``.

The file is read back with a small parser written here (independent of the
code's): node_exporter's textfile format, ``name{label="value",...} number``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import oracles
from cryophile.metrics import format_samples, parse_samples
from support.cli import VAULT, Cli
from support.files import REPO

LINE = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? (\S+)$')
PAIR = re.compile(r'([a-z_]+)="([^"]*)"')


def read_metrics(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    names_with_type = set()
    for line in path.read_text().splitlines():
        if line.startswith("# TYPE "):
            names_with_type.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match is not None, line
        assert match.group(1) in names_with_type, f"{match.group(1)} has no # TYPE line"
        labels = frozenset(PAIR.findall(match.group(2) or ""))
        samples[match.group(1), labels] = float(match.group(3))
    return samples


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def test_freeze_and_thaw_write_the_textfile(cli: Cli, gpg_key: oracles.KeyPair,
                                            tmp_path: Path) -> None:
    collector = tmp_path / "textfile"
    collector.mkdir()
    metrics = collector / "cryophile.prom"
    started = time.time()
    cli.backup(gpg_key, b"first\n" * 1000, prefix="hosts/db1")
    result = cli.run(["freeze", "--once", "--metrics", metrics])
    assert result.returncode == 0, result.stderr
    samples = read_metrics(metrics)
    first = sample(samples, "cryophile_freeze_last_success_timestamp_seconds",
                   vault=VAULT, prefix="hosts/db1")
    assert started <= first <= time.time()
    assert sample(samples, "cryophile_queue_fragments", queue="freeze") == 0
    assert sample(samples, "cryophile_queue_bytes", queue="freeze") == 0
    assert sample(samples, "cryophile_errors_total", daemon="freeze", kind="transient") == 0
    assert sample(samples, "cryophile_errors_total", daemon="freeze", kind="permanent") == 0
    assert sample(samples, "cryophile_last_pass_timestamp_seconds", daemon="freeze") >= first
    assert oct(metrics.stat().st_mode & 0o777) == "0o644"

    # A new process (a restart), the path from the configuration, another prefix: the
    # first prefix's time survives. A vault that cannot be opened counts as an error.
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.parent.mkdir(parents=True)
    broken = "0b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"
    # The embedded vault goes on as a configured directory vault at the same place.
    embedded = cli.spool.parent / f"{cli.spool.name}-vaults" / VAULT
    config.write_text(f'metrics_file = "{metrics}"\n\n[[vault]]\nid = "{broken}"\n'
                      f'provider = "dir"\npath = "{tmp_path / "unmounted"}"\n\n'
                      f'[[vault]]\nid = "{VAULT}"\nprovider = "dir"\npath = "{embedded}"\n')
    cli.backup(gpg_key, b"second\n" * 1000, prefix="hosts/web1")
    queued = cli.run(["backup", "-v", broken, "-p", "x", "-k", gpg_key.cert], stdin=b"y" * 10)
    assert queued.returncode == 0, queued.stderr
    result = cli.run(["freeze", "--once"])
    assert result.returncode != 0
    samples = read_metrics(metrics)
    assert sample(samples, "cryophile_freeze_last_success_timestamp_seconds",
                  vault=VAULT, prefix="hosts/db1") == first
    assert sample(samples, "cryophile_freeze_last_success_timestamp_seconds",
                  vault=VAULT, prefix="hosts/web1") > first
    assert sample(samples, "cryophile_queue_fragments", queue="freeze") == 1
    assert sample(samples, "cryophile_queue_bytes", queue="freeze") > 0
    errors = [sample(samples, "cryophile_errors_total", daemon="freeze", kind=kind)
              for kind in ("transient", "permanent")]
    assert sum(errors) == 1

    # The thaw daemon shares the file: its samples are added, freeze's kept.
    result = cli.run(["thaw", "--once"])
    assert result.returncode == 0, result.stderr
    merged = read_metrics(metrics)
    assert sample(merged, "cryophile_last_pass_timestamp_seconds", daemon="thaw") > first
    assert sample(merged, "cryophile_errors_total", daemon="thaw", kind="permanent") == 0
    for key, value in samples.items():
        if key[0] != "cryophile_queue_fragments" and key[0] != "cryophile_queue_bytes":
            assert merged[key] == value, key
    assert sorted(p.name for p in collector.iterdir()) == ["cryophile.prom"]  # no temp left


def test_thaw_success_is_recorded(cli: Cli, gpg_key: oracles.KeyPair, tmp_path: Path) -> None:
    ulid = cli.backup(gpg_key, b"thaw me\n" * 1000)
    assert cli.run(["freeze", "--once"]).returncode == 0
    metrics = tmp_path / "cryophile.prom"
    restore = cli.run(["restore", "-v", VAULT, "-p", "hosts/db1", "-u", ulid, "-k",
                       gpg_key.secret, "--no-thaw", "--timeout", "0.5"])
    assert restore.returncode == 75, restore.stderr  # filed a request, not thawed yet
    result = cli.run(["thaw", "--once", "--metrics", metrics])
    assert result.returncode == 0, result.stderr
    samples = read_metrics(metrics)
    assert sample(samples, "cryophile_thaw_last_success_timestamp_seconds", vault=VAULT,
                  prefix="hosts/db1") > 0
    assert sample(samples, "cryophile_queue_fragments", queue="restore") >= 1


def test_labels_with_quotes_and_backslashes_round_trip() -> None:
    key = ("cryophile_freeze_last_success_timestamp_seconds",
           (("prefix", 'we"ird\\pre\nfix'), ("vault", VAULT)))
    text = format_samples({key: 1700000000.5})
    assert parse_samples(text) == {key: 1700000000.5}
    assert parse_samples("garbage line\nother_metric 1\n") == {}


def test_readme_documents_the_alert_rule() -> None:
    readme = (REPO / "README.md").read_text()
    rule = ('time() - cryophile_freeze_last_success_timestamp_seconds{prefix="X"} > 26*3600')
    assert rule.replace('"X"', '"hosts/db1"') in readme or rule in readme
    for name in ("cryophile_freeze_last_success_timestamp_seconds", "cryophile_queue_bytes",
                 "cryophile_errors_total", "cryophile_last_pass_timestamp_seconds"):
        assert name in readme
