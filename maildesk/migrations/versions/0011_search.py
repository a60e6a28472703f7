"""search: the full-text index of ticket subjects and every message's subject and text

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

The index is the database's own, fed in the transaction that writes the row, whoever writes
it: SQLite by triggers into FTS5 tables, PostgreSQL by stored generated ``tsvector`` columns
with GIN indexes. One place (not each writer in ``act``) is why: a message row written by a
new writer, a merge or this migration is indexed all the same. Existing rows are indexed here.

Both databases see the same words: ASCII punctuation separates words (``E-4711`` is ``e`` and
``4711``, ``alice@example.com`` is ``alice example com``; the query side builds phrases of the
same tokens), letters are lowercased and keep their accents. PostgreSQL's configuration is
``simple`` (lowercase, no stemming, no stop words), not ``english``: the desk gets mail in many
languages, and an English stemmer or stop list would mangle German or French words and drop
words like ``it`` or ``will`` that a product or a name may be; a word is found as written. Its
parser, left alone, keeps ``alice@example.com`` and ``-4711`` as single words, so ASCII
punctuation is made a space first (``translate``). Only the first ``SEARCHED_CHARS``
characters of a message's text are indexed: a tsvector holds at most 1 MB, and indexing
costs time in proportion to the text (``maildesk.act.search`` reads the same bound).

On SQLite a later migration that rebuilds ``messages`` or ``tickets`` in batch mode (copy and
rename) drops their triggers with the old table: it must create them again
(``create_sqlite_triggers``).
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SEARCHED_CHARS = 100_000  # of a message's text (maildesk.act.search.SEARCHED_CHARS)

# ASCII punctuation, each made a space before PostgreSQL's parser sees the text
_PUNCTUATION = "!\"#$%&''()*+,-./:;<=>?@[\\]^_`{|}~"
_SPACES = " " * (len(_PUNCTUATION) - 1)  # '' is one quote in the SQL literal


def _pg_vector(column: str) -> str:
    return f"to_tsvector('simple'::regconfig, translate({column}, '{_PUNCTUATION}', '{_SPACES}'))"


_SQLITE_TABLES = (
    "CREATE VIRTUAL TABLE messages_search USING fts5(subject, text, content='',"
    " tokenize='unicode61 remove_diacritics 0')",
    "CREATE VIRTUAL TABLE tickets_search USING fts5(subject, content='',"
    " tokenize='unicode61 remove_diacritics 0')",
)

# contentless tables: a row is removed by giving the values it was indexed with
_MESSAGE_VALUES = f"{{0}}.id, {{0}}.subject, substr({{0}}.text, 1, {SEARCHED_CHARS})"
_ADD_MESSAGE = (
    "INSERT INTO messages_search (rowid, subject, text) VALUES (" + _MESSAGE_VALUES + ");"
)
_DROP_MESSAGE = (
    "INSERT INTO messages_search (messages_search, rowid, subject, text)"
    " VALUES ('delete', " + _MESSAGE_VALUES + ");"
)
_ADD_TICKET = "INSERT INTO tickets_search (rowid, subject) VALUES ({0}.id, {0}.subject);"
_DROP_TICKET = (
    "INSERT INTO tickets_search (tickets_search, rowid, subject)"
    " VALUES ('delete', {0}.id, {0}.subject);"
)

SQLITE_TRIGGERS = {
    "messages_search_insert": "AFTER INSERT ON messages BEGIN "
    + _ADD_MESSAGE.format("new")
    + " END",
    "messages_search_delete": "AFTER DELETE ON messages BEGIN "
    + _DROP_MESSAGE.format("old")
    + " END",
    "messages_search_update": "AFTER UPDATE OF subject, text ON messages BEGIN "
    + _DROP_MESSAGE.format("old")
    + " "
    + _ADD_MESSAGE.format("new")
    + " END",
    "tickets_search_insert": "AFTER INSERT ON tickets BEGIN " + _ADD_TICKET.format("new") + " END",
    "tickets_search_delete": "AFTER DELETE ON tickets BEGIN " + _DROP_TICKET.format("old") + " END",
    "tickets_search_update": "AFTER UPDATE OF subject ON tickets BEGIN "
    + _DROP_TICKET.format("old")
    + " "
    + _ADD_TICKET.format("new")
    + " END",
}


def create_sqlite_triggers() -> None:
    for name, body in SQLITE_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in _SQLITE_TABLES:
            op.execute(table)
        create_sqlite_triggers()
        op.execute(
            "INSERT INTO messages_search (rowid, subject, text)"
            f" SELECT id, subject, substr(text, 1, {SEARCHED_CHARS}) FROM messages"
        )
        op.execute("INSERT INTO tickets_search (rowid, subject) SELECT id, subject FROM tickets")
        return
    message = _pg_vector(f"subject || ' ' || left(text, {SEARCHED_CHARS})")
    op.execute(
        f"ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS ({message}) STORED"
    )
    op.execute("CREATE INDEX ix_messages_search ON messages USING gin (search)")
    ticket = _pg_vector("subject")
    op.execute(
        f"ALTER TABLE tickets ADD COLUMN search tsvector GENERATED ALWAYS AS ({ticket}) STORED"
    )
    op.execute("CREATE INDEX ix_tickets_search ON tickets USING gin (search)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS messages_search")
        op.execute("DROP TABLE IF EXISTS tickets_search")
        return
    op.execute("DROP INDEX IF EXISTS ix_tickets_search")
    op.execute("ALTER TABLE tickets DROP COLUMN IF EXISTS search")
    op.execute("DROP INDEX IF EXISTS ix_messages_search")
    op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS search")
