"""Backup ids: prefix rules (property-tested), ULIDs, timestamps, keys and paths."""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryophile.backup_id import (
    MAX_PREFIX_BYTES,
    S3_KEY_LIMIT,
    BackupId,
    normalize_prefix,
    parse_timestamp,
    parse_ulid,
    parse_vault,
    ulid_for_timestamp,
)
from cryophile.errors import UsageError

ALLOWED = string.ascii_letters + string.digits + "/()!'*._-"
allowed_text = st.text(alphabet=ALLOWED, max_size=60)


@given(allowed_text)
def test_normalized_prefix_is_canonical_or_refused(text: str) -> None:
    climbs = text.startswith("/") or _climbs_above_root(text)
    if climbs:
        with pytest.raises(UsageError, match=r"climbs above|relative"):
            normalize_prefix(text)
        return
    prefix = normalize_prefix(text)
    assert normalize_prefix(prefix) == prefix  # idempotent
    parts = prefix.split("/") if prefix else []
    assert all(part not in ("", ".", "..") for part in parts)
    assert not prefix.startswith("/")


def _climbs_above_root(text: str) -> bool:
    depth = 0
    for part in text.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


@given(st.text(min_size=1, max_size=20))
def test_any_disallowed_character_is_named(text: str) -> None:
    bad = [char for char in text if char not in ALLOWED]
    if not bad:
        return
    with pytest.raises(UsageError) as caught:
        normalize_prefix(text)
    assert repr(bad[0]) in str(caught.value)


def test_ulid_shaped_component_is_refused() -> None:
    with pytest.raises(UsageError, match="looks like a ULID"):
        normalize_prefix("hosts/01ARZ3NDEKTSV4RRFFQ69G5FAV/sub")


@pytest.mark.parametrize(("raw", "canonical"), [
    ("", ""), ("hosts/db1", "hosts/db1"), ("hosts//db1/", "hosts/db1"),
    ("./hosts/./db1", "hosts/db1"), ("hosts/x/../db1", "hosts/db1"), ("a/..", ""),
])
def test_prefix_canonical_forms(raw: str, canonical: str) -> None:
    assert normalize_prefix(raw) == canonical


def test_prefix_length_leaves_room_in_the_key_limit() -> None:
    longest = "p" * MAX_PREFIX_BYTES
    backup = BackupId(uuid.uuid4(), normalize_prefix(longest), ulid_for_timestamp(
        datetime(2026, 1, 1, tzinfo=UTC)))
    assert len(backup.object_key(9_999_999_999).encode()) <= S3_KEY_LIMIT
    with pytest.raises(UsageError, match="key limit"):
        normalize_prefix(longest + "p")


def test_keys_and_paths() -> None:
    ulid = parse_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    vault = parse_vault("6F1C2A3B-5D4E-4F60-8A7B-9C0D1E2F3A4B")
    with_prefix = BackupId(vault, "hosts/db1", ulid)
    assert with_prefix.object_key(3) == "hosts/db1/01ARZ3NDEKTSV4RRFFQ69G5FAV/chunk.3"
    assert str(with_prefix.relative_path) == (
        "6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b/hosts/db1/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    bare = BackupId(vault, "", ulid)
    assert bare.object_key(0) == "01ARZ3NDEKTSV4RRFFQ69G5FAV/chunk.0"


def test_ulid_parsing_accepts_lower_case_and_refuses_garbage() -> None:
    assert str(parse_ulid("01arz3ndektsv4rrffq69g5fav")) == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    for bad in ("", "01ARZ3NDEKTSV4RRFFQ69G5FA", "81ARZ3NDEKTSV4RRFFQ69G5FAV",
                "01ARZ3NDEKTSV4RRFFQ69G5FAU"):
        with pytest.raises(UsageError):
            parse_ulid(bad)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31),
                    timezones=st.just(UTC)))
def test_timestamp_maps_to_one_ulid(when: datetime) -> None:
    text = when.isoformat()
    first = ulid_for_timestamp(parse_timestamp(text))
    again = ulid_for_timestamp(parse_timestamp(text))
    assert first == again
    assert first.milliseconds == int(when.timestamp() * 1000)


def test_timestamp_offsets_are_the_same_instant() -> None:
    assert ulid_for_timestamp(parse_timestamp("2026-11-26T03:00:00+01:00")) == \
        ulid_for_timestamp(parse_timestamp("2026-11-26T02:00:00Z"))


@pytest.mark.parametrize("bad", ["2026-11-26", "2026-11-26T03:00:00", "tomorrow",
                                 "1969-12-31T23:59:59Z"])
def test_bad_timestamps(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_timestamp(bad)
