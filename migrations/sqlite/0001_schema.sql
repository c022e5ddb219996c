-- rebound schema, SQLite flavour. Keep in step with migrations/postgres/0001_schema.sql and docs/sql.md.
-- Times are TEXT 'YYYY-MM-DD HH:MM:SS' in UTC, so date(), strftime() and string comparison work on them.
-- Booleans are INTEGER 0/1. Identifiers are INTEGER PRIMARY KEY (rowid aliases).

-- Every message ever received, raw, deduplicated by the SHA-256 of its bytes.
CREATE TABLE messages (
    id                INTEGER PRIMARY KEY,
    sha256            TEXT    NOT NULL UNIQUE CHECK (length(sha256) = 64),
    received_at       TEXT    NOT NULL DEFAULT (datetime('now')),
    source            TEXT    NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('dsn', 'bounce', 'arf', 'autoreply', 'unparsed')),
    size              INTEGER NOT NULL CHECK (size >= 0),
    envelope_from     TEXT,
    envelope_to       TEXT,
    report_message_id TEXT,
    report_from       TEXT,
    report_subject    TEXT,
    report_date       TEXT,
    parse_error       TEXT,
    raw               BLOB    NOT NULL   -- last, so scans of the other columns never read it
);
CREATE INDEX messages_received_at ON messages (received_at);
CREATE INDEX messages_kind ON messages (kind, received_at);

-- One row per recipient a message reports on, with its classification.
CREATE TABLE bounces (
    id                  INTEGER PRIMARY KEY,
    message_id          INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position            INTEGER NOT NULL CHECK (position >= 0),
    recipient           TEXT    NOT NULL,
    recipient_domain    TEXT,
    original_recipient  TEXT,
    action              TEXT,
    status              TEXT,
    reply_code          INTEGER,
    diagnostic_type     TEXT,
    diagnostic          TEXT,
    smtp_command        TEXT,
    remote_mta          TEXT,
    reporting_mta       TEXT,
    arrival_date        TEXT,
    last_attempt_date   TEXT,
    original_message_id TEXT,
    original_from       TEXT,
    original_to         TEXT,
    original_subject    TEXT,
    reason              TEXT    NOT NULL,
    hard_bounce         BOOLEAN NOT NULL CHECK (hard_bounce IN (0, 1)),
    confidence          REAL    NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    decided_by          TEXT    NOT NULL CHECK (decided_by IN ('model', 'status', 'user')),
    bounced_at          TEXT    NOT NULL,
    created_at          TEXT    NOT NULL DEFAULT (datetime('now')),
    UNIQUE (message_id, position)
);
CREATE INDEX bounces_bounced_at ON bounces (bounced_at, reason);
CREATE INDEX bounces_recipient ON bounces (recipient, bounced_at);
CREATE INDEX bounces_recipient_domain ON bounces (recipient_domain, bounced_at);
CREATE INDEX bounces_remote_mta ON bounces (remote_mta, bounced_at);
CREATE INDEX bounces_undecided ON bounces (bounced_at)
    WHERE reason IN ('onhold', 'undefined') OR confidence < 0.5;

-- Incoming ARF feedback reports (RFC 5965), including authentication failure reports (RFC 6591).
CREATE TABLE feedback_reports (
    id                        INTEGER PRIMARY KEY,
    message_id                INTEGER NOT NULL UNIQUE REFERENCES messages (id) ON DELETE CASCADE,
    feedback_type             TEXT    NOT NULL,
    version                   TEXT,
    user_agent                TEXT,
    auth_failure              TEXT,
    source_ip                 TEXT,
    source_port               INTEGER,
    reported_domain           TEXT,
    original_mail_from        TEXT,
    original_envelope_id      TEXT,
    arrival_date              TEXT,
    reporting_mta             TEXT,
    delivery_result           TEXT,
    identity_alignment        TEXT,
    incidents                 INTEGER,
    dkim_domain               TEXT,
    dkim_identity             TEXT,
    dkim_selector             TEXT,
    dkim_canonicalized_header TEXT,
    dkim_canonicalized_body   TEXT,
    dkim_selector_dns         TEXT,
    has_original              BOOLEAN NOT NULL CHECK (has_original IN (0, 1)),
    received_at               TEXT    NOT NULL DEFAULT (datetime('now'))
);
CREATE INDEX feedback_reports_received_at ON feedback_reports (received_at);
CREATE INDEX feedback_reports_reporting_mta ON feedback_reports (reporting_mta, received_at);
CREATE INDEX feedback_reports_reported_domain ON feedback_reports (reported_domain, received_at);

-- The multi-valued fields of a feedback report, as parsed, one row per value.
CREATE TABLE feedback_lists (
    report_id INTEGER NOT NULL REFERENCES feedback_reports (id) ON DELETE CASCADE,
    list      TEXT    NOT NULL CHECK (list IN ('reported_domain', 'reported_uri', 'original_rcpt_to',
                                               'authentication_results', 'spf_dns')),
    position  INTEGER NOT NULL,
    value     TEXT    NOT NULL,
    PRIMARY KEY (report_id, list, position)
);
CREATE INDEX feedback_lists_value ON feedback_lists (list, value);

-- Every field of the feedback part, in order, names as written.
CREATE TABLE feedback_fields (
    report_id INTEGER NOT NULL REFERENCES feedback_reports (id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    name      TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    PRIMARY KEY (report_id, position)
);

-- Every SPF check made for the MTA (policy server or `rebound spf check` when recorded), one row per identity.
CREATE TABLE spf_checks (
    id          INTEGER PRIMARY KEY,
    checked_at  TEXT    NOT NULL DEFAULT (datetime('now')),
    client_ip   TEXT    NOT NULL,
    client_name TEXT,
    helo        TEXT,
    mail_from   TEXT,
    rcpt_to     TEXT,
    queue_id    TEXT,
    identity    TEXT    NOT NULL CHECK (identity IN ('helo', 'mail_from')),
    domain      TEXT    NOT NULL,
    result      TEXT    NOT NULL CHECK (result IN ('pass', 'fail', 'softfail', 'neutral', 'none',
                                                   'temperror', 'permerror')),
    explanation TEXT,
    record      TEXT,
    mechanism   TEXT,
    action      TEXT
);
CREATE INDEX spf_checks_checked_at ON spf_checks (checked_at);
CREATE INDEX spf_checks_failures ON spf_checks (domain, client_ip, checked_at)
    WHERE result IN ('fail', 'softfail', 'permerror');

-- The outbox: every report (or mailed digest) to send, written in the same transaction as its cause.
CREATE TABLE outgoing_reports (
    id              INTEGER PRIMARY KEY,
    created_at      TEXT    NOT NULL DEFAULT (datetime('now')),
    check_id        INTEGER REFERENCES spf_checks (id) ON DELETE SET NULL,
    kind            TEXT    NOT NULL,
    domain          TEXT,
    report_address  TEXT    NOT NULL,
    mail_from       TEXT,
    message         BLOB    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'suppressed')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TEXT    NOT NULL DEFAULT (datetime('now')),
    last_error      TEXT,
    sent_at         TEXT,
    claimed_by      TEXT,
    claimed_until   TEXT
);
CREATE INDEX outgoing_reports_due ON outgoing_reports (status, next_attempt_at);
CREATE INDEX outgoing_reports_address ON outgoing_reports (report_address, created_at);
CREATE INDEX outgoing_reports_check ON outgoing_reports (check_id);

-- Every delivery attempt of an outbox entry.
CREATE TABLE report_attempts (
    id           INTEGER PRIMARY KEY,
    report_id    INTEGER NOT NULL REFERENCES outgoing_reports (id) ON DELETE CASCADE,
    attempted_at TEXT    NOT NULL DEFAULT (datetime('now')),
    outcome      TEXT    NOT NULL CHECK (outcome IN ('sent', 'temporary', 'permanent')),
    smtp_code    INTEGER,
    detail       TEXT,
    duration_ms  INTEGER
);
CREATE INDEX report_attempts_report ON report_attempts (report_id, attempted_at);

-- Fixed-window counters (per report address, global caps), shared by every process using the database.
CREATE TABLE rate_limits (
    key          TEXT    NOT NULL,
    window_start TEXT    NOT NULL,
    count        INTEGER NOT NULL DEFAULT 0 CHECK (count >= 0),
    PRIMARY KEY (key, window_start)
);

-- Reasons and users' custom categories. Built-ins are seeded from the taxonomy by `Store::migrate`.
CREATE TABLE categories (
    name        TEXT    PRIMARY KEY CHECK (length(name) > 0),
    description TEXT,
    hard_bounce BOOLEAN NOT NULL DEFAULT 0 CHECK (hard_bounce IN (0, 1)),
    builtin     BOOLEAN NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
    created_at  TEXT    NOT NULL DEFAULT (datetime('now'))
);

-- Reasons confirmed by people; the training data of the classifier's next version.
CREATE TABLE labels (
    id          INTEGER PRIMARY KEY,
    bounce_id   INTEGER NOT NULL REFERENCES bounces (id) ON DELETE CASCADE,
    reason      TEXT    NOT NULL REFERENCES categories (name) ON UPDATE CASCADE,
    labelled_by TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (datetime('now'))
);
CREATE INDEX labels_bounce ON labels (bounce_id, created_at);
CREATE INDEX labels_created_at ON labels (created_at);

-- Every classifier version trained; at most one is active.
CREATE TABLE model_versions (
    id         INTEGER PRIMARY KEY,
    created_at TEXT    NOT NULL DEFAULT (datetime('now')),
    trained_on TEXT    NOT NULL,
    metrics    TEXT    NOT NULL DEFAULT '{}',
    path       TEXT,
    weights    BLOB,
    active     BOOLEAN NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    CHECK (path IS NOT NULL OR weights IS NOT NULL)
);
CREATE UNIQUE INDEX model_versions_one_active ON model_versions (active) WHERE active;

-- Bounces per UTC day, reason and hard/soft.
CREATE VIEW bounces_by_reason_daily AS
SELECT date(bounced_at)          AS day,
       reason,
       hard_bounce,
       COUNT(*)                  AS bounces,
       COUNT(DISTINCT recipient) AS recipients
FROM bounces
GROUP BY date(bounced_at), reason, hard_bounce;

-- Addresses whose latest event is a hard bounce: the list to suppress.
CREATE VIEW suppression_list AS
SELECT recipient, recipient_domain, reason, status, reply_code, diagnostic, remote_mta,
       bounced_at AS last_bounced_at, bounce_id, hard_bounces
FROM (
    SELECT b.recipient, b.recipient_domain, b.reason, b.status, b.reply_code, b.diagnostic, b.remote_mta,
           b.bounced_at, b.hard_bounce, b.id AS bounce_id,
           ROW_NUMBER() OVER (PARTITION BY b.recipient ORDER BY b.bounced_at DESC, b.id DESC) AS latest,
           SUM(CASE WHEN b.hard_bounce THEN 1 ELSE 0 END) OVER (PARTITION BY b.recipient) AS hard_bounces
    FROM bounces b
) AS ranked
WHERE latest = 1 AND hard_bounce;

-- SPF failures (fail, softfail, permerror) by checked domain, source IP and result.
CREATE VIEW spf_failures_by_domain_ip AS
SELECT domain, client_ip, result,
       COUNT(*)        AS failures,
       MIN(checked_at) AS first_seen,
       MAX(checked_at) AS last_seen
FROM spf_checks
WHERE result IN ('fail', 'softfail', 'permerror')
GROUP BY domain, client_ip, result;

-- Incoming feedback reports by reporter (Reporting-MTA, else the report's From) and type.
CREATE VIEW reports_received_by_reporter AS
SELECT COALESCE(f.reporting_mta, m.report_from, '(unknown)') AS reporter,
       f.feedback_type,
       f.auth_failure,
       COUNT(*)                          AS reports,
       COUNT(DISTINCT f.reported_domain) AS domains,
       MIN(f.received_at)                AS first_received,
       MAX(f.received_at)                AS last_received
FROM feedback_reports f
JOIN messages m ON m.id = f.message_id
GROUP BY COALESCE(f.reporting_mta, m.report_from, '(unknown)'), f.feedback_type, f.auth_failure;

-- Undecided or low-confidence failures nobody has labelled yet.
CREATE VIEW labelling_queue AS
SELECT b.id AS bounce_id, b.bounced_at, b.recipient, b.recipient_domain, b.action, b.status, b.reply_code,
       b.smtp_command, b.diagnostic, b.remote_mta, b.reason, b.confidence, b.decided_by, b.message_id
FROM bounces b
WHERE (b.reason IN ('onhold', 'undefined') OR b.confidence < 0.5)
  AND b.reason NOT IN ('delivered', 'vacation', 'feedback')
  AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.bounce_id = b.id);
