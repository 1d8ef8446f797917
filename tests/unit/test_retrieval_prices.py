"""A vault's ``retrieval_prices``: parsed, validated, and what the thaw plan charges."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryophile.config import parse_config
from cryophile.errors import ConfigError
from cryophile.storage_classes import RetrievalPrice
from cryophile.vault.factory import open_vault

VAULT_ID = "0b7c2c5e-5a7e-4f0e-9f43-4d1f3b0c2a11"
SOURCE = Path("/etc/cryophile/cryophile.toml")


def _config(prices: str, storage_class: str = "GLACIER") -> str:
    return ("[[vault]]\n"
            f'id = "{VAULT_ID}"\n'
            'provider = "s3"\n'
            'bucket = "my-backups"\n'
            f'storage_class = "{storage_class}"\n'
            f"{prices}")


def test_tiers_apply_to_the_vaults_class_and_class_tables_to_theirs(tmp_path: Path) -> None:
    config = parse_config(_config(
        "[vault.retrieval_prices]\n"
        "bulk = { per_gib = 0.001, per_1000_requests = 0.02 }\n"
        "[vault.retrieval_prices.DEEP_ARCHIVE]\n"
        "Standard = { per_gib = 0.03, per_1000_requests = 1 }\n", "DEEP_ARCHIVE"), SOURCE)
    entry = config.vaults[0]
    assert entry.price_table == {("DEEP_ARCHIVE", "Bulk"): RetrievalPrice(0.001, 0.02),
                                 ("DEEP_ARCHIVE", "Standard"): RetrievalPrice(0.03, 1.0)}
    opened = open_vault(entry.id, config, tmp_path / "spool")
    assert opened.retrieval_prices == entry.price_table
    plain = parse_config(_config(""), SOURCE)
    assert open_vault(plain.vaults[0].id, plain, tmp_path / "spool").retrieval_prices is None


@pytest.mark.parametrize(("prices", "message"), [
    ("retrieval_prices = 3\n", "expected tables such as Bulk"),
    ("retrieval_prices = { Fast = { per_gib = 1, per_1000_requests = 1 } }\n",
     "'Fast' is neither a retrieval tier"),
    ("retrieval_prices = { GLACIER = { Slow = { per_gib = 1, per_1000_requests = 1 } } }\n",
     "GLACIER.Slow: not a retrieval tier"),
    ("retrieval_prices = { Bulk = { per_gib = 1 } }\n", "Bulk: expected { per_gib = USD"),
    ("retrieval_prices = { Bulk = { per_gib = -1, per_1000_requests = 1 } }\n",
     "Bulk.per_gib: expected a price in USD, 0 or more, not -1"),
    ("retrieval_prices = { Bulk = { per_gib = true, per_1000_requests = 1 } }\n",
     "not True"),
])
def test_bad_prices_are_refused_naming_the_entry(prices: str, message: str) -> None:
    with pytest.raises(ConfigError, match="key 'retrieval_prices'") as raised:
        parse_config(_config(prices), SOURCE)
    assert message in str(raised.value)


def test_a_directory_vault_has_no_retrieval_prices() -> None:
    with pytest.raises(ConfigError, match="does not apply to provider 'dir'"):
        parse_config("[[vault]]\n"
                     f'id = "{VAULT_ID}"\n'
                     'provider = "dir"\n'
                     'path = "/srv"\n'
                     "retrieval_prices = { Bulk = { per_gib = 1, per_1000_requests = 1 } }\n",
                     SOURCE)
