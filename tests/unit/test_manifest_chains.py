"""Manifest version 2: an incremental's parent and the user's labels (issue 16)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from cryophile.backup_id import BackupId, parse_ulid
from cryophile.errors import DataError
from cryophile.manifest import Fragment, Manifest, parse

BACKUP = BackupId(uuid.UUID("6f1c2a3b-5d4e-4f60-8a7b-9c0d1e2f3a4b"), "hosts/db1",
                  parse_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV"))
PARENT = parse_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAA")


def sample() -> Manifest:
    return Manifest(BACKUP, datetime(2026, 11, 26, 3, tzinfo=UTC), "zstd", "reference",
                    ("ab" * 20,), 100, (Fragment(1, 100, "1" * 64), Fragment(2, 42, "2" * 64)))


def extended() -> dict[str, Any]:
    manifest = dataclasses.replace(sample(), parent=PARENT,
                                   labels=(("snapshot", "tank/data@2026-12-06"),))
    loaded: dict[str, Any] = json.loads(manifest.to_json())
    return loaded


def test_a_backup_without_parent_or_labels_is_still_written_as_version_1() -> None:
    assert json.loads(sample().to_json())["version"] == 1


def test_parent_and_labels_round_trip_as_version_2() -> None:
    manifest = dataclasses.replace(sample(), parent=PARENT,
                                   labels=(("host", "db1"), ("snapshot", "tank@a")))
    document = json.loads(manifest.to_json())
    assert document["version"] == 2
    assert document["parent"] == str(PARENT)
    assert document["labels"] == {"host": "db1", "snapshot": "tank@a"}
    parsed = parse(manifest.to_json(), expected=BACKUP)
    assert parsed == manifest
    assert parsed.parent_id is not None
    assert parsed.parent_id.prefix == BACKUP.prefix
    assert parsed.label("snapshot") == "tank@a"
    assert parsed.label("missing") is None


def test_version_1_with_a_version_2_field_is_refused() -> None:
    document = extended()
    document["version"] = 1
    with pytest.raises(DataError, match="unknown field 'labels'"):
        parse(json.dumps(document).encode())


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(parent="not-a-ulid"), "'parent' is not a backup id"),
    (lambda d: d.update(parent=str(BACKUP.ulid)), "its own backup as its parent"),
    (lambda d: d.update(parent=7), "'parent' should be str"),
    (lambda d: d.update(labels=["a"]), "'labels' should be dict"),
    (lambda d: d.update(labels={"9x": "v"}), "bad label key '9x'"),
    (lambda d: d.update(labels={"k": 1}), "not a string"),
    (lambda d: d.update(labels={"k": "a\nb"}), "no control characters"),
    (lambda d: d.update(labels={f"k{i}": "v" for i in range(65)}), "more than 64"),
])
def test_hostile_version_2_fields_are_refused(change: Any, message: str) -> None:
    document = extended()
    change(document)
    with pytest.raises(DataError, match=message):
        parse(json.dumps(document).encode())
