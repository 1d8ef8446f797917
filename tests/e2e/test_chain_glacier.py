"""restore --chain from Glacier (moto): one wait for the whole chain, and its cost.

moto's server runs in this process; a recorder on moto's side of the HTTP
connection notes, in order, every RestoreObject and every GET of a fragment
the cryophile processes sent. The restore of a three-link chain must ask for
the restore of every link's fragments before it downloads any, and ask once
per fragment; its dry run must price the whole chain, and a vault's
``retrieval_prices`` must change that price. The full backup's fragment is
restored beforehand (an earlier attempt): serving the links' requests one
after the other would download it before asking for the next link's.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from moto.s3.responses import S3Response

import oracles
from e2e.test_chain_restore import PREFIX, make_chain, same_tree, untar_into
from e2e.test_thaw_glacier import make_site
from s3server import S3Bucket
from support.cli import Cli

_FRAGMENT = re.compile(r".*/chunk\.[1-9][0-9]*")


@pytest.fixture
def requests_seen(moto_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """("restore" | "get", key) of every RestoreObject and fragment GET, in order."""
    seen: list[tuple[str, str]] = []
    original_post = S3Response._key_response_post
    original_get = S3Response._key_response_get

    def key_response_post(self: Any, request: Any, body: bytes, bucket_name: str,
                          query: dict[str, Any], key_name: str) -> Any:
        if bucket_name == moto_bucket.name and "restore" in query:
            seen.append(("restore", key_name))
        return original_post(self, request, body, bucket_name, query, key_name)

    def key_response_get(self: Any, query: dict[str, Any], key_name: str) -> Any:
        answer = original_get(self, query, key_name)
        if (self.bucket_name == moto_bucket.name and set(query) <= {"x-id"}
                and _FRAGMENT.fullmatch(key_name)):
            seen.append(("get", key_name))
        return answer

    monkeypatch.setattr(S3Response, "_key_response_post", key_response_post)
    monkeypatch.setattr(S3Response, "_key_response_get", key_response_get)
    return seen


def _charge(text: str) -> float:
    found = re.search(r"whole chain ≈ \$([0-9.]+) ", text)
    assert found is not None, text
    return float(found.group(1))


def test_the_whole_chain_is_thawed_at_once_and_priced_before(
        cli: Cli, moto_bucket: S3Bucket,
        requests_seen: list[tuple[str, str]], gpg_key: oracles.KeyPair,
        tmp_path: Path) -> None:
    site = make_site(cli, moto_bucket, tmp_path, restore_tier="Standard")
    chain = make_chain(cli, gpg_key, tmp_path, env=site.env)
    fragments = {f"{PREFIX}/{ulid}/chunk.1" for ulid in chain.ulids}
    # The plan of the whole chain, before anything is paid for.
    dry = chain.restore(gpg_key, "--latest", "--chain", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = dry.stdout.decode()
    assert plan.count("need a restore: tier Standard") == 3
    assert "whole chain: 3 fragment(s) need a restore, all requested at once" in plan
    assert "3–5 hours" in plan
    assert _charge(plan) < 0.01  # three small fragments at AWS's prices
    assert requests_seen == []
    # A vault's own price table changes the estimate.
    config = cli.home / ".config" / "cryophile" / "cryophile.toml"
    config.write_text(config.read_text() + "[vault.retrieval_prices]\n"
                      "Standard = { per_gib = 0.0, per_1000_requests = 2000 }\n")
    priced = chain.restore(gpg_key, "--latest", "--chain", "--dry-run")
    assert priced.returncode == 0, priced.stderr
    assert _charge(priced.stdout.decode()) == pytest.approx(6.0, abs=0.01)  # 3 × $2
    # The full backup's fragment was restored already (an earlier attempt): it can be
    # downloaded at once, but not before the other links' restores are asked for.
    site.client().restore_object(Bucket=moto_bucket.name, Key=f"{PREFIX}/{chain.ulids[0]}/chunk.1",
                                 RestoreRequest={"Days": 1,
                                                 "GlacierJobParameters": {"Tier": "Standard"}})
    # The restore: every link's restore asked for before the first download, once each.
    target = tmp_path / "restored"
    target.mkdir()
    result = chain.restore(gpg_key, "--latest", "--chain", "--thaw", "--poll", "0.2",
                           "--timeout", "120", "--exec", untar_into(target))
    assert result.returncode == 0, result.stderr
    same_tree(chain.source, target)
    first_get = next(i for i, (kind, _key) in enumerate(requests_seen) if kind == "get")
    assert {key for kind, key in requests_seen[:first_get] if kind == "restore"} == fragments
    assert Counter(key for kind, key in requests_seen if kind == "restore") == dict.fromkeys(
        fragments, 1)
    assert {key for kind, key in requests_seen if kind == "get"} == fragments
    assert not list((cli.spool / "thaw").rglob("state.json"))
