"""Tests of cryophile.config: lookup order, schema, and error messages that
name file, line, vault entry and key."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cryophile.config import Config, VaultConfig, load_config, parse_config, parse_size
from cryophile.errors import ConfigError
from cryophile.spool_budget import SpoolLimit

VAULT_A = "0b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"
VAULT_B = "5d3f8a9e-0c4b-4e1a-8f2d-9a7b6c5d4e3f"

GOOD = f"""\
# cryophile configuration
spool = "/var/spool/cryophile"

[[vault]]
id = "{VAULT_A.upper()}"
provider = "s3"
bucket = "my-backups"
endpoint_url = "https://account.r2.cloudflarestorage.com"
region = "auto"
profile = "backup"
storage_class = "deep_archive"
restore_tier = "Standard"
restore_days = 3
compression = "zstd"
object_lock_mode = "GOVERNANCE"
object_lock_days = 30
max_bandwidth = "50M"

[[vault]]
id = "{VAULT_B}"
provider = "dir"
path = "vaults/local"
"""


def write(tmp_path: Path, text: str, name: str = "cryophile.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def vault_entry(**keys: object) -> str:
    """A TOML file with one [[vault]] table: a valid s3 vault plus ``keys``."""
    table: dict[str, object] = {"id": VAULT_A, "provider": "s3", "bucket": "backups"}
    table.update(keys)
    lines = ["[[vault]]"]
    for key, value in table.items():
        if value is None:
            continue
        rendered = f'"{value}"' if isinstance(value, str) else str(value).lower()
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def test_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = load_config(path)

    assert config.source == path
    assert config.spool == Path("/var/spool/cryophile")
    s3 = config.vault(uuid.UUID(VAULT_A))
    assert s3 == VaultConfig(
        id=uuid.UUID(VAULT_A),
        provider="s3",
        bucket="my-backups",
        endpoint_url="https://account.r2.cloudflarestorage.com",
        region="auto",
        profile="backup",
        storage_class="DEEP_ARCHIVE",
        restore_tier="Standard",
        restore_days=3,
        compression="zstd",
        object_lock_mode="GOVERNANCE",
        object_lock_days=30,
        max_bandwidth=50 * 1024 * 1024,
    )
    local = config.vault(uuid.UUID(VAULT_B))
    assert local is not None
    assert local.provider == "dir"
    # Relative paths are relative to the file they are written in.
    assert local.path == tmp_path / "vaults" / "local"
    assert config.vault(uuid.uuid4()) is None


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, vault_entry()))
    (entry,) = config.vaults
    assert (entry.storage_class, entry.restore_tier, entry.restore_days) == ("GLACIER", "Bulk", 7)
    assert entry.compression is None
    assert entry.object_lock_mode is None
    assert entry.max_bandwidth is None
    assert (entry.max_attempts, entry.connect_timeout, entry.read_timeout) == (10, 10.0, 30.0)
    assert config.spool is None


def test_timeouts_are_seconds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, vault_entry(connect_timeout=1, read_timeout=2.5)))
    (entry,) = config.vaults
    assert (entry.connect_timeout, entry.read_timeout) == (1.0, 2.5)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, vault_entry()))
    with pytest.raises(AttributeError):
        config.vaults[0].bucket = "elsewhere"  # type: ignore[misc]


def test_broken_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[vault]]\nid = "x"\nbucket = \n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "line 3" in message


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, vault_entry(storage_clas="GLACIER"))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "line 5" in message
    assert "[[vault]] #1" in message
    assert "'storage_clas'" in message


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'spoool = "/tmp"\n')
    with pytest.raises(ConfigError, match=r"line 1: key 'spoool': unknown key"):
        load_config(path)


def test_single_vault_table_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, f'[vault]\nid = "{VAULT_A}"\nprovider = "dir"\npath = "/x"\n')
    with pytest.raises(ConfigError, match=r"\[\[vault\]\] tables"):
        load_config(path)


def test_bad_uuid(tmp_path: Path) -> None:
    text = vault_entry() + vault_entry(id="not-a-uuid", bucket="other")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "line 6" in message
    assert "[[vault]] #2" in message
    assert "'id'" in message
    assert "not-a-uuid" in message


def test_uuid_without_hyphens_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, vault_entry(id=VAULT_A.replace("-", "")))
    with pytest.raises(ConfigError, match="is not a UUID"):
        load_config(path)


def test_bad_storage_class(tmp_path: Path) -> None:
    path = write(tmp_path, vault_entry(storage_class="GLACIER_DEEP"))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "'storage_class'" in message
    assert "GLACIER_DEEP" in message
    assert "DEEP_ARCHIVE" in message  # The valid choices are listed.
    assert "line 5" in message


def test_duplicate_vault(tmp_path: Path) -> None:
    path = write(tmp_path, vault_entry() + vault_entry(id=VAULT_A.upper(), bucket="other"))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "duplicate vault id" in message
    assert "[[vault]] #2" in message
    assert "#1" in message
    assert VAULT_A in message


def test_missing_explicit_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as raised:
        load_config(missing)
    assert str(missing) in str(raised.value)


def test_unreadable_file_is_an_error_not_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "cryophile.toml"
    directory.mkdir()  # Exists, but cannot be read as a file.
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(search=[directory, write(tmp_path, vault_entry(), "other.toml")])


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "cryophile.toml"
    path.write_bytes(b'spool = "/a"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="line 2: not valid UTF-8"):
        load_config(path)


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "user.toml"
    system = write(tmp_path, 'spool = "/from/system"\n', "system.toml")
    assert load_config(search=[user, system]).spool == Path("/from/system")
    write(tmp_path, 'spool = "/from/user"\n', "user.toml")
    assert load_config(search=[user, system]).spool == Path("/from/user")
    # An explicit path wins over both.
    explicit = write(tmp_path, 'spool = "/explicit"\n', "explicit.toml")
    assert load_config(explicit, search=[user, system]).spool == Path("/explicit")


def test_no_file_gives_builtin_defaults(tmp_path: Path) -> None:
    config = load_config(search=[tmp_path / "a.toml", tmp_path / "b.toml"])
    assert config == Config()
    assert config.vaults == ()


def test_default_search_uses_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "cryophile").mkdir()
    write(tmp_path / "cryophile", 'spool = "/xdg"\n')
    assert load_config().spool == Path("/xdg")


def test_default_search_uses_home_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config" / "cryophile").mkdir(parents=True)
    write(tmp_path / ".config" / "cryophile", 'spool = "~/spool"\n')
    assert load_config().spool == tmp_path / "spool"


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ({"provider": "ftp"}, "'provider': 'ftp' is not one of s3, dir"),
        ({"provider": None}, "missing key 'provider'"),
        ({"id": None}, "missing key 'id'"),
        ({"bucket": None}, "missing key 'bucket'"),
        ({"path": "/srv"}, "'path': key 'path' does not apply to provider 's3'"),
        ({"restore_tier": "Fast"}, "'restore_tier'"),
        ({"restore_days": 0}, "'restore_days': expected a whole number ≥ 1"),
        ({"restore_days": True}, "'restore_days'"),
        ({"restore_days": "7"}, "'restore_days'"),
        ({"compression": "gzip"}, "'compression'"),
        ({"object_lock_mode": "GOVERNANCE"}, "go together"),
        ({"object_lock_mode": "STRICT", "object_lock_days": 1}, "'object_lock_mode'"),
        ({"max_bandwidth": "fast"}, "'max_bandwidth': invalid size"),
        ({"max_bandwidth": 0}, "'max_bandwidth'"),
        ({"endpoint_url": "localhost:8333"}, "'endpoint_url'"),
        ({"bucket": "a/b"}, "'bucket'"),
        ({"region": ""}, "'region'"),
        ({"connect_timeout": 0}, "'connect_timeout': expected seconds, a number above 0 and "
                                 "at most 3600, not 0"),
        ({"connect_timeout": -1.5}, "'connect_timeout'"),
        ({"read_timeout": 3601}, "'read_timeout'"),
        ({"read_timeout": "30"}, "'read_timeout'"),
        ({"read_timeout": True}, "'read_timeout'"),
        ({"read_timeout": float("nan")}, "'read_timeout'"),
        ({"read_timeout": float("inf")}, "'read_timeout'"),
    ],
)
def test_bad_values_name_entry_and_key(
    tmp_path: Path, keys: dict[str, object], fragment: str
) -> None:
    path = write(tmp_path, vault_entry(**keys))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert "[[vault]] #1" in message
    assert fragment in message


def test_dir_vault_refuses_s3_keys(tmp_path: Path) -> None:
    text = f'[[vault]]\nid = "{VAULT_A}"\nprovider = "dir"\npath = "/srv"\nbucket = "b"\n'
    with pytest.raises(ConfigError, match=r"line 5: .*'bucket' does not apply to provider 'dir'"):
        load_config(write(tmp_path, text))


def test_dir_vault_takes_a_bandwidth_cap(tmp_path: Path) -> None:
    text = f'[[vault]]\nid = "{VAULT_A}"\nprovider = "dir"\npath = "/srv"\nmax_bandwidth = "2M"\n'
    entry = load_config(write(tmp_path, text)).vault(uuid.UUID(VAULT_A))
    assert entry is not None
    assert entry.max_bandwidth == 2 * 1024 * 1024


def test_dir_vault_needs_a_path(tmp_path: Path) -> None:
    text = f'[[vault]]\nid = "{VAULT_A}"\nprovider = "dir"\n'
    with pytest.raises(ConfigError, match="missing key 'path'"):
        load_config(write(tmp_path, text))


def test_credentials_are_not_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, vault_entry(aws_secret_access_key="hunter2"))
    with pytest.raises(ConfigError, match="unknown key 'aws_secret_access_key'"):
        load_config(path)


def test_parse_config_without_a_file() -> None:
    config = parse_config(vault_entry(), Path("/etc/cryophile/cryophile.toml"))
    assert config.vaults[0].bucket == "backups"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (1, 1),
        ("1024", 1024),
        ("512K", 512 * 1024),
        ("50M", 50 * 1024**2),
        ("50MiB", 50 * 1024**2),
        ("1.5G", 3 * 1024**3 // 2),
        ("1t", 1024**4),
    ],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "-1", "0", "1MB", "1 X", "1e3"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [
    ('"48M"', SpoolLimit(size=48 << 20)),
    ("1048576", SpoolLimit(size=1 << 20)),
    ('"25%"', SpoolLimit(percent=25.0)),
])
def test_spool_limit_is_a_size_or_a_percentage(tmp_path: Path, text: str,
                                               expected: SpoolLimit) -> None:
    config = parse_config(f"spool_limit = {text}\n", tmp_path / "c.toml")
    assert config.spool_limit == expected


@pytest.mark.parametrize("text", ['"0%"', '"120%"', '"lots"', "0", "true"])
def test_a_bad_spool_limit_is_named_with_its_line(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"line 1.*spool_limit"):
        parse_config(f"spool_limit = {text}\n", tmp_path / "c.toml")
