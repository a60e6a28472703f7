"""The bare-minimum pipeline maildesk's backlog drain is compared with, written plainly.

For each message: fetch (batches of 100, ``BODY.PEEK[]``), parse once and decode every part,
write the attachments (flushed to disk), commit one row (SQLite, WAL, ``synchronous=FULL``, as
maildesk), send the requester an acknowledgment and the team's agent a notice over one SMTP
connection, and move each batch to ``Processed`` after its commits. Nothing else: no threading,
no templates, no ledger, no loop protection. Run as ``python -m benchmarks.bare SPEC.json``.
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import os
import smtplib
import sqlite3
import sys
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from imapclient import IMAPClient

BATCH = 100


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["dir"])
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "bare.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS tickets (id INTEGER PRIMARY KEY, message_id TEXT, "
        "sender TEXT, subject TEXT, body TEXT, attachments TEXT)"
    )
    imap = IMAPClient(spec["host"], spec["port"], ssl=False, timeout=60)
    imap._imap.debug = 0
    imap.login(spec["username"], spec["password"])
    if not imap.folder_exists("Processed"):
        imap.create_folder("Processed")
    imap.select_folder("INBOX")
    smtp = smtplib.SMTP("127.0.0.1", spec["smtp_port"])
    parser = BytesParser(policy=email.policy.default)
    uids = sorted(imap.search(["NOT", "DELETED"]))
    for start in range(0, len(uids), BATCH):
        chunk = uids[start : start + BATCH]
        for data in imap.fetch(chunk, ["BODY.PEEK[]"]).values():
            message = parser.parsebytes(data[b"BODY[]"])
            assert isinstance(message, EmailMessage)
            body, files = decode_parts(message, root)
            sender = message["From"].addresses[0].addr_spec
            subject = str(message["Subject"])
            with db:
                cursor = db.execute(
                    "INSERT INTO tickets (message_id, sender, subject, body, attachments) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (str(message["Message-ID"]), sender, subject, body, json.dumps(files)),
                )
            number = cursor.lastrowid
            smtp.send_message(reply(spec["address"], sender, f"[#{number}] {subject}", "ack"))
            smtp.send_message(reply(spec["address"], spec["agent"], f"[#{number}] {subject}", body))
        imap.move(chunk, "Processed")
    smtp.quit()
    imap.logout()
    db.close()
    return 0


def decode_parts(message: EmailMessage, root: Path) -> tuple[str, list[str]]:
    """The text of the message and the blob names of its attachments (written and flushed)."""
    text = ""
    files = []
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if part.get_content_disposition() == "attachment":
            name = hashlib.sha256(payload).hexdigest()
            path = root / "blobs" / name
            with open(path, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            files.append(name)
        elif part.get_content_type() == "text/plain" and not text:
            text = payload.decode(part.get_content_charset() or "utf-8", "replace")
    return text, files


def reply(sender: str, to: str, subject: str, text: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Auto-Submitted"] = "auto-replied"
    mail.set_content(text)
    return mail


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
