//! Configuration: one optional YAML file using Kestra's keys, every key overridable by an environment
//! variable, and defaults that run the embedded engine (SQLite + local storage under `./data`) with no
//! file at all.
//!
//! | key | env var | default |
//! | --- | --- | --- |
//! | `kestra.repository.type` | `KESTRA_REPOSITORY_TYPE` | `sqlite` (also `postgres`, `mysql`) |
//! | `kestra.queue.type` | `KESTRA_QUEUE_TYPE` | same as the repository |
//! | `datasources.<type>.url` | `DATASOURCES_<TYPE>_URL` | `sqlite://<data dir>/kestra.db` |
//! | `datasources.<type>.username` / `.password` | `DATASOURCES_<TYPE>_USERNAME` / `_PASSWORD` | none |
//! | `kestra.storage.type` | `KESTRA_STORAGE_TYPE` | `local` |
//! | `kestra.storage.local.base-path` | `KESTRA_STORAGE_LOCAL_BASE_PATH` | `<data dir>/storage` |
//! | `kestra.server.port` (Kestra: `micronaut.server.port`) | `KESTRA_SERVER_PORT` | `8080` |
//! | `kestra.server.basic-auth.enabled` / `.username` / `.password` | `KESTRA_SERVER_BASIC_AUTH_*` | enabled, `admin@kestra.io` / `kestra` |
//! | `kestra.worker.threads` | `KESTRA_WORKER_THREADS` | 4 x CPUs |
//! | `kestra.data-dir` | `KESTRA_DATA_DIR` | `./data` |
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
            flatten("", &value, &mut values);
        }
        Ok(Config { values })
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

    /// The local storage directory.
    pub fn storage_path(&self) -> Result<PathBuf, ConfigError> {
        let kind = self
            .get("kestra.storage.type")
            .unwrap_or_else(|| "local".into());
        if kind != "local" {
            return Err(ConfigError::Invalid {
                key: "kestra.storage.type".into(),
                message: format!("'{kind}' is not available in this build (only 'local')"),
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
}
