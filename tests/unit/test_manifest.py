"""The manifest: round trip, strict validation of hostile documents, and a fuzz test."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryophile.backup_id import BackupId, parse_ulid
from cryophile.errors import DataError
from cryophile.manifest import Fragment, Manifest, parse

BACKUP = BackupId(uuid.UUID("6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b"), "hosts/db1",
                  parse_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV"))


def sample(count: int = 3) -> Manifest:
    fragments = tuple(Fragment(i, 100 if i < count else 42, f"{i:064x}")
                      for i in range(1, count + 1))
    return Manifest(BACKUP, datetime(2026, 11, 26, 3, tzinfo=UTC), "zstd", "reference",
                    ("ab" * 20,), 100, fragments)


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(sample().to_json())
    return loaded


def test_round_trip() -> None:
    manifest = sample()
    assert parse(manifest.to_json(), expected=BACKUP) == manifest
    assert manifest.stored_bytes == 242


def test_another_backup_is_refused() -> None:
    other = BackupId(BACKUP.vault, "hosts/db2", BACKUP.ulid)
    with pytest.raises(DataError, match="describes backup"):
        parse(sample().to_json(), expected=other)


def mutate(change: Any) -> bytes:
    doc = document()
    change(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format="other"), "not a cryophile manifest"),
    (lambda d: d.update(version=3), "version 3"),
    (lambda d: d.update(version="1"), "'version' should be int"),
    (lambda d: d.pop("fragments"), "'fragments' is missing"),
    (lambda d: d.update(fragments=[]), "no fragments"),
    (lambda d: d["fragments"][0].update(index=-1), "index -1"),
    (lambda d: d["fragments"][1].update(index=1), "index 1"),
    (lambda d: d["fragments"][0].update(size=True), "should be int"),
    (lambda d: d["fragments"][0].update(size=10**30), "size"),
    (lambda d: d["fragments"][2].update(size=0), "size 0"),
    (lambda d: d["fragments"][2].update(size=101), "size 101"),
    (lambda d: d["fragments"][0].update(sha256="../../etc/passwd"), "bad sha256"),
    (lambda d: d.update(fragment_size=-5), "out of range"),
    (lambda d: d.update(compression="gzip"), "unknown compression"),
    (lambda d: d.update(prefix="../../etc"), "bad backup id"),
    (lambda d: d.update(ulid="nope"), "bad backup id"),
    (lambda d: d.update(recipients=[7]), "bad recipient"),
    (lambda d: d.update(created="noon"), "not a time"),
])
def test_hostile_manifests_are_refused(change: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse(mutate(change))


def test_not_json() -> None:
    with pytest.raises(DataError, match="not valid UTF-8 JSON"):
        parse(b"\xff\xfe{")
    with pytest.raises(DataError, match="not a JSON object"):
        parse(b"[1, 2]")
    with pytest.raises(DataError):
        parse(b"[" * 100000)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(sorted(document())), json_values))
def test_fuzz_only_data_errors(overrides: dict[str, Any]) -> None:
    doc = document()
    doc.update(overrides)
    with contextlib.suppress(DataError):
        parse(json.dumps(doc).encode())


@settings(max_examples=200)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DataError):
        parse(data)
