"""Forward-only schema migrations; step N brings ``PRAGMA user_version`` to N.

Never edit a step that has shipped: add a new one. Each step is a list of SQL
statements run in one transaction.

Step 1: suppression list and its history (foundation).
Step 2: the relay's queue (messages, per-recipient delivery state) and events.
Step 3: evidence kinds on entries and history, more history actions, entries the
storm breaker holds back (pending), and DNS answers waiting for a second sighting.
Step 4: per-day delivery counts for the report, and when each message's
transaction began (its MAIL FROM), for the delivery log's delays.
Step 5: soft bounces counted per address until they add up to a suppression.
Step 6: messages the milter sent with a signed return path (their own token id space).
Step 7: the fleet's outbox and sync state (store.backend = "postgresql"; unused otherwise).
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # 1: suppression list + history  (owned by smtpguard/store/suppression.py)
    [
        # One row per suppressed address or whole domain, keyed by (domain, local
        # part); a whole-domain entry has local = ''. WITHOUT ROWID clusters rows
        # on that key: a lookup finds the address entry and its domain's entry in
        # one B-tree seek, listing one domain is a range scan, and an import
        # writes one B-tree instead of a table plus indexes.
        """CREATE TABLE suppression (
            domain     TEXT    NOT NULL,
            local      TEXT    NOT NULL,
            reason     TEXT    NOT NULL,
            status     TEXT    NOT NULL DEFAULT '',
            reply_code TEXT    NOT NULL DEFAULT '',
            diagnostic TEXT    NOT NULL DEFAULT '',
            source     TEXT    NOT NULL,
            first_seen REAL    NOT NULL,
            last_seen  REAL    NOT NULL,
            count      INTEGER NOT NULL DEFAULT 1,
            expires    REAL,
            PRIMARY KEY (domain, local)
        ) WITHOUT ROWID""",
        "CREATE INDEX suppression_expires ON suppression (expires) WHERE expires IS NOT NULL",
        # Every change, kept after the entry itself is removed or expires: the
        # answer to "why is (or was) this address suppressed, and who did it?".
        # Clustered on (address, id), so one address's history is a range scan
        # and a bulk import writes one B-tree, not a table plus an index. The ids
        # (global order of changes) come from suppression_meta.history_seq,
        # advanced under the write lock.
        """CREATE TABLE suppression_history (
            address    TEXT    NOT NULL,
            id         INTEGER NOT NULL,
            kind       TEXT    NOT NULL,
            action     TEXT    NOT NULL
                CHECK (action IN ('added', 'escalated', 'updated', 'removed', 'expired')),
            at         REAL    NOT NULL,
            actor      TEXT    NOT NULL,
            note       TEXT    NOT NULL DEFAULT '',
            old_reason TEXT    NOT NULL DEFAULT '',
            new_reason TEXT    NOT NULL DEFAULT '',
            source     TEXT    NOT NULL DEFAULT '',
            status     TEXT    NOT NULL DEFAULT '',
            reply_code TEXT    NOT NULL DEFAULT '',
            diagnostic TEXT    NOT NULL DEFAULT '',
            PRIMARY KEY (address, id)
        ) WITHOUT ROWID""",
        """CREATE TABLE suppression_meta (
            key   TEXT    NOT NULL PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO suppression_meta (key, value) VALUES ('history_seq', 0)",
    ],
    # 2: queue + events  (owned by smtpguard/store/queue.py)
    [
        """CREATE TABLE queue_messages (
            id             INTEGER PRIMARY KEY AUTOINCREMENT,
            kind           TEXT    NOT NULL DEFAULT 'mail' CHECK (kind IN ('mail', 'dsn')),
            parent_id      INTEGER,
            mail_from      TEXT    NOT NULL,
            envid          TEXT    NOT NULL DEFAULT '',
            ret            TEXT    NOT NULL DEFAULT '',
            smtputf8       INTEGER NOT NULL DEFAULT 0,
            body_type      TEXT    NOT NULL DEFAULT '7BIT',
            size           INTEGER NOT NULL,
            received_at    REAL    NOT NULL,
            auto_submitted INTEGER NOT NULL DEFAULT 0,
            client         TEXT    NOT NULL DEFAULT '',
            helo           TEXT    NOT NULL DEFAULT '',
            auth_user      TEXT    NOT NULL DEFAULT '',
            held           INTEGER NOT NULL DEFAULT 0,
            done_at        REAL
        )""",
        "CREATE INDEX queue_messages_done ON queue_messages (done_at)",
        # Bodies apart from the metadata: listing the queue never reads them, and a
        # finished message's body is deleted while its history stays.
        """CREATE TABLE queue_bodies (
            message_id INTEGER PRIMARY KEY REFERENCES queue_messages (id) ON DELETE CASCADE,
            data       BLOB NOT NULL
        )""",
        """CREATE TABLE queue_recipients (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id   INTEGER NOT NULL REFERENCES queue_messages (id) ON DELETE CASCADE,
            address      TEXT    NOT NULL,
            domain       TEXT    NOT NULL,
            notify       TEXT    NOT NULL DEFAULT '',
            orcpt        TEXT    NOT NULL DEFAULT '',
            state        TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN
                ('queued', 'active', 'held', 'delivered', 'bounced', 'expired', 'deleted')),
            attempts     INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL    NOT NULL,
            last_attempt REAL,
            last_code    TEXT    NOT NULL DEFAULT '',
            last_status  TEXT    NOT NULL DEFAULT '',
            last_reason  TEXT    NOT NULL DEFAULT '',
            last_diag    TEXT    NOT NULL DEFAULT '',
            last_host    TEXT    NOT NULL DEFAULT ''
        )""",
        # Due work is found through this index, never by scanning the queue.
        "CREATE INDEX queue_recipients_due ON queue_recipients (state, next_attempt)",
        "CREATE INDEX queue_recipients_message ON queue_recipients (message_id)",
        """CREATE TABLE queue_events (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            ts          REAL    NOT NULL,
            message_id  INTEGER NOT NULL,
            recipient   TEXT    NOT NULL DEFAULT '',
            event       TEXT    NOT NULL,
            code        TEXT    NOT NULL DEFAULT '',
            status      TEXT    NOT NULL DEFAULT '',
            reason      TEXT    NOT NULL DEFAULT '',
            detail      TEXT    NOT NULL DEFAULT '',
            remote_host TEXT    NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX queue_events_message ON queue_events (message_id, id)",
    ],
    # 3: evidence kinds, pending entries, DNS sightings  (smtpguard/store/suppression.py)
    [
        # Every entry says how we know: the evidence kind (smtpguard.policy.evidence).
        # Entries from before kinds were recorded get the least trusted kind of
        # their source; the relay's replies were mostly RCPT replies.
        "ALTER TABLE suppression ADD COLUMN evidence TEXT NOT NULL DEFAULT ''",
        """UPDATE suppression SET evidence = CASE source
            WHEN 'smtp-reply' THEN 'rcpt-reply' WHEN 'dsn' THEN 'dsn-unverified'
            ELSE source END""",
        # The history gains the evidence kind and four actions; SQLite cannot
        # change a CHECK constraint in place, so the table is rebuilt.
        """CREATE TABLE suppression_history_v3 (
            address    TEXT    NOT NULL,
            id         INTEGER NOT NULL,
            kind       TEXT    NOT NULL,
            action     TEXT    NOT NULL
                CHECK (action IN ('added', 'escalated', 'updated', 'removed', 'expired',
                                  'recorded', 'pending', 'confirmed', 'discarded')),
            at         REAL    NOT NULL,
            actor      TEXT    NOT NULL,
            note       TEXT    NOT NULL DEFAULT '',
            old_reason TEXT    NOT NULL DEFAULT '',
            new_reason TEXT    NOT NULL DEFAULT '',
            source     TEXT    NOT NULL DEFAULT '',
            status     TEXT    NOT NULL DEFAULT '',
            reply_code TEXT    NOT NULL DEFAULT '',
            diagnostic TEXT    NOT NULL DEFAULT '',
            evidence   TEXT    NOT NULL DEFAULT '',
            PRIMARY KEY (address, id)
        ) WITHOUT ROWID""",
        """INSERT INTO suppression_history_v3 (address, id, kind, action, at, actor, note,
            old_reason, new_reason, source, status, reply_code, diagnostic, evidence)
            SELECT address, id, kind, action, at, actor, note, old_reason, new_reason, source,
            status, reply_code, diagnostic, CASE source WHEN 'smtp-reply' THEN 'rcpt-reply'
            WHEN 'dsn' THEN 'dsn-unverified' ELSE source END FROM suppression_history""",
        "DROP TABLE suppression_history",
        "ALTER TABLE suppression_history_v3 RENAME TO suppression_history",
        # Suppressions the storm breaker held back: recorded, not enforced (a
        # separate table, so RCPT lookups never see them), until an operator or
        # fresh evidence confirms them, or a delivery to the address discards them.
        """CREATE TABLE suppression_pending (
            domain      TEXT    NOT NULL,
            local       TEXT    NOT NULL,
            reason      TEXT    NOT NULL,
            status      TEXT    NOT NULL DEFAULT '',
            reply_code  TEXT    NOT NULL DEFAULT '',
            diagnostic  TEXT    NOT NULL DEFAULT '',
            source      TEXT    NOT NULL,
            evidence    TEXT    NOT NULL,
            destination TEXT    NOT NULL,
            actor       TEXT    NOT NULL,
            first_seen  REAL    NOT NULL,
            last_seen   REAL    NOT NULL,
            count       INTEGER NOT NULL DEFAULT 1,
            expires     REAL,
            PRIMARY KEY (domain, local)
        ) WITHOUT ROWID""",
        "CREATE INDEX suppression_pending_destination ON suppression_pending (destination)",
        # A DNS answer (NXDOMAIN, null MX) suppresses its domain only when seen again
        # a while later: the first sighting waits here.
        """CREATE TABLE dns_sightings (
            domain     TEXT    NOT NULL PRIMARY KEY,
            reason     TEXT    NOT NULL,
            status     TEXT    NOT NULL DEFAULT '',
            reply_code TEXT    NOT NULL DEFAULT '',
            diagnostic TEXT    NOT NULL DEFAULT '',
            first_seen REAL    NOT NULL,
            last_seen  REAL    NOT NULL,
            count      INTEGER NOT NULL DEFAULT 1
        ) WITHOUT ROWID""",
    ],
    # 4: per-day counts for `smtpguard report`  (smtpguard/store/daily.py), arrival time
    [
        # One row per UTC day and destination domain, kept small on purpose: the
        # relay adds to it in batches, at most report.max_domains_per_day domains
        # a day (later ones count as '(other)'), and prunes days older than
        # report.keep. The queue's own rows go after keep_finished; these stay.
        """CREATE TABLE daily_deliveries (
            day        TEXT    NOT NULL,
            domain     TEXT    NOT NULL,
            sent       INTEGER NOT NULL DEFAULT 0,
            deferred   INTEGER NOT NULL DEFAULT 0,
            bounced    INTEGER NOT NULL DEFAULT 0,
            expired    INTEGER NOT NULL DEFAULT 0,
            suppressed INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, domain)
        ) WITHOUT ROWID""",
        # Why attempts failed, per day: the classifier's reasons (a bounded vocabulary).
        """CREATE TABLE daily_reasons (
            day    TEXT    NOT NULL,
            status TEXT    NOT NULL,
            reason TEXT    NOT NULL,
            count  INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, status, reason)
        ) WITHOUT ROWID""",
        # When the client's MAIL FROM came (received_at is the commit): the time
        # before the queue in the delivery log's delays=a/b/c/d. 0 = not known.
        "ALTER TABLE queue_messages ADD COLUMN arrived_at REAL NOT NULL DEFAULT 0",
    ],
    # 5: soft bounces counted toward a suppression  (smtpguard/store/suppression.py)
    [
        # One row per address with soft bounces since its last delivery: the policy
        # suppresses it after policy.soft_bounce_limit of them spanning at least
        # policy.soft_bounce_span; a delivery deletes the row.
        """CREATE TABLE soft_bounces (
            domain     TEXT    NOT NULL,
            local      TEXT    NOT NULL,
            reason     TEXT    NOT NULL,
            first_seen REAL    NOT NULL,
            last_seen  REAL    NOT NULL,
            count      INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (domain, local)
        ) WITHOUT ROWID""",
        "CREATE INDEX soft_bounces_last_seen ON soft_bounces (last_seen)",
    ],
    # 6: milter-sent messages  (smtpguard/store/sent.py)
    [
        # One row per message whose envelope sender the milter rewrote to a signed
        # return path: the token names this row (offset into an id space of its own,
        # apart from the queue's), so returned mail can ask "was that message sent to
        # that recipient?" as it does for the relay's queue. Deleted once every token
        # that names it has expired.
        """CREATE TABLE milter_messages (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            postfix_qid TEXT    NOT NULL DEFAULT '',
            sender      TEXT    NOT NULL DEFAULT '',
            recipient   TEXT    NOT NULL,
            sent_at     REAL    NOT NULL
        )""",
        "CREATE INDEX milter_messages_sent_at ON milter_messages (sent_at)",
    ],
    # 7: the fleet outbox  (smtpguard/store/outbox.py)
    [
        # With store.backend = "postgresql", every change to the list is written here in
        # the transaction that makes it locally; the replicator pushes the rows to
        # PostgreSQL in id order and deletes them once PostgreSQL has committed them.
        # (domain, local) names the entry an operation is about ('' for none): a pull
        # leaves such entries alone until their operations are pushed.
        """CREATE TABLE fleet_outbox (
            id      INTEGER PRIMARY KEY AUTOINCREMENT,
            at      REAL    NOT NULL,
            op      TEXT    NOT NULL,
            domain  TEXT    NOT NULL DEFAULT '',
            local   TEXT    NOT NULL DEFAULT '',
            payload TEXT    NOT NULL
        )""",
        "CREATE INDEX fleet_outbox_key ON fleet_outbox (domain, local)",
        # node (this data dir is a fleet node's cache), instance (its id in
        # PostgreSQL), last_seq (the last change applied), synced_at (epoch seconds).
        """CREATE TABLE fleet_state (
            key   TEXT NOT NULL PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
    ],
]
