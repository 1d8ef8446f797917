"""``cryophile status``: what the freeze and thaw daemons have to do now, from the spool alone."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryophile import presence
from cryophile.backpressure import describe_fill, waiting_backups
from cryophile.backup_id import BackupId
from cryophile.cli.resources import CommandContext
from cryophile.errors import CryophileError
from cryophile.in_flight import uploads_in_flight
from cryophile.inventory import BackupState, SpoolRecord, scan_spool
from cryophile.leftovers import Kind, Leftover, describe, find_leftovers
from cryophile.pipeline.stages import write_all
from cryophile.spool import Spool, default_spool_root
from cryophile.spool_budget import spool_usage
from cryophile.thaw_request import FragmentState
from cryophile.units import human_bytes
from cryophile.uploads import UploadRecords

if TYPE_CHECKING:
    from cryophile.cli.main import Environment


def _identity(backup_id: BackupId) -> dict[str, Any]:
    return {"id": str(backup_id), "vault": str(backup_id.vault), "prefix": backup_id.prefix,
            "ulid": str(backup_id.ulid)}


def build_status(spool_root: str, records: dict[BackupId, SpoolRecord]) -> dict[str, Any]:
    """The ``status --json`` document from the queues (the schema is documented in
    the README); :func:`run` adds what only a live spool has (daemons, uploads,
    withdrawn backups)."""
    writers: list[dict[str, Any]] = []
    freezes: list[dict[str, Any]] = []
    thaws: list[dict[str, Any]] = []
    restores: list[dict[str, Any]] = []
    abandoned: list[str] = []
    for backup_id in sorted(records):
        record = records[backup_id]
        upload = record.upload_state
        if upload is BackupState.INCOMPLETE:
            abandoned.append(str(backup_id))
        if record.writer is not None:
            writers.append({**_identity(backup_id),
                            "state": (BackupState.WRITING if record.writer.writing
                                      else BackupState.INCOMPLETE).value,
                            "bytes": record.writer.part_bytes})
        if record.freeze is not None:
            manifest = record.freeze.manifest
            freezes.append({**_identity(backup_id),
                            "state": upload.value if upload is not None else None,
                            "fragments_waiting": record.freeze.fragments_waiting,
                            "bytes_waiting": record.freeze.bytes_waiting,
                            "fragments_total": (len(manifest.fragments) if manifest is not None
                                                else None),
                            "error": record.freeze.error})
        if record.thaw is not None:
            thaw = record.thaw
            thaws.append({**_identity(backup_id), "state": thaw.state.value,
                          "tier": thaw.tier, "days": thaw.days, "requested": thaw.requested,
                          "fragments_total": thaw.fragments_total,
                          "cold": thaw.counts.get(FragmentState.COLD, 0),
                          "restoring": thaw.counts.get(FragmentState.RESTORING, 0),
                          "downloaded": thaw.counts.get(FragmentState.DOWNLOADED, 0),
                          "error": thaw.error,
                          "waiting_for_space": (thaw.space_wait.as_json()
                                                if thaw.space_wait is not None else None)})
        if record.restore is not None:
            restore = record.restore
            restores.append({**_identity(backup_id), "complete": restore.complete,
                             "fragments_present": restore.fragments_present,
                             "fragments_total": (len(restore.manifest.fragments)
                                                 if restore.manifest is not None else None),
                             "bytes": restore.bytes})
    totals = {
        "writing": sum(1 for entry in writers if entry["state"] == BackupState.WRITING.value),
        "freeze_backups": len(freezes),
        "freeze_fragments_waiting": sum(entry["fragments_waiting"] for entry in freezes),
        "freeze_bytes_waiting": sum(entry["bytes_waiting"] for entry in freezes),
        "thaw_requests": len(thaws),
        "thaw_failed": sum(1 for entry in thaws
                           if entry["state"] == BackupState.THAW_FAILED.value),
        "restore_backups": len(restores),
        "restore_bytes": sum(entry["bytes"] for entry in restores),
        "abandoned": len(abandoned),
    }
    return {"spool": spool_root, "backup": writers, "freeze": freezes, "thaw": thaws,
            "restore": restores, "abandoned": abandoned, "totals": totals}


def format_status(document: dict[str, Any]) -> str:
    """The human form of :func:`build_status`'s document."""
    totals = document["totals"]
    lines = [f"spool {document['spool']}"]
    for name, pid in document.get("daemons", {}).items():
        lines.append(f"{name} daemon: running (pid {pid})" if pid is not None
                     else f"{name} daemon: not running")

    def section(title: str, entries: list[dict[str, Any]], summary: str,
                describe: Any) -> None:
        lines.append(f"{title}: {summary}" if entries else f"{title}: empty")
        width = max((len(entry["state"]) for entry in entries if "state" in entry), default=0)
        for entry in entries:
            state = entry.get("state") or ("complete" if entry.get("complete") else "partial")
            lines.append(f"  {state.ljust(max(width, 8))}  {entry['id']}  {describe(entry)}")

    def describe_writer(entry: dict[str, Any]) -> str:
        if entry["state"] == WAITING:
            wait = entry["waiting_for_upload"]
            return (f"waiting for upload: spool {describe_fill(wait['queued'], wait['limit'])}"
                    f" ({wait['budget']}), since {wait['since']}")
        if entry["state"] == BackupState.WRITING.value:
            return f"{human_bytes(entry['bytes'])} in the fragment being written"
        return "writer gone: remove it (see abandoned)"

    section("backup queue", document["backup"], f"{totals['writing']} being written",
            describe_writer)

    def describe_freeze(entry: dict[str, Any]) -> str:
        total = entry["fragments_total"]
        text = (f"{entry['fragments_waiting']}"
                + (f" of {total}" if total is not None else "")
                + f" fragment(s) to upload, {human_bytes(entry['bytes_waiting'])}")
        if entry["state"] == BackupState.INCOMPLETE.value:
            text += "; no manifest and the writer is gone: never uploaded"
        elif total is None:
            text += "; manifest not written yet"
        return text + (f"; error: {entry['error']}" if entry["error"] else "")

    section("freeze queue", document["freeze"],
            f"{totals['freeze_backups']} backup(s), {totals['freeze_fragments_waiting']} "
            f"fragment(s), {human_bytes(totals['freeze_bytes_waiting'])} to upload",
            describe_freeze)
    for upload in document.get("uploading", []):
        lines.append(f"  uploading now: {upload['key']} ({human_bytes(upload['bytes'])}, "
                     f"since {upload['started']})")
    for entry in document.get("withdrawn", []):
        lines.append(f"  withdrawn {entry['id']}: its writer removed it; the next freeze pass "
                     f"removes the {entry['objects']} object(s) it uploaded of it")

    def describe_thaw(entry: dict[str, Any]) -> str:
        total = entry["fragments_total"]
        text = (f"{total if total is not None else '?'} fragment(s): {entry['cold']} cold, "
                f"{entry['restoring']} restoring, {entry['downloaded']} downloaded; "
                f"tier {entry['tier'] or '?'}, {entry['days'] or '?'} day(s), "
                f"requested {entry['requested'] or '?'}")
        space = entry.get("waiting_for_space")
        if space:
            text += (f"; waiting for space in the spool since {space['since']}: "
                     f"chunk.{space['fragment']} needs {human_bytes(space['needed'])}, "
                     f"{human_bytes(space['free'])} free")
        return text + (f"; error: {entry['error']}" if entry["error"] else "")

    section("thaw queue", document["thaw"],
            f"{totals['thaw_requests']} request(s), {totals['thaw_failed']} failed",
            describe_thaw)
    section("restore queue", document["restore"],
            f"{totals['restore_backups']} backup(s), {human_bytes(totals['restore_bytes'])}",
            lambda e: (f"{e['fragments_present']} of "
                       f"{e['fragments_total'] if e['fragments_total'] is not None else '?'} "
                       f"fragment(s), {human_bytes(e['bytes'])}"))
    _leftover_lines(document.get("leftovers"), lines)
    if document["abandoned"]:
        lines.append(f"abandoned: {len(document['abandoned'])} backup(s) without a manifest "
                     "whose writer is gone; nothing will upload them. Remove them with "
                     "'cryophile prune -v VAULT --abandoned':")
        lines.extend(f"  {backup}" for backup in document["abandoned"])
    else:
        lines.append("abandoned: none")
    return "\n".join(lines) + "\n"


def _withdrawn(spool: Spool, records: dict[BackupId, SpoolRecord]) -> list[dict[str, Any]]:
    """Backups whose writer removed them while objects of theirs were uploaded: the
    next freeze pass removes those objects (:mod:`cryophile.uploads`)."""
    uploads = UploadRecords(spool)
    found: list[dict[str, Any]] = []
    for backup_id in uploads.backup_ids():
        record = records.get(backup_id)
        if record is not None and (record.writer is not None or record.freeze is not None):
            continue  # still queued: not withdrawn
        try:
            upload = uploads.load(backup_id)
        except CryophileError:
            continue  # a damaged record: the freeze pass reports it
        if upload is not None and upload.objects:
            found.append({**_identity(backup_id), "objects": len(upload.objects)})
    return found


#: The state of a backup being written that waits for uploads to free spool space.
WAITING = "waiting"


def _mark_waiting(spool: Spool, document: dict[str, Any]) -> None:
    """Backups being written that wait for uploads (backpressure) get the state
    ``waiting`` and a ``waiting_for_upload`` object: the spool's queued bytes now,
    the budget, and since when they wait."""
    waiting = waiting_backups(spool)
    if not waiting:
        return
    queued = spool_usage(spool.root).queued
    for entry in document["backup"]:
        record = waiting.get(entry["id"])
        if record is None or entry["state"] != BackupState.WRITING.value:
            continue
        entry["state"] = WAITING
        entry["waiting_for_upload"] = {"queued": queued, "limit": record.get("limit", 0),
                                       "budget": record.get("budget"),
                                       "since": record.get("since"), "pid": record.get("pid")}


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Scan the spool and print what waits in it."""
    spool = CommandContext(args, environment.env, read_only=True).spool
    records = scan_spool(spool)
    document = build_status(str(spool.root), records)
    document["daemons"] = {name: presence.alive(spool, name)
                           for name in (presence.FREEZE, presence.THAW)}
    document["uploading"] = uploads_in_flight(spool)
    document["withdrawn"] = _withdrawn(spool, records)
    document["leftovers"] = [item.as_json() for item in find_leftovers(
        spool, records, global_options=_global_options(args, spool, environment))]
    _mark_waiting(spool, document)
    output = json.dumps(document, indent=1) + "\n" if args.json else format_status(document)
    write_all(environment.stdout_fd, output.encode())
    return 0


def _global_options(args: argparse.Namespace, spool: Spool, environment: Environment) -> str:
    """``-S SPOOL`` (unless it is the default one) and ``-c FILE`` (when given) for the
    commands that remove leftovers: each must work on this spool as pasted."""
    options = []
    if args.config is not None:
        options.append(f"-c {shlex.quote(str(args.config))}")
    plain = {key: value for key, value in environment.env.items() if key != "CRYOPHILE_SPOOL"}
    if os.path.abspath(spool.root) != os.path.abspath(default_spool_root(plain)):
        options.append(f"-S {shlex.quote(str(spool.root))}")
    return " ".join(options)


def _leftover_lines(entries: list[dict[str, Any]] | None, lines: list[str]) -> None:
    """The ``leftovers`` section: each leftover, and the command that removes it."""
    if entries is None:
        return
    if not entries:
        lines.append("leftovers: none")
        return
    lines.append(f"leftovers: {len(entries)} thing(s) nothing will finish or remove by "
                 "itself; each is removed by the command under it:")
    for entry in entries:
        leftover = Leftover(Kind(entry["kind"]), Path(entry["path"]), None, entry["command"])
        subject = f"{entry['backup']}: " if entry["backup"] else ""
        lines.append(f"  {entry['kind']}  {subject}{describe(leftover)}")
        lines.append(f"    {entry['path']}")
        lines.append(f"    remove: {entry['command']}")
