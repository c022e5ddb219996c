-- What the classifier (or an earlier label) had said before a person's label replaced it in `bounces`,
-- so the classifier's mistakes stay measurable. Keep in step with migrations/postgres/0002_label_history.sql.
ALTER TABLE labels ADD COLUMN previous_reason TEXT;
ALTER TABLE labels ADD COLUMN previous_confidence REAL;
ALTER TABLE labels ADD COLUMN previous_decided_by TEXT;
