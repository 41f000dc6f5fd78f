-- Kestra JDBC schema, PostgreSQL dialect. Dates are epoch milliseconds (BIGINT) on every dialect; entities
-- are stored as a JSON document (`doc`) next to the indexed columns the filters use.

-- Competing queue: one row per (message, consumer group); delayed messages have a future visible_at.
CREATE TABLE queue (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    group_name TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    payload BYTEA NOT NULL,
    visible_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_until BIGINT
);
-- Claims scan one (topic, group) in id order, filtering on visible_at inside the index.
CREATE INDEX queue_due ON queue (topic, group_name, id, visible_at);
-- Per-key ordering: the rows of a key in id order, and the keys that have a live claim.
CREATE INDEX queue_key ON queue (topic, group_name, msg_key, id);
CREATE INDEX queue_claimed ON queue (topic, group_name, claimed_until, msg_key);

CREATE TABLE queue_dead_letter (
    id BIGSERIAL PRIMARY KEY,
    original_id BIGINT,
    topic TEXT NOT NULL,
    group_name TEXT,
    msg_key TEXT,
    payload BYTEA,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Broadcast: read by offset, purged after a short retention.
CREATE TABLE queue_broadcast (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX queue_broadcast_topic ON queue_broadcast (topic, id);
CREATE INDEX queue_broadcast_created ON queue_broadcast (created_at);

CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    state_current TEXT NOT NULL,
    start_date BIGINT NOT NULL,
    end_date BIGINT,
    parent_id TEXT,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    updated BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX executions_namespace ON executions (tenant_id, namespace, start_date);
CREATE INDEX executions_flow ON executions (tenant_id, namespace, flow_id, start_date);
CREATE INDEX executions_state ON executions (tenant_id, state_current, start_date);
CREATE INDEX executions_start ON executions (tenant_id, start_date);
CREATE INDEX executions_parent ON executions (parent_id);

CREATE TABLE execution_labels (
    execution_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    label_key TEXT NOT NULL,
    label_value TEXT NOT NULL
);
CREATE INDEX execution_labels_execution ON execution_labels (execution_id);
CREATE INDEX execution_labels_key ON execution_labels (tenant_id, label_key, label_value);

-- Every revision of every flow; the latest one has is_latest; a deletion is a revision with deleted.
CREATE TABLE flows (
    tenant_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    is_latest BOOLEAN NOT NULL,
    deleted BOOLEAN NOT NULL,
    disabled BOOLEAN NOT NULL,
    updated BIGINT NOT NULL,
    labels TEXT NOT NULL,
    source TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (tenant_id, namespace, flow_id, revision)
);
CREATE INDEX flows_latest ON flows (tenant_id, is_latest, namespace);

CREATE TABLE flow_labels (
    tenant_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    label_key TEXT NOT NULL,
    label_value TEXT NOT NULL
);
CREATE INDEX flow_labels_flow ON flow_labels (tenant_id, namespace, flow_id);

CREATE TABLE triggers (
    uid TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    trigger_id TEXT NOT NULL,
    disabled BOOLEAN NOT NULL,
    next_execution_date BIGINT,
    updated BIGINT NOT NULL,
    locked_by TEXT,
    locked_until BIGINT,
    doc TEXT NOT NULL
);
CREATE INDEX triggers_due ON triggers (disabled, next_execution_date);
CREATE INDEX triggers_flow ON triggers (tenant_id, namespace, flow_id);

CREATE TABLE logs (
    id BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    task_id TEXT,
    execution_id TEXT,
    task_run_id TEXT,
    trigger_id TEXT,
    lvl INTEGER NOT NULL,
    ts BIGINT NOT NULL,
    message TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX logs_execution ON logs (tenant_id, execution_id, ts);
CREATE INDEX logs_namespace ON logs (tenant_id, namespace, ts);
CREATE INDEX logs_ts ON logs (tenant_id, ts);

CREATE TABLE metrics (
    id BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    task_run_id TEXT,
    name TEXT NOT NULL,
    ts BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX metrics_execution ON metrics (tenant_id, execution_id, ts);

CREATE TABLE service_instances (
    id TEXT PRIMARY KEY,
    service_type TEXT NOT NULL,
    state TEXT NOT NULL,
    updated BIGINT NOT NULL,
    doc TEXT NOT NULL
);

-- Worker jobs being run, so that a dead worker's jobs can be resubmitted.
CREATE TABLE worker_jobs_running (
    task_run_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    updated BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX worker_jobs_running_worker ON worker_jobs_running (worker_id);

-- Executor state used by UnitOfWork::load_state / save_state: (kind, key) -> JSON.
CREATE TABLE executor_state (
    kind TEXT NOT NULL,
    state_key TEXT NOT NULL,
    updated BIGINT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, state_key)
);
