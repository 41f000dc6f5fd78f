//! Internal-storage tasks: LocalFiles, Concat, Split, Size, Delete, PurgeCurrentExecutionFiles and
//! Write. Split cuts by `rows`, by `bytes` (at row boundaries) or into `partitions` files (rows dealt
//! round-robin). Every file read must lie under the execution's namespace (see
//! [`RunContext::readable`]); files written go to the task run's directory.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::flow::tasks::{
    Concat, LocalFiles, PurgeCurrentExecutionFiles, Size, Split, StorageDelete, Write,
};
use crate::storage::{ByteStream, StorageError, StoragePath};
use crate::worker::context::RunContext;
use crate::worker::files::{collect_output_files, write_input_files};
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

/// Parses a size such as `10MB`, `512KB`, `1GB`, `100B` or `2048` (binary units, as Kestra).
pub fn parse_bytes(text: &str) -> Result<u64, TaskError> {
    let t = text.trim().to_ascii_uppercase();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let n: u64 = number
        .parse()
        .map_err(|_| TaskError::invalid("bytes", format!("'{text}' is not a size")))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1024,
        "M" | "MB" => 1024 * 1024,
        "G" | "GB" => 1024 * 1024 * 1024,
        other => {
            return Err(TaskError::invalid(
                "bytes",
                format!("unknown unit '{other}' in '{text}'"),
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| TaskError::invalid("bytes", format!("'{text}' is too large")))
}

/// The extension of a URI's file name, with its dot (`.csv`), or empty.
pub(crate) fn extension_of(uri: &str) -> String {
    let name = uri.rsplit('/').next().unwrap_or(uri);
    match name.rfind('.') {
        Some(i) if i > 0 => name[i..].to_string(),
        _ => String::new(),
    }
}

#[async_trait]
impl RunnableTask for Size {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let uri = ctx.render(&self.uri)?;
        let path = ctx.readable(&uri)?;
        let size = ctx.storage().size(ctx.tenant(), &path).await?;
        Ok(TaskOutput::single("size", Value::from(size)))
    }
}

#[async_trait]
impl RunnableTask for StorageDelete {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let uri = ctx.render(&self.uri)?;
        let path = ctx.readable(&uri)?;
        let error_on_missing = ctx
            .render_opt_property("errorOnMissing", &self.error_on_missing)?
            .unwrap_or(false);
        let deleted = ctx.storage().delete(ctx.tenant(), &path).await?;
        if !deleted && error_on_missing {
            return Err(TaskError::Storage(StorageError::NotFound { uri }));
        }
        let mut out = Map::new();
        out.insert("uri".into(), Value::String(path.to_uri()));
        out.insert("deleted".into(), Value::Bool(deleted));
        Ok(TaskOutput::with_outputs(out))
    }
}

async fn list_recursive(
    ctx: &RunContext,
    prefix: &StoragePath,
) -> Result<Vec<String>, StorageError> {
    let mut out = Vec::new();
    let mut pending = vec![prefix.clone()];
    while let Some(dir) = pending.pop() {
        for entry in ctx.storage().list(ctx.tenant(), &dir).await? {
            if entry.directory {
                pending.push(entry.path);
            } else {
                out.push(entry.path.to_uri());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[async_trait]
impl RunnableTask for PurgeCurrentExecutionFiles {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let root = ctx.execution_path()?;
        let uris = list_recursive(ctx, &root).await?;
        ctx.storage().delete_prefix(ctx.tenant(), &root).await?;
        Ok(TaskOutput::single(
            "uris",
            Value::Array(uris.into_iter().map(Value::String).collect()),
        ))
    }
}

#[async_trait]
impl RunnableTask for Write {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let content = ctx.render(&self.content)?;
        let extension = match &self.extension {
            Some(e) => ctx.render(e)?,
            None => ".ion".to_string(),
        };
        let extension = if extension.is_empty() || extension.starts_with('.') {
            extension
        } else {
            format!(".{extension}")
        };
        let name = format!("{}{extension}", crate::model::new_id());
        let uri = ctx.put_file(&name, Bytes::from(content)).await?;
        Ok(TaskOutput::single("uri", Value::String(uri)))
    }
}

#[async_trait]
impl RunnableTask for Concat {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let files: Vec<String> = match &self.files {
            Value::Array(items) => items
                .iter()
                .map(|i| ctx.render_to_string(i))
                .collect::<Result<_, _>>()?,
            other => ctx.render_json("files", other)?,
        };
        let separator = match &self.separator {
            Some(s) => Some(ctx.render(s)?),
            None => None,
        };
        let extension = match &self.extension {
            Some(e) => ctx.render(e)?,
            None => ".tmp".to_string(),
        };
        let mut parts: Vec<ByteStream> = Vec::new();
        for (i, uri) in files.iter().enumerate() {
            if i > 0
                && let Some(sep) = &separator
            {
                let sep = Bytes::from(sep.clone());
                parts.push(futures::stream::once(async move { Ok(sep) }).boxed());
            }
            parts.push(ctx.get_file(uri.trim()).await?);
        }
        let stream = futures::stream::iter(parts).flatten().boxed();
        let name = format!("{}{extension}", crate::model::new_id());
        let (uri, _) = ctx.put_stream(&name, stream).await?;
        Ok(TaskOutput::single("uri", Value::String(uri)))
    }
}

/// How a file is cut (Split, ForEachItem batches).
pub(crate) enum SplitMode {
    Bytes(u64),
    Rows(u64),
    /// Rows dealt round-robin into this many files.
    Partitions(usize),
}

struct PartWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    size: u64,
    rows: u64,
}

async fn new_part(dir: &Path, index: usize) -> Result<PartWriter, TaskError> {
    let path = dir.join(format!("part-{index}"));
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| TaskError::io(format!("cannot create '{}'", path.display()), e))?;
    Ok(PartWriter {
        file: tokio::io::BufWriter::new(file),
        size: 0,
        rows: 0,
    })
}

#[async_trait]
impl RunnableTask for Split {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let from = ctx.render(&self.from)?.trim().to_string();
        let separator = match &self.separator {
            Some(s) => ctx.render(s)?,
            None => "\n".to_string(),
        };
        let bytes = match &self.bytes {
            Some(b) => Some(parse_bytes(&ctx.render(b)?)?),
            None => None,
        };
        let partitions = ctx.render_opt_property("partitions", &self.partitions)?;
        let rows = ctx.render_opt_property("rows", &self.rows)?;
        let mode = match (bytes, partitions, rows) {
            (Some(b), None, None) if b > 0 => SplitMode::Bytes(b),
            (None, Some(p), None) if p > 0 => SplitMode::Partitions(p as usize),
            (None, None, Some(r)) if r > 0 => SplitMode::Rows(u64::from(r)),
            _ => {
                return Err(TaskError::invalid(
                    "bytes",
                    "exactly one of `bytes`, `partitions` or `rows` must be set, greater than 0",
                ));
            }
        };
        let extension = extension_of(&from);
        let uris = split_file(ctx, &from, &mode, &separator, |i| {
            format!("split-{i}{extension}")
        })
        .await?;
        Ok(TaskOutput::single(
            "uris",
            Value::Array(uris.into_iter().map(Value::String).collect()),
        ))
    }
}

/// Cuts the readable file `from` into parts by `mode` (rows end with `separator`; empty parts of a
/// partition split are left out) and stores part `i` (from 0) as `name(i)` in the task run's
/// directory; returns the URIs in order. An empty file gives no part.
pub(crate) async fn split_file(
    ctx: &mut RunContext,
    from: &str,
    mode: &SplitMode,
    separator: &str,
    name: impl Fn(usize) -> String,
) -> Result<Vec<String>, TaskError> {
    if separator.is_empty() {
        return Err(TaskError::invalid("separator", "must not be empty"));
    }
    let base = ctx.working_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("split-")
        .tempdir_in(&base)
        .map_err(|e| TaskError::io("cannot create a directory for the split", e))?;
    let sep = separator.as_bytes().to_vec();
    let mut stream = ctx.get_file(from).await?;
    let mut parts: Vec<PartWriter> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut finished = false;
    let mut row_count: u64 = 0;
    while !finished {
        match stream.next().await {
            Some(chunk) => pending.extend_from_slice(&chunk?),
            None => finished = true,
        }
        // emit every complete row (and the trailing partial row at the end)
        let mut start = 0;
        loop {
            let range = match find(&pending[start..], &sep) {
                Some(i) => {
                    let r = start..start + i;
                    start += i + sep.len();
                    r
                }
                None if finished && start < pending.len() => {
                    let r = start..pending.len();
                    start = pending.len();
                    r
                }
                None => break,
            };
            let row = &pending[range];
            let target = match (mode, parts.last()) {
                (SplitMode::Partitions(n), _) => {
                    let index = (row_count % (*n as u64)) as usize;
                    if index >= parts.len() {
                        parts.push(new_part(dir.path(), parts.len()).await?);
                    }
                    index
                }
                (_, None) => {
                    parts.push(new_part(dir.path(), 0).await?);
                    0
                }
                (SplitMode::Rows(r), Some(p)) if p.rows >= *r => {
                    parts.push(new_part(dir.path(), parts.len()).await?);
                    parts.len() - 1
                }
                (SplitMode::Bytes(b), Some(p))
                    if p.size > 0 && p.size + (row.len() + sep.len()) as u64 > *b =>
                {
                    parts.push(new_part(dir.path(), parts.len()).await?);
                    parts.len() - 1
                }
                _ => parts.len() - 1,
            };
            row_count += 1;
            if let Some(part) = parts.get_mut(target) {
                part.file
                    .write_all(row)
                    .await
                    .map_err(|e| TaskError::io("cannot write a split part", e))?;
                part.file
                    .write_all(&sep)
                    .await
                    .map_err(|e| TaskError::io("cannot write a split part", e))?;
                part.size += (row.len() + sep.len()) as u64;
                part.rows += 1;
            }
        }
        pending.drain(..start);
    }
    let mut uris = Vec::new();
    for (i, mut part) in parts.into_iter().enumerate() {
        part.file
            .flush()
            .await
            .map_err(|e| TaskError::io("cannot write a split part", e))?;
        drop(part);
        let uri = ctx
            .put_local_file(&name(i), &dir.path().join(format!("part-{i}")))
            .await?;
        uris.push(uri);
    }
    Ok(uris)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[async_trait]
impl RunnableTask for LocalFiles {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        ctx.logger().warn(
            "storage.LocalFiles is deprecated: use the inputFiles/outputFiles of WorkingDirectory",
        );
        let dir = ctx.working_dir()?;
        if let Some(inputs) = &self.inputs {
            write_input_files(ctx, &dir, inputs).await?;
        }
        let patterns = ctx
            .render_opt_property("outputs", &self.outputs)?
            .unwrap_or_default();
        let uris = if patterns.is_empty() {
            Map::new()
        } else {
            collect_output_files(ctx, &dir, &patterns).await?
        };
        Ok(TaskOutput::single("uris", Value::Object(uris)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("10MB").ok(), Some(10 * 1024 * 1024));
        assert_eq!(parse_bytes("1kb").ok(), Some(1024));
        assert_eq!(parse_bytes("42").ok(), Some(42));
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("1TB").is_err());
        assert_eq!(extension_of("kestra:///a/b/file.csv"), ".csv");
        assert_eq!(extension_of("kestra:///a/b/file"), "");
    }
}
