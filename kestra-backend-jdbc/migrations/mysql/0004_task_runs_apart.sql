-- Task runs stored apart from their execution (cost linear in an execution's size): an execution row's
-- doc holds the execution without its task runs; each task run is a row of execution_task_runs at
-- its position in the list (0 .. task_runs - 1). task_runs is NULL for rows written before this
-- migration (their task runs are still in doc; they are split when next written). revision is a
-- random token written with every write of the row, whoever writes it (the executor compares it,
-- under the row lock, with the one it saved).
ALTER TABLE executions ADD COLUMN task_runs BIGINT;
ALTER TABLE executions ADD COLUMN revision VARCHAR(32) NOT NULL DEFAULT '';
CREATE TABLE execution_task_runs (
    execution_id VARCHAR(128) NOT NULL,
    pos BIGINT NOT NULL,
    doc LONGTEXT NOT NULL,
    PRIMARY KEY (execution_id, pos)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
