-- Digest support (docs/digest.md; docs/sql.md, "Digest support"). Keep in step with migrations/sqlite/0003.
-- Indexes that let `rebound digest` count instead of read: every figure of a digest is a range count on one
-- of them (per reason and time bucket, per SPF result), so a digest over a million bounces takes seconds.

-- Bounces by reason and time, hard or not, and the recipient (for the suppression list's "latest event").
CREATE INDEX bounces_digest ON bounces (reason, bounced_at, hard_bounce, recipient);

-- SPF checks by result and time, and the identity checked.
CREATE INDEX spf_checks_digest ON spf_checks (result, checked_at, identity);
