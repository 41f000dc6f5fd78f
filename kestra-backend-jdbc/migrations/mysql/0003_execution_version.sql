-- The version of each execution document (metadata.version, bumped by every save of the executor):
-- a repository save of an older version never overwrites a newer one.
ALTER TABLE executions ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
