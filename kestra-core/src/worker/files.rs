//! Working-directory files: `inputFiles` written before a run (inline content or a copy of a
//! `kestra:///` file) and `outputFiles` glob patterns collected after it into internal storage.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::storage::SCHEME;
use crate::worker::context::RunContext;
use crate::worker::runner::TaskError;

/// `name` as a path relative to a working directory; absolute paths and `..` are refused.
pub fn safe_relative(name: &str) -> Result<PathBuf, TaskError> {
    let path = Path::new(name);
    if name.is_empty()
        || !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(TaskError::invalid(
            "inputFiles",
            format!("'{name}' must be a relative path inside the working directory"),
        ));
    }
    Ok(path.to_path_buf())
}

/// `dir.join(rel)`, checked so that writing to it cannot leave `dir` through a symbolic link:
/// every existing component of the path that is a link must resolve inside `dir` (a link created
/// by an earlier task of a WorkingDirectory is otherwise a way out); a dangling link is refused.
pub fn confined_path(dir: &Path, rel: &Path, property: &str) -> Result<PathBuf, TaskError> {
    let root = std::fs::canonicalize(dir)
        .map_err(|e| TaskError::io(format!("cannot resolve '{}'", dir.display()), e))?;
    let mut current = dir.to_path_buf();
    for component in rel.components() {
        current.push(component);
        let Ok(meta) = std::fs::symlink_metadata(&current) else {
            // does not exist yet: it is created inside the directory
            continue;
        };
        if meta.file_type().is_symlink() {
            let inside = std::fs::canonicalize(&current)
                .map(|target| target.starts_with(&root))
                .unwrap_or(false);
            if !inside {
                return Err(TaskError::invalid(
                    property,
                    format!(
                        "'{}' goes through the symbolic link '{}', which leads outside the \
                         working directory: refused",
                        rel.display(),
                        current.strip_prefix(dir).unwrap_or(&current).display()
                    ),
                ));
            }
        }
    }
    Ok(dir.join(rel))
}

/// Writes `inputFiles` into `dir`: a map of relative path -> content (rendered; a `kestra:///` URI
/// is copied from internal storage), or an expression / JSON string rendering to such a map.
pub async fn write_input_files(
    ctx: &RunContext,
    dir: &Path,
    input_files: &Value,
) -> Result<Vec<PathBuf>, TaskError> {
    let files: Map<String, Value> = match input_files {
        Value::Null => return Ok(Vec::new()),
        Value::Object(m) => m.clone(),
        Value::String(_) => match ctx.render_json::<Value>("inputFiles", input_files)? {
            Value::Object(m) => m,
            other => {
                return Err(TaskError::invalid(
                    "inputFiles",
                    format!("must be a map of file name to content, not {other}"),
                ));
            }
        },
        other => {
            return Err(TaskError::invalid(
                "inputFiles",
                format!("must be a map of file name to content, not {other}"),
            ));
        }
    };
    let mut written = Vec::new();
    for (name, content) in files {
        let name = ctx.render(&name)?;
        let target = confined_path(dir, &safe_relative(&name)?, "inputFiles")?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| TaskError::io(format!("cannot create '{}'", parent.display()), e))?;
        }
        let content = ctx.render_to_string(&content)?;
        if content.trim().starts_with(SCHEME) && !content.trim().contains('\n') {
            ctx.download_to(content.trim(), &target).await?;
        } else {
            tokio::fs::write(&target, content.as_bytes())
                .await
                .map_err(|e| TaskError::io(format!("cannot write '{}'", target.display()), e))?;
        }
        written.push(target);
    }
    Ok(written)
}

/// Every regular file under `dir` (symlinks are not followed), as paths relative to `dir` with `/`
/// separators, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<String>, TaskError> {
    fn walk(root: &Path, current: &Path, out: &mut Vec<String>) -> Result<(), TaskError> {
        let entries = std::fs::read_dir(current)
            .map_err(|e| TaskError::io(format!("cannot list '{}'", current.display()), e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| TaskError::io(format!("cannot list '{}'", current.display()), e))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| TaskError::io(format!("cannot stat '{}'", path.display()), e))?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.is_file()
                && let Ok(rel) = path.strip_prefix(root)
            {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Uploads the files of `dir` matching any of `patterns` (globs relative to `dir`: `*.txt`,
/// `out/**/*.csv`, or plain names) to the task run's storage; returns relative path -> URI.
pub async fn collect_output_files(
    ctx: &RunContext,
    dir: &Path,
    patterns: &[String],
) -> Result<Map<String, Value>, TaskError> {
    let compiled = patterns
        .iter()
        .map(|p| {
            glob::Pattern::new(p.trim_start_matches("./"))
                .map_err(|e| TaskError::invalid("outputFiles", format!("bad pattern '{p}': {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let mut out = Map::new();
    let dir_owned = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || list_files(&dir_owned))
        .await
        .map_err(|e| TaskError::Failed(format!("listing output files failed: {e}")))??;
    for rel in files {
        if compiled.iter().any(|p| p.matches_with(&rel, options)) {
            let uri = ctx.put_local_file(&rel, &dir.join(&rel)).await?;
            out.insert(rel, Value::String(uri));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_out_of_the_directory_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), dir.path().join("f")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("sub"), dir.path().join("in")).unwrap();
        let err = confined_path(dir.path(), Path::new("out/x.txt"), "inputFiles").unwrap_err();
        assert!(err.to_string().contains("symbolic link 'out'"), "{err}");
        assert!(confined_path(dir.path(), Path::new("f"), "inputFiles").is_err());
        assert!(confined_path(dir.path(), Path::new("in/x.txt"), "inputFiles").is_ok());
        assert!(confined_path(dir.path(), Path::new("new/x.txt"), "inputFiles").is_ok());
    }

    #[test]
    fn relative_paths_only() {
        assert!(safe_relative("a/b.txt").is_ok());
        assert!(safe_relative("./a.txt").is_ok());
        assert!(safe_relative("../a.txt").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("a/../../b").is_err());
        assert!(safe_relative("").is_err());
    }
}
