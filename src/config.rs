//! Configuration: one optional YAML file using Kestra's keys, every key overridable by an environment
//! variable, and defaults that run the embedded engine (SQLite + local storage under `./data`) with no
//! file at all.
//!
//! | key | env var | default |
//! | --- | --- | --- |
//! | `kestra.repository.type` | `KESTRA_REPOSITORY_TYPE` | `sqlite` (also `postgres`, `mysql`; `elasticsearch` with the Kafka queue) |
//! | `kestra.queue.type` | `KESTRA_QUEUE_TYPE` | same as the repository (also `kafka`, feature `kafka`, with `elasticsearch` repositories) |
//! | `kestra.kafka.brokers` | `KESTRA_KAFKA_BROKERS` | none (required for `kafka`): `host:port[,host:port]` |
//! | `kestra.kafka.topic-prefix` | `KESTRA_KAFKA_TOPIC_PREFIX` | `kestra_` |
//! | `kestra.kafka.partitions` | `KESTRA_KAFKA_PARTITIONS` | `8` (partitions of every topic created) |
//! | `kestra.elasticsearch.url` | `KESTRA_ELASTICSEARCH_URL` | none (required for `elasticsearch`) |
//! | `kestra.elasticsearch.index-prefix` | `KESTRA_ELASTICSEARCH_INDEX_PREFIX` | `kestra_` |
//! | `kestra.elasticsearch.refresh` | `KESTRA_ELASTICSEARCH_REFRESH` | `true` (also `wait_for`, `false`: when writes become searchable) |
//! | `datasources.<type>.url` | `DATASOURCES_<TYPE>_URL` | `sqlite://<data dir>/kestra.db` |
//! | `datasources.<type>.username` / `.password` | `DATASOURCES_<TYPE>_USERNAME` / `_PASSWORD` | none |
//! | `kestra.storage.type` | `KESTRA_STORAGE_TYPE` | `local` (also `s3`, `gcs`, `azure` with their features) |
//! | `kestra.storage.local.base-path` | `KESTRA_STORAGE_LOCAL_BASE_PATH` | `<data dir>/storage` |
//! | `kestra.storage.s3.bucket` / `.region` / `.endpoint` / `.accessKey` / `.secretKey` / `.sessionToken` / `.prefix` | `KESTRA_STORAGE_S3_*` | AWS chain for credentials |
//! | `kestra.storage.gcs.bucket` / `.project-id` / `.serviceAccount` / `.endpoint` / `.anonymous` / `.prefix` | `KESTRA_STORAGE_GCS_*` | application default credentials |
//! | `kestra.storage.azure.container` / `.endpoint` / `.connection-string` / `.shared-key-account-name` / `.shared-key-account-access-key` / `.sas-token` / `.prefix` | `KESTRA_STORAGE_AZURE_*` | Azure chain for credentials |
//! | `kestra.server.port` (Kestra: `micronaut.server.port`) | `KESTRA_SERVER_PORT` | `8080` |
//! | `kestra.server.basic-auth.enabled` / `.username` / `.password` | `KESTRA_SERVER_BASIC_AUTH_*` | enabled, `admin@kestra.io` / `kestra` |
//! | `kestra.server.metrics.public` | `KESTRA_SERVER_METRICS_PUBLIC` | `false` (`GET /metrics` needs credentials) |
//! | `kestra.worker.threads` | `KESTRA_WORKER_THREADS` | 8 x CPUs |
//! | `kestra.worker.lease` | `KESTRA_WORKER_LEASE` | `PT2M` (a dead worker's jobs run again after it) |
//! | `kestra.server.liveness.heartbeatInterval` | `KESTRA_SERVER_LIVENESS_HEARTBEATINTERVAL` | `PT3S` |
//! | `kestra.server.liveness.timeout` | `KESTRA_SERVER_LIVENESS_TIMEOUT` | `PT45S` |
//! | `kestra.server.service.purge.retention` | `KESTRA_SERVER_SERVICE_PURGE_RETENTION` | `P30D` (a stopped service instance's state and row are purged after it) |
//! | `kestra.server.terminationGracePeriod` | `KESTRA_SERVER_TERMINATIONGRACEPERIOD` | `PT1M` (a worker's drain on SIGTERM; the delay of `AFTER_TERMINATION_GRACE_PERIOD`) |
//! | `kestra.server.worker-task-restart-strategy` | `KESTRA_SERVER_WORKER_TASK_RESTART_STRATEGY` | `AFTER_TERMINATION_GRACE_PERIOD` (or `IMMEDIATELY`, `NEVER`) |
//! | `kestra.server.worker-task-max-resubmissions` | `KESTRA_SERVER_WORKER_TASK_MAX_RESUBMISSIONS` | `3` |
//! | `kestra.data-dir` | `KESTRA_DATA_DIR` | `./data` |
//! | `kestra.limits.expression.max-value-size` | `KESTRA_LIMITS_EXPRESSION_MAX_VALUE_SIZE` | `16MB` (the largest string a filter or function builds) |
//! | `kestra.limits.expression.fuel` | `KESTRA_LIMITS_EXPRESSION_FUEL` | `1000000` (template steps per render) |
//! | `kestra.limits.task.max-output-size` | `KESTRA_LIMITS_TASK_MAX_OUTPUT_SIZE` | `10MB` (a task attempt's outputs as JSON) |
//! | `kestra.queue.max-message-size` | `KESTRA_QUEUE_MAX_MESSAGE_SIZE` | `8MB` on JDBC, `1MB` on Kafka (a message or execution document) |
//! | `kestra.limits.execution.max-task-runs` | `KESTRA_LIMITS_EXECUTION_MAX_TASK_RUNS` | `10000` (task runs of one execution; past it the execution FAILED naming the task; `0`: no limit) |
//! | `kestra.queue.max-delivery-attempts` | `KESTRA_QUEUE_MAX_DELIVERY_ATTEMPTS` | `3` (deliveries of one executor message or task job that each ended with the process dead, then it is dead-lettered and its execution or task run FAILED; `0`: no limit) |
//! | `kestra.repository.sqlite.initialize-empty` | `KESTRA_REPOSITORY_SQLITE_INITIALIZE_EMPTY` | `false` (an existing 0-byte SQLite file is refused) |
//!
//! Sizes are bytes or a number with a unit (`512KB`, `16MB`, `1GB`; 1 KB = 1024 bytes).
//!
//! Durations are ISO-8601 (`PT45S`) or a number with a unit (`45s`, `500ms`, `2m`, `1h`).
//!
//! The environment variable of a key is the key upper-cased with `.` and `-` turned into `_`. JDBC
//! URLs written the Java way (`jdbc:postgresql://host:5432/db`) are accepted: the `jdbc:` prefix is
//! dropped and the username/password are added to the URL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A configuration problem, naming the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message (with line and column).
        message: String,
    },
    /// The file is YAML but not a mapping of keys (`-c /etc/passwd`).
    #[error(
        "invalid configuration file {path}: expected a mapping of keys (`kestra:` ...), found {found}"
    )]
    NotAMapping {
        /// File.
        path: PathBuf,
        /// What the document is instead.
        found: &'static str,
    },
    /// A key has a value of the wrong kind.
    #[error("configuration key '{key}': {message}")]
    Invalid {
        /// Key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The loaded configuration: flattened dotted keys, environment first.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: BTreeMap<String, String>,
    /// The file the values come from, if any.
    file: Option<PathBuf>,
}

/// Every key this build reads (`*` stands for any one segment). A key of a file that matches none
/// is reported by [`Config::unknown_keys`] (and warned about by [`Config::load`]): add new keys
/// here.
pub const KNOWN_KEYS: &[&str] = &[
    "kestra.repository.type",
    "kestra.queue.type",
    "kestra.kafka.brokers",
    "kestra.kafka.topic-prefix",
    "kestra.kafka.partitions",
    "kestra.elasticsearch.url",
    "kestra.elasticsearch.index-prefix",
    "kestra.elasticsearch.refresh",
    "datasources.*.url",
    "datasources.*.username",
    "datasources.*.password",
    "kestra.storage.type",
    "kestra.storage.local.base-path",
    "kestra.storage.s3.bucket",
    "kestra.storage.s3.region",
    "kestra.storage.s3.endpoint",
    "kestra.storage.s3.accessKey",
    "kestra.storage.s3.secretKey",
    "kestra.storage.s3.sessionToken",
    "kestra.storage.s3.prefix",
    "kestra.storage.gcs.bucket",
    "kestra.storage.gcs.project-id",
    "kestra.storage.gcs.serviceAccount",
    "kestra.storage.gcs.endpoint",
    "kestra.storage.gcs.anonymous",
    "kestra.storage.gcs.prefix",
    "kestra.storage.azure.container",
    "kestra.storage.azure.endpoint",
    "kestra.storage.azure.connection-string",
    "kestra.storage.azure.shared-key-account-name",
    "kestra.storage.azure.shared-key-account-access-key",
    "kestra.storage.azure.sas-token",
    "kestra.storage.azure.prefix",
    "kestra.server.host",
    "kestra.server.port",
    "micronaut.server.port",
    "kestra.server.max-request-size",
    "kestra.server.multipart.max-file-size",
    "micronaut.server.multipart.max-file-size",
    "kestra.server.basic-auth.enabled",
    "kestra.server.basic-auth.username",
    "kestra.server.basic-auth.password",
    "kestra.server.metrics.public",
    "kestra.worker.threads",
    "kestra.worker.lease",
    "kestra.server.liveness.heartbeatInterval",
    "kestra.server.liveness.timeout",
    "kestra.server.service.purge.retention",
    "kestra.server.terminationGracePeriod",
    "kestra.server.worker-task-restart-strategy",
    "kestra.server.worker-task-max-resubmissions",
    "kestra.data-dir",
    "kestra.limits.expression.max-value-size",
    "kestra.limits.expression.fuel",
    "kestra.limits.task.max-output-size",
    "kestra.queue.max-message-size",
    "kestra.queue.max-delivery-attempts",
    "kestra.limits.execution.max-task-runs",
    "kestra.repository.sqlite.initialize-empty",
];

/// A key of the configuration file that this build does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// The key, dotted.
    pub key: String,
    /// The closest known key, when one is close.
    pub suggestion: Option<String>,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown configuration key '{}' (ignored)", self.key)?;
        if let Some(s) = &self.suggestion {
            write!(f, "; did you mean '{s}'?")?;
        }
        Ok(())
    }
}

/// Where the value of a key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The environment variable.
    Environment(String),
    /// The configuration file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Environment(var) => write!(f, "environment {var}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One key of the effective configuration ([`Config::effective`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key, dotted.
    pub key: String,
    /// Its value, secrets masked (`None`: not set, no default).
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: Source,
}

fn matches_pattern(pattern: &str, key: &str) -> bool {
    let (p, k): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), key.split('.').collect());
    p.len() == k.len() && p.iter().zip(&k).all(|(p, k)| *p == "*" || p == k)
}

/// The known key closest to `key`, if it is a likely typo of it.
fn suggest(key: &str) -> Option<String> {
    let segments: Vec<&str> = key.split('.').collect();
    KNOWN_KEYS
        .iter()
        .map(|pattern| {
            // `*` takes the key's own segment: `datasources.postgres.ulr` -> `...postgres.url`.
            pattern
                .split('.')
                .enumerate()
                .map(|(i, p)| match (p, segments.get(i)) {
                    ("*", Some(s)) => *s,
                    (p, _) => p,
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .map(|candidate| (strsim::levenshtein(key, &candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 5).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Whether a key holds a secret (its value is masked when shown).
pub fn is_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "connection-string",
        "access-key",
        "serviceaccount",
    ]
    .iter()
    .any(|s| last.contains(s))
}

/// `value` with its secret parts masked: the whole value for a secret key, the password of a URL
/// (`postgres://user:****@host/db`) otherwise.
pub fn mask(key: &str, value: &str) -> String {
    if is_secret(key) {
        return "********".into();
    }
    if let Some((scheme, rest)) = value.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:********@{host}");
    }
    value.to_string()
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => {}
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c == '.' || c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

impl Config {
    /// Load `path` if given (and existing when given explicitly), else only defaults + environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut values = BTreeMap::new();
        if let Some(path) = path {
            let text = kestra_core::limits::read_text_file(
                path,
                kestra_core::limits::MAX_SOURCE_FILE_SIZE,
            )
            .map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let value: Value = serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let found = match &value {
                Value::Object(_) | Value::Null => None,
                Value::String(_) => Some("a string"),
                Value::Array(_) => Some("a list"),
                Value::Number(_) => Some("a number"),
                Value::Bool(_) => Some("a boolean"),
            };
            if let Some(found) = found {
                return Err(ConfigError::NotAMapping {
                    path: path.to_path_buf(),
                    found,
                });
            }
            flatten("", &value, &mut values);
        }
        let config = Config {
            values,
            file: path.map(Path::to_path_buf),
        };
        for unknown in config.unknown_keys() {
            tracing::warn!(file = %path.map(|p| p.display().to_string()).unwrap_or_default(), "{unknown}");
        }
        Ok(config)
    }

    /// The keys of the file that this build does not read, with the closest known key.
    pub fn unknown_keys(&self) -> Vec<UnknownKey> {
        self.values
            .keys()
            .filter(|k| !KNOWN_KEYS.iter().any(|p| matches_pattern(p, k)))
            .map(|k| UnknownKey {
                key: k.clone(),
                suggestion: suggest(k),
            })
            .collect()
    }

    /// Where the value of `key` comes from, if it is set.
    pub fn source(&self, key: &str) -> Option<Source> {
        let var = env_name(key);
        if std::env::var_os(&var).is_some() {
            Some(Source::Environment(var))
        } else if self.values.contains_key(key) {
            Some(Source::File(self.file.clone().unwrap_or_default()))
        } else {
            None
        }
    }

    /// The effective configuration: every known key (the datasource keys of the backend in use
    /// and of any datasource the file names), its value (secrets masked) and where it comes from.
    pub fn effective(&self) -> Vec<Setting> {
        let kind = self.backend_type();
        let mut kinds = std::collections::BTreeSet::from([kind.clone()]);
        kinds.extend(
            self.values
                .keys()
                .filter_map(|k| k.strip_prefix("datasources."))
                .filter_map(|k| k.split('.').next())
                .map(str::to_string),
        );
        let mut keys: Vec<String> = Vec::new();
        for pattern in KNOWN_KEYS {
            if pattern.contains('*') {
                keys.extend(kinds.iter().map(|k| pattern.replace('*', k)));
            } else {
                keys.push(pattern.to_string());
            }
        }
        let data_dir = self.data_dir();
        // The keys of the storage types not in use only when set (`kestra.storage.s3.bucket` is
        // noise on a local storage).
        let storage_kind = self
            .get("kestra.storage.type")
            .unwrap_or_else(|| "local".into())
            .trim()
            .to_ascii_lowercase();
        keys.retain(|key| match key.strip_prefix("kestra.storage.") {
            Some(rest) => match rest.split_once('.') {
                Some((kind, _)) => kind == storage_kind || self.source(key).is_some(),
                None => true,
            },
            None => true,
        });
        // SQLite's own key only on SQLite (or when set).
        keys.retain(|key| {
            key != "kestra.repository.sqlite.initialize-empty"
                || kind == "sqlite"
                || self.source(key).is_some()
        });
        keys.into_iter()
            .map(|key| {
                let default = match key.as_str() {
                    "kestra.repository.type" => Some("sqlite".to_string()),
                    "kestra.queue.type" => Some(kind.clone()),
                    "kestra.storage.type" => Some("local".into()),
                    "kestra.storage.local.base-path" => {
                        Some(data_dir.join("storage").display().to_string())
                    }
                    "kestra.server.host" => Some("127.0.0.1".into()),
                    "kestra.server.port" => Some("8080".into()),
                    #[cfg(feature = "webserver")]
                    "kestra.server.max-request-size" => {
                        Some(kestra_webserver::DEFAULT_MAX_BODY.to_string())
                    }
                    #[cfg(feature = "webserver")]
                    "kestra.server.multipart.max-file-size" => {
                        Some(kestra_webserver::DEFAULT_MAX_UPLOAD.to_string())
                    }
                    "kestra.server.basic-auth.enabled" => Some("true".into()),
                    "kestra.server.basic-auth.username" => Some("admin@kestra.io".into()),
                    "kestra.server.basic-auth.password" => Some("kestra".into()),
                    "kestra.worker.threads" => Some(
                        kestra_core::worker::WorkerConfig::default()
                            .concurrency
                            .to_string(),
                    ),
                    "kestra.worker.lease" => Some("PT2M".into()),
                    "kestra.limits.expression.max-value-size" => {
                        Some(kestra_core::expression::DEFAULT_MAX_VALUE_SIZE.to_string())
                    }
                    "kestra.limits.expression.fuel" => Some(
                        kestra_core::expression::ExpressionOptions::default()
                            .fuel
                            .map_or_else(|| "none".into(), |f| f.to_string()),
                    ),
                    "kestra.limits.task.max-output-size" => {
                        Some(kestra_core::worker::service::DEFAULT_MAX_OUTPUT_SIZE.to_string())
                    }
                    "kestra.repository.sqlite.initialize-empty" => Some("false".into()),
                    "kestra.server.liveness.heartbeatInterval" => Some("PT3S".into()),
                    "kestra.server.liveness.timeout" => Some("PT45S".into()),
                    "kestra.server.service.purge.retention" => Some("P30D".into()),
                    "kestra.server.terminationGracePeriod" => Some("PT1M".into()),
                    "kestra.server.worker-task-restart-strategy" => {
                        Some("AFTER_TERMINATION_GRACE_PERIOD".into())
                    }
                    "kestra.server.worker-task-max-resubmissions" => Some("3".into()),
                    "kestra.data-dir" => Some("./data".into()),
                    "datasources.sqlite.url" => Some(format!(
                        "sqlite://{}/kestra.db?mode=rwc",
                        data_dir.display()
                    )),
                    _ => None,
                };
                let (value, source) = match self.source(&key) {
                    Some(source) => (self.get(&key), source),
                    None => (default, Source::Default),
                };
                Setting {
                    value: value.map(|v| mask(&key, &v)),
                    key,
                    source,
                }
            })
            .collect()
    }

    /// A config from `key = value` pairs (tests, embedding).
    pub fn from_pairs<I, K, V>(pairs: I) -> Config
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Config {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            file: None,
        }
    }

    /// The value of a key: its environment variable, else the file, else `None`.
    pub fn get(&self, key: &str) -> Option<String> {
        std::env::var(env_name(key))
            .ok()
            .or_else(|| self.values.get(key).cloned())
    }

    /// A boolean key.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                other => Err(ConfigError::Invalid {
                    key: key.into(),
                    message: format!("'{other}' is not a boolean"),
                }),
            },
        }
    }

    /// A numeric key.
    pub fn get_u64(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                key: key.into(),
                message: format!("'{v}' is not a non-negative integer"),
            }),
        }
    }

    /// A size key in bytes: a number, or a number with a unit (`KB`/`KiB` = 1024, `MB`/`MiB`,
    /// `GB`/`GiB`; case-insensitive, as Micronaut's readable sizes); zero is refused.
    pub fn get_size(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        let Some(text) = self.get(key) else {
            return Ok(default);
        };
        let invalid = |message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let n: u64 = number.parse().map_err(|_| {
            invalid(format!(
                "'{text}' is not a size (expected bytes, or e.g. 512KB, 16MB, 1GB)"
            ))
        })?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "kib" | "k" => 1 << 10,
            "mb" | "mib" | "m" => 1 << 20,
            "gb" | "gib" | "g" => 1 << 30,
            other => {
                return Err(invalid(format!(
                    "unknown unit '{other}' in '{text}' (expected KB, MB or GB)"
                )));
            }
        };
        let bytes = n
            .checked_mul(factor)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| invalid(format!("'{text}' is too large")))?;
        if bytes == 0 {
            return Err(invalid(format!("'{text}' is zero")));
        }
        Ok(bytes)
    }

    /// A duration key: ISO-8601 (`PT45S`) or a number with a unit (`45s`, `500ms`, `2m`, `1h`);
    /// zero is refused.
    pub fn get_duration(
        &self,
        key: &str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        let Some(text) = self.get(key) else {
            return Ok(default);
        };
        let invalid = |message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let trimmed = text.trim();
        let duration = if trimmed.to_ascii_uppercase().starts_with('P') {
            kestra_core::flow::duration::parse(trimmed).map_err(|e| invalid(e.to_string()))?
        } else {
            let split = trimmed
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(trimmed.len());
            let (number, unit) = trimmed.split_at(split);
            let n: u64 = number.parse().map_err(|_| {
                invalid(format!(
                    "'{text}' is not a duration (expected e.g. PT45S, 45s, 500ms, 2m, 30d)"
                ))
            })?;
            match unit.trim() {
                "ms" => std::time::Duration::from_millis(n),
                "s" | "" => std::time::Duration::from_secs(n),
                "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
                "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
                "d" => std::time::Duration::from_secs(n.saturating_mul(86_400)),
                other => {
                    return Err(invalid(format!(
                        "unknown unit '{other}' in '{text}' (expected ms, s, m, h or d)"
                    )));
                }
            }
        };
        if duration.is_zero() {
            return Err(invalid(format!("'{text}' is zero")));
        }
        Ok(duration)
    }

    /// The data directory (SQLite file and local storage by default).
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(
            self.get("kestra.data-dir")
                .unwrap_or_else(|| "./data".into()),
        )
    }

    /// The repository/queue type: `sqlite`, `postgres` or `mysql`.
    pub fn backend_type(&self) -> String {
        self.get("kestra.repository.type")
            .or_else(|| self.get("kestra.queue.type"))
            .unwrap_or_else(|| "sqlite".into())
            .to_ascii_lowercase()
    }

    /// The queue type: `kestra.queue.type`, else the repository type (`sqlite` by default).
    pub fn queue_type(&self) -> String {
        self.get("kestra.queue.type")
            .or_else(|| self.get("kestra.repository.type"))
            .unwrap_or_else(|| "sqlite".into())
            .trim()
            .to_ascii_lowercase()
    }

    /// The Kafka queue's options: `kestra.kafka.brokers` (required), `.topic-prefix`,
    /// `.partitions`.
    #[cfg(feature = "kafka")]
    pub fn kafka_options(&self) -> Result<kestra_backend_kafka::KafkaOptions, ConfigError> {
        let brokers = self
            .get("kestra.kafka.brokers")
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| ConfigError::Invalid {
                key: "kestra.kafka.brokers".into(),
                message: "required for queue type 'kafka' (host:port[,host:port...])".into(),
            })?;
        let mut options = kestra_backend_kafka::KafkaOptions::new(brokers.trim());
        if let Some(prefix) = self.get("kestra.kafka.topic-prefix") {
            options = options.with_prefix(prefix.trim());
        }
        let partitions = self.get_u64("kestra.kafka.partitions", options.partitions as u64)?;
        let partitions = i32::try_from(partitions)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ConfigError::Invalid {
                key: "kestra.kafka.partitions".into(),
                message: format!("{partitions} is not a partition count (1 to 2^31-1)"),
            })?;
        Ok(options.with_partitions(partitions))
    }

    /// The Elasticsearch repositories' options: `kestra.elasticsearch.url` (required),
    /// `.index-prefix`, `.refresh`.
    #[cfg(feature = "kafka")]
    pub fn elastic_options(
        &self,
    ) -> Result<kestra_backend_kafka::elastic::ElasticOptions, ConfigError> {
        use kestra_backend_kafka::elastic::{ElasticOptions, Refresh};
        let url = self
            .get("kestra.elasticsearch.url")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| ConfigError::Invalid {
                key: "kestra.elasticsearch.url".into(),
                message: "required for repository type 'elasticsearch' (http://host:port)".into(),
            })?;
        let mut options = ElasticOptions::new(url.trim());
        if let Some(prefix) = self.get("kestra.elasticsearch.index-prefix") {
            options = options.with_index_prefix(prefix.trim());
        }
        if let Some(refresh) = self.get("kestra.elasticsearch.refresh") {
            options.refresh =
                Refresh::parse(refresh.trim()).ok_or_else(|| ConfigError::Invalid {
                    key: "kestra.elasticsearch.refresh".into(),
                    message: format!("'{refresh}' is not one of true, wait_for, false"),
                })?;
        }
        Ok(options)
    }

    /// The database URL for the backend type, in sqlx form.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        let kind = self.backend_type();
        let key = |k: &str| format!("datasources.{kind}.{k}");
        let url = match self.get(&key("url")) {
            Some(u) => u,
            None if kind == "sqlite" => {
                format!("sqlite://{}/kestra.db?mode=rwc", self.data_dir().display())
            }
            None => {
                return Err(ConfigError::Invalid {
                    key: key("url"),
                    message: format!("required for repository type '{kind}'"),
                });
            }
        };
        let url = url
            .strip_prefix("jdbc:")
            .unwrap_or(&url)
            .replace("postgresql://", "postgres://");
        match (self.get(&key("username")), self.get(&key("password"))) {
            (Some(user), password) if !url.contains('@') => {
                let Some((scheme, rest)) = url.split_once("://") else {
                    return Err(ConfigError::Invalid {
                        key: key("url"),
                        message: format!("'{url}' is not a URL"),
                    });
                };
                let auth = match password {
                    Some(p) => format!("{user}:{p}"),
                    None => user,
                };
                Ok(format!("{scheme}://{auth}@{rest}"))
            }
            _ => Ok(url),
        }
    }

    /// The storage type (`local`, `s3`, `gcs`, `azure`), lower-cased; an unknown one, or one this
    /// build lacks the feature of, is an error naming the key.
    pub fn storage_type(&self) -> Result<String, ConfigError> {
        let kind = self
            .get("kestra.storage.type")
            .unwrap_or_else(|| "local".into())
            .trim()
            .to_ascii_lowercase();
        let available: &[(&str, bool)] = &[
            ("local", true),
            ("s3", cfg!(feature = "s3")),
            ("gcs", cfg!(feature = "gcs")),
            ("azure", cfg!(feature = "azure")),
        ];
        match available.iter().find(|(name, _)| *name == kind) {
            Some((_, true)) => Ok(kind),
            Some((_, false)) => Err(ConfigError::Invalid {
                key: "kestra.storage.type".into(),
                message: format!(
                    "'{kind}' needs this build's cargo feature '{kind}' (build with --features {kind})"
                ),
            }),
            None => Err(ConfigError::Invalid {
                key: "kestra.storage.type".into(),
                message: format!("unknown storage type '{kind}' (local, s3, gcs or azure)"),
            }),
        }
    }

    /// The value of `kestra.storage.<kind>.<name>`, trimmed, if set and not empty.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    fn storage_key(&self, kind: &str, name: &str) -> Option<String> {
        self.get(&format!("kestra.storage.{kind}.{name}"))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A required `kestra.storage.<kind>.<name>`.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    fn required_storage_key(&self, kind: &str, name: &str) -> Result<String, ConfigError> {
        self.storage_key(kind, name)
            .ok_or_else(|| ConfigError::Invalid {
                key: format!("kestra.storage.{kind}.{name}"),
                message: format!("required for storage type '{kind}'"),
            })
    }

    /// Options shared by the object stores.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    fn object_options(&self, kind: &str) -> kestra_storage::object::ObjectOptions {
        kestra_storage::object::ObjectOptions {
            prefix: self.storage_key(kind, "prefix"),
            ..Default::default()
        }
    }

    /// The S3 store configuration (`kestra.storage.s3.*`).
    #[cfg(feature = "s3")]
    pub fn s3_storage(&self) -> Result<kestra_storage::object::S3Config, ConfigError> {
        let key = |name: &str| self.storage_key("s3", name);
        Ok(kestra_storage::object::S3Config {
            bucket: self.required_storage_key("s3", "bucket")?,
            region: key("region"),
            endpoint: key("endpoint"),
            access_key: key("accessKey"),
            secret_key: key("secretKey").map(Into::into),
            session_token: key("sessionToken").map(Into::into),
            virtual_hosted_style: None,
            options: self.object_options("s3"),
        })
    }

    /// The GCS store configuration (`kestra.storage.gcs.*`).
    #[cfg(feature = "gcs")]
    pub fn gcs_storage(&self) -> Result<kestra_storage::object::GcsConfig, ConfigError> {
        let key = |name: &str| self.storage_key("gcs", name);
        Ok(kestra_storage::object::GcsConfig {
            bucket: self.required_storage_key("gcs", "bucket")?,
            project_id: key("project-id"),
            service_account: key("serviceAccount").map(Into::into),
            endpoint: key("endpoint"),
            anonymous: self.get_bool("kestra.storage.gcs.anonymous", false)?,
            options: self.object_options("gcs"),
        })
    }

    /// The Azure Blob store configuration (`kestra.storage.azure.*`).
    #[cfg(feature = "azure")]
    pub fn azure_storage(&self) -> Result<kestra_storage::object::AzureConfig, ConfigError> {
        let key = |name: &str| self.storage_key("azure", name);
        Ok(kestra_storage::object::AzureConfig {
            container: self.required_storage_key("azure", "container")?,
            endpoint: key("endpoint"),
            connection_string: key("connection-string").map(Into::into),
            shared_key_account_name: key("shared-key-account-name"),
            shared_key_account_access_key: key("shared-key-account-access-key").map(Into::into),
            sas_token: key("sas-token").map(Into::into),
            options: self.object_options("azure"),
        })
    }

    /// The local storage directory (an error unless the storage type is `local`).
    pub fn storage_path(&self) -> Result<PathBuf, ConfigError> {
        let kind = self.storage_type()?;
        if kind != "local" {
            return Err(ConfigError::Invalid {
                key: "kestra.storage.type".into(),
                message: format!("'{kind}' storage has no local path"),
            });
        }
        Ok(self
            .get("kestra.storage.local.base-path")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.data_dir().join("storage")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_and_elasticsearch_options() {
        let c = Config::from_pairs([
            ("kestra.queue.type", "Kafka"),
            ("kestra.repository.type", "elasticsearch"),
            ("kestra.kafka.brokers", " 10.0.0.1:9092,10.0.0.2:9092 "),
            ("kestra.kafka.topic-prefix", "prod_"),
            ("kestra.kafka.partitions", "12"),
            ("kestra.elasticsearch.url", "http://es:9200"),
            ("kestra.elasticsearch.index-prefix", "prod_"),
            ("kestra.elasticsearch.refresh", "wait_for"),
        ]);
        assert_eq!(c.queue_type(), "kafka");
        let k = c.kafka_options().unwrap();
        assert_eq!(
            (k.brokers.as_str(), k.prefix.as_str(), k.partitions),
            ("10.0.0.1:9092,10.0.0.2:9092", "prod_", 12)
        );
        let e = c.elastic_options().unwrap();
        assert_eq!(
            (e.url.as_str(), e.index_prefix.as_str()),
            ("http://es:9200", "prod_")
        );
        assert_eq!(e.refresh, kestra_backend_kafka::elastic::Refresh::WaitFor);
        assert!(c.unknown_keys().is_empty(), "{:?}", c.unknown_keys());

        let missing = Config::from_pairs([("kestra.queue.type", "kafka")]);
        let err = missing.kafka_options().unwrap_err().to_string();
        assert!(err.contains("kestra.kafka.brokers"), "{err}");
        let err = missing.elastic_options().unwrap_err().to_string();
        assert!(err.contains("kestra.elasticsearch.url"), "{err}");
        let bad = Config::from_pairs([
            ("kestra.kafka.brokers", "b:9092"),
            ("kestra.kafka.partitions", "0"),
            ("kestra.elasticsearch.url", "http://es:9200"),
            ("kestra.elasticsearch.refresh", "sometimes"),
        ]);
        let err = bad.kafka_options().unwrap_err().to_string();
        assert!(err.contains("kestra.kafka.partitions"), "{err}");
        let err = bad.elastic_options().unwrap_err().to_string();
        assert!(
            err.contains("kestra.elasticsearch.refresh") && err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::default();
        assert_eq!(c.backend_type(), "sqlite");
        assert!(c.database_url().unwrap().starts_with("sqlite://"));
        assert!(c.storage_path().unwrap().ends_with("storage"));
    }

    #[test]
    fn jdbc_urls_and_credentials() {
        let c = Config::from_pairs([
            ("kestra.repository.type", "postgres"),
            (
                "datasources.postgres.url",
                "jdbc:postgresql://127.0.0.1:5432/kestra",
            ),
            ("datasources.postgres.username", "kestra"),
            ("datasources.postgres.password", "secret"),
        ]);
        assert_eq!(
            c.database_url().unwrap(),
            "postgres://kestra:secret@127.0.0.1:5432/kestra"
        );
        let missing = Config::from_pairs([("kestra.repository.type", "mysql")]);
        let err = missing.database_url().unwrap_err().to_string();
        assert!(err.contains("datasources.mysql.url"), "{err}");
    }

    #[test]
    fn env_names() {
        assert_eq!(
            env_name("kestra.storage.local.base-path"),
            "KESTRA_STORAGE_LOCAL_BASE_PATH"
        );
    }

    #[test]
    fn yaml_file_is_flattened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("application.yml");
        std::fs::write(&path, "kestra:\n  storage:\n    type: local\n    local:\n      base-path: /tmp/x\n  server:\n    port: 9090\n").unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.storage_path().unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(c.get_u64("kestra.server.port", 8080).unwrap(), 9090);
        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, "kestra: [unclosed").unwrap();
        assert!(matches!(
            Config::load(Some(&bad)),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn a_file_that_is_not_a_mapping_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (content, found) in [
            ("root:x:0:0:root:/root:/bin/bash\n", "a string"),
            ("- kestra\n- queue\n", "a list"),
            ("42\n", "a number"),
        ] {
            let path = dir.path().join("c.yml");
            std::fs::write(&path, content).unwrap();
            let err = Config::load(Some(&path)).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "invalid configuration file {}: expected a mapping of keys (`kestra:` ...), found {found}",
                    path.display()
                )
            );
        }
        // An empty file (or one of comments) sets nothing and is fine.
        let empty = dir.path().join("empty.yml");
        std::fs::write(&empty, "# nothing yet\n").unwrap();
        assert!(
            Config::load(Some(&empty))
                .unwrap()
                .unknown_keys()
                .is_empty()
        );
    }

    #[test]
    fn unknown_keys_come_with_the_closest_known_key() {
        let c = Config::from_pairs([
            ("kestra.storage.local.basepath", "/x"),
            ("datasource.postgres.url", "postgres://h/db"),
            ("datasources.mysql.ulr", "mysql://h/db"),
            ("kestra.worker.threads", "4"),
            ("datasources.mysql.username", "k"),
            ("micronaut.application.name", "kestra"),
        ]);
        let unknown: Vec<(String, Option<String>)> = c
            .unknown_keys()
            .into_iter()
            .map(|u| (u.key, u.suggestion))
            .collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            unknown,
            vec![
                (
                    "datasource.postgres.url".into(),
                    s("datasources.postgres.url")
                ),
                ("datasources.mysql.ulr".into(), s("datasources.mysql.url")),
                (
                    "kestra.storage.local.basepath".into(),
                    s("kestra.storage.local.base-path")
                ),
                ("micronaut.application.name".into(), None),
            ]
        );
        assert_eq!(
            UnknownKey {
                key: "kestra.worker.thread".into(),
                suggestion: s("kestra.worker.threads")
            }
            .to_string(),
            "unknown configuration key 'kestra.worker.thread' (ignored); did you mean 'kestra.worker.threads'?"
        );
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask("datasources.postgres.password", "hunter2"), "********");
        assert_eq!(
            mask("kestra.server.basic-auth.password", "kestra"),
            "********"
        );
        assert_eq!(
            mask(
                "datasources.postgres.url",
                "postgres://kestra:s3cret@db:5432/k"
            ),
            "postgres://kestra:********@db:5432/k"
        );
        assert_eq!(
            mask("datasources.postgres.url", "postgres://db:5432/k"),
            "postgres://db:5432/k"
        );
        assert_eq!(mask("kestra.data-dir", "./data"), "./data");
    }

    #[test]
    fn effective_configuration_names_the_source_of_each_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("application.yml");
        std::fs::write(
            &path,
            "kestra:\n  repository:\n    type: mysql\n  storage:\n    local:\n      base-path: /srv/s\ndatasources:\n  mysql:\n    url: mysql://k:pw@db/k\n    password: pw\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        let effective = c.effective();
        let get = |key: &str| effective.iter().find(|s| s.key == key).unwrap().clone();
        let file = Source::File(path.clone());
        assert_eq!(
            get("kestra.repository.type").value.as_deref(),
            Some("mysql")
        );
        assert_eq!(get("kestra.repository.type").source, file);
        assert_eq!(get("kestra.queue.type").value.as_deref(), Some("mysql"));
        assert_eq!(get("kestra.queue.type").source, Source::Default);
        assert_eq!(
            get("datasources.mysql.url").value.as_deref(),
            Some("mysql://k:********@db/k")
        );
        assert_eq!(
            get("datasources.mysql.password").value.as_deref(),
            Some("********")
        );
        assert_eq!(get("datasources.mysql.username").value, None);
        assert_eq!(
            get("kestra.storage.local.base-path").value.as_deref(),
            Some("/srv/s")
        );
        assert_eq!(get("kestra.server.port").value.as_deref(), Some("8080"));
        assert_eq!(get("kestra.server.port").source, Source::Default);
        assert!(effective.iter().all(|s| !s.key.contains("sqlite")));
    }

    #[test]
    fn sizes_are_bytes_or_number_with_unit() {
        let key = "kestra.limits.task.max-output-size";
        let get = |v: &str| Config::from_pairs([(key, v)]).get_size(key, 7);
        assert_eq!(get("1500").unwrap(), 1500);
        assert_eq!(get("512KB").unwrap(), 512 * 1024);
        assert_eq!(get("16MB").unwrap(), 16 << 20);
        assert_eq!(get("16 MiB").unwrap(), 16 << 20);
        assert_eq!(get("1gb").unwrap(), 1 << 30);
        assert_eq!(
            Config::from_pairs([("other", "1")])
                .get_size(key, 7)
                .unwrap(),
            7
        );
        for (bad, says) in [
            ("0", "is zero"),
            ("12 parsecs", "unknown unit"),
            ("MB", "is not a size"),
            ("99999999999999GB", "too large"),
        ] {
            let error = get(bad).unwrap_err().to_string();
            assert!(
                error.contains(key) && error.contains(says),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn durations_are_iso_or_number_with_unit() {
        use std::time::Duration;
        let key = "kestra.server.liveness.timeout";
        let get =
            |v: &str| Config::from_pairs([(key, v)]).get_duration(key, Duration::from_secs(9));
        assert_eq!(get("PT45S").unwrap(), Duration::from_secs(45));
        assert_eq!(get("PT0.5S").unwrap(), Duration::from_millis(500));
        assert_eq!(get("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(get("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(get("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(get("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(get(" 30 ").unwrap(), Duration::from_secs(30));
        assert_eq!(
            Config::default()
                .get_duration(key, Duration::from_secs(9))
                .unwrap(),
            Duration::from_secs(9)
        );
        for bad in ["soon", "10 parsecs", "-5s", "0s", "PT0S", "P1Y", ""] {
            let err = get(bad).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(bad.trim()),
                "'{bad}' refused naming the key and the value: {err}"
            );
        }
    }
}
