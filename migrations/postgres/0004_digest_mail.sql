-- Mailed digests (docs/digest.md, "Mailed digests"). Keep in step with migrations/sqlite/0004.
-- A digest of one period goes to one recipient once, however many `rebound serve` processes share the
-- database: the scheduler inserts with ON CONFLICT (dedup_key) DO NOTHING. SPF reports leave it NULL
-- (NULLs never collide in a unique index).
ALTER TABLE outgoing_reports ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX outgoing_reports_dedup ON outgoing_reports (dedup_key);
