"""``cryophile status``: what the freeze and thaw daemons have to do now, from the spool alone."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from cryophile import presence
from cryophile.backup_id import BackupId
from cryophile.cli.resources import open_config, open_spool
from cryophile.errors import CryophileError
from cryophile.in_flight import uploads_in_flight
from cryophile.inventory import BackupState, SpoolRecord, scan_spool
from cryophile.pipeline.stages import write_all
from cryophile.spool import Spool
from cryophile.thaw_request import FragmentState
from cryophile.units import human_bytes
from cryophile.uploads import UploadRecords

if TYPE_CHECKING:
    from cryophile.cli.main import Environment

DESCRIPTION = """\
Show what the daemons have to do now, read from the spool alone (no vault is
contacted, no key is needed): whether a freeze and a thaw daemon serve this
spool; per queue, the backups in it; for the freeze queue the fragments and
bytes waiting for upload, the error that stopped a backup's last upload (and
since when), the uploads running now, and withdrawn backups whose uploaded
objects the next pass removes; for the thaw queue each restore request with
its fragments cold / restoring / downloaded, and the error of a failed one;
the restore queue's backups; and abandoned backups (no manifest, writer gone),
which nothing will ever upload.
"""

EXAMPLES = """\
examples:
  cryophile status
  cryophile status --json | jq '.totals.freeze_bytes_waiting'
exit status: 0 (whatever the spool holds; alert on the JSON).
"""


def register(commands: Any) -> argparse.ArgumentParser:
    """Add the ``status`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "status", help="show the spool's queues: uploads waiting, thaw requests",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (schema in the README)")
    parser.set_defaults(run=run)
    return parser


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
                          "error": thaw.error})
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

    section("backup queue", document["backup"], f"{totals['writing']} being written",
            lambda e: (f"{human_bytes(e['bytes'])} in the fragment being written"
                       if e["state"] == BackupState.WRITING.value
                       else "writer gone: remove it (see abandoned)"))

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
        return text + (f"; error: {entry['error']}" if entry["error"] else "")

    section("thaw queue", document["thaw"],
            f"{totals['thaw_requests']} request(s), {totals['thaw_failed']} failed",
            describe_thaw)
    section("restore queue", document["restore"],
            f"{totals['restore_backups']} backup(s), {human_bytes(totals['restore_bytes'])}",
            lambda e: (f"{e['fragments_present']} of "
                       f"{e['fragments_total'] if e['fragments_total'] is not None else '?'} "
                       f"fragment(s), {human_bytes(e['bytes'])}"))
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


def run(args: argparse.Namespace, environment: Environment) -> int:
    """Scan the spool and print what waits in it."""
    config = open_config(args)
    spool = open_spool(args, environment.env, config, read_only=True)
    records = scan_spool(spool)
    document = build_status(str(spool.root), records)
    document["daemons"] = {name: presence.alive(spool, name)
                           for name in (presence.FREEZE, presence.THAW)}
    document["uploading"] = uploads_in_flight(spool)
    document["withdrawn"] = _withdrawn(spool, records)
    output = json.dumps(document, indent=1) + "\n" if args.json else format_status(document)
    write_all(environment.stdout_fd, output.encode())
    return 0
