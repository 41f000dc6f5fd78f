-- Stable ids of log lines and metric points (given when emitted): a redelivered entry is stored once.
-- Rows written before this migration have none (NULL never conflicts).
ALTER TABLE logs ADD COLUMN entry_id VARCHAR(128);
CREATE UNIQUE INDEX logs_entry_id ON logs (entry_id);
ALTER TABLE metrics ADD COLUMN entry_id VARCHAR(128);
CREATE UNIQUE INDEX metrics_entry_id ON metrics (entry_id);
