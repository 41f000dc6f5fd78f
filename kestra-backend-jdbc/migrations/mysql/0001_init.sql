-- Kestra JDBC schema, PostgreSQL dialect. Dates are epoch milliseconds (BIGINT) on every dialect; entities
-- are stored as a JSON document (`doc`) next to the indexed columns the filters use.

-- Competing queue: one row per (message, consumer group); delayed messages have a future visible_at.
CREATE TABLE queue (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    topic VARCHAR(64) NOT NULL,
    group_name VARCHAR(32) NOT NULL,
    msg_key VARCHAR(512) NOT NULL,
    payload LONGBLOB NOT NULL,
    visible_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_by VARCHAR(128),
    claimed_until BIGINT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- Claims scan one (topic, group) in id order, filtering on visible_at inside the index.
CREATE INDEX queue_due ON queue (topic, group_name, id, visible_at);
-- Per-key ordering: the rows of a key in id order, and the keys that have a live claim.
CREATE INDEX queue_key ON queue (topic, group_name, msg_key, id);
CREATE INDEX queue_claimed ON queue (topic, group_name, claimed_until, msg_key);

CREATE TABLE queue_dead_letter (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    original_id BIGINT,
    topic VARCHAR(64) NOT NULL,
    group_name VARCHAR(32),
    msg_key VARCHAR(512),
    payload LONGBLOB,
    reason LONGTEXT NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Broadcast: read by offset, purged after a short retention.
CREATE TABLE queue_broadcast (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    topic VARCHAR(64) NOT NULL,
    msg_key VARCHAR(512) NOT NULL,
    payload LONGBLOB NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX queue_broadcast_topic ON queue_broadcast (topic, id);
CREATE INDEX queue_broadcast_created ON queue_broadcast (created_at);

CREATE TABLE executions (
    id VARCHAR(128) PRIMARY KEY,
    tenant_id VARCHAR(64) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    flow_id VARCHAR(255) NOT NULL,
    state_current VARCHAR(32) NOT NULL,
    start_date BIGINT NOT NULL,
    end_date BIGINT,
    parent_id VARCHAR(128),
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    updated BIGINT NOT NULL,
    doc LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX executions_namespace ON executions (tenant_id, namespace, start_date);
CREATE INDEX executions_flow ON executions (tenant_id, namespace, flow_id, start_date);
CREATE INDEX executions_state ON executions (tenant_id, state_current, start_date);
CREATE INDEX executions_start ON executions (tenant_id, start_date);
CREATE INDEX executions_parent ON executions (parent_id);

CREATE TABLE execution_labels (
    execution_id VARCHAR(128) NOT NULL,
    tenant_id VARCHAR(64) NOT NULL,
    label_key VARCHAR(255) NOT NULL,
    label_value VARCHAR(1024) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX execution_labels_execution ON execution_labels (execution_id);
CREATE INDEX execution_labels_key ON execution_labels (tenant_id, label_key, label_value(255));

-- Every revision of every flow; the latest one has is_latest; a deletion is a revision with deleted.
CREATE TABLE flows (
    tenant_id VARCHAR(64) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    flow_id VARCHAR(255) NOT NULL,
    revision INTEGER NOT NULL,
    is_latest BOOLEAN NOT NULL,
    deleted BOOLEAN NOT NULL,
    disabled BOOLEAN NOT NULL,
    updated BIGINT NOT NULL,
    labels LONGTEXT NOT NULL,
    source LONGTEXT NOT NULL,
    doc LONGTEXT NOT NULL,
    PRIMARY KEY (tenant_id, namespace, flow_id, revision)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX flows_latest ON flows (tenant_id, is_latest, namespace);

CREATE TABLE flow_labels (
    tenant_id VARCHAR(64) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    flow_id VARCHAR(255) NOT NULL,
    label_key VARCHAR(255) NOT NULL,
    label_value VARCHAR(1024) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX flow_labels_flow ON flow_labels (tenant_id, namespace, flow_id);

CREATE TABLE triggers (
    uid VARCHAR(700) PRIMARY KEY,
    tenant_id VARCHAR(64) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    flow_id VARCHAR(255) NOT NULL,
    trigger_id VARCHAR(255) NOT NULL,
    disabled BOOLEAN NOT NULL,
    next_execution_date BIGINT,
    updated BIGINT NOT NULL,
    locked_by VARCHAR(128),
    locked_until BIGINT,
    doc LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX triggers_due ON triggers (disabled, next_execution_date);
CREATE INDEX triggers_flow ON triggers (tenant_id, namespace, flow_id);

CREATE TABLE logs (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    tenant_id VARCHAR(64) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    flow_id VARCHAR(255) NOT NULL,
    task_id VARCHAR(255),
    execution_id VARCHAR(128),
    task_run_id VARCHAR(128),
    trigger_id VARCHAR(255),
    lvl INTEGER NOT NULL,
    ts BIGINT NOT NULL,
    message LONGTEXT NOT NULL,
    doc LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX logs_execution ON logs (tenant_id, execution_id, ts);
CREATE INDEX logs_namespace ON logs (tenant_id, namespace, ts);
CREATE INDEX logs_ts ON logs (tenant_id, ts);

CREATE TABLE metrics (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    tenant_id VARCHAR(64) NOT NULL,
    namespace VARCHAR(255) NOT NULL,
    flow_id VARCHAR(255) NOT NULL,
    execution_id VARCHAR(128) NOT NULL,
    task_run_id VARCHAR(128),
    name VARCHAR(255) NOT NULL,
    ts BIGINT NOT NULL,
    doc LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX metrics_execution ON metrics (tenant_id, execution_id, ts);

CREATE TABLE service_instances (
    id VARCHAR(128) PRIMARY KEY,
    service_type VARCHAR(32) NOT NULL,
    state VARCHAR(32) NOT NULL,
    updated BIGINT NOT NULL,
    doc LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Worker jobs being run, so that a dead worker's jobs can be resubmitted.
CREATE TABLE worker_jobs_running (
    task_run_id VARCHAR(128) PRIMARY KEY,
    tenant_id VARCHAR(64) NOT NULL,
    execution_id VARCHAR(128) NOT NULL,
    worker_id VARCHAR(128) NOT NULL,
    updated BIGINT NOT NULL,
    doc LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX worker_jobs_running_worker ON worker_jobs_running (worker_id);

-- Executor state used by UnitOfWork::load_state / save_state: (kind, key) -> JSON.
CREATE TABLE executor_state (
    kind VARCHAR(64) NOT NULL,
    state_key VARCHAR(512) NOT NULL,
    updated BIGINT NOT NULL,
    doc LONGTEXT NOT NULL,
    PRIMARY KEY (kind, state_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
