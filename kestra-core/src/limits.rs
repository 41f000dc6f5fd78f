//! Limits that keep one careless or hostile input from exhausting the machine, and the helpers that
//! enforce them at the edges: [`read_text_file`] reads a flow or configuration file with a size
//! cap and refuses devices, FIFOs, sockets and directories (also behind a symbolic link) before
//! opening them, so `/dev/zero` cannot fill the memory and a FIFO cannot hang the reader.

use std::io::{self, Read};
use std::path::Path;

/// The longest log line kept (1 MiB): a longer line is truncated and ends with
/// [`truncation_marker`]; a script's `::{...}::` message that long fails its task.
pub const MAX_LOG_LINE: usize = 1024 * 1024;

/// What ends a truncated log line: says how long the line was and the limit.
pub fn truncation_marker(size: usize, limit: usize) -> String {
    format!(" ... [truncated: {size} bytes, limit {limit}]")
}

/// Cuts `message` to at most [`MAX_LOG_LINE`] bytes, the [`truncation_marker`] included (at a
/// character boundary); shorter messages are returned as they are.
pub fn truncate_log_line(message: String) -> String {
    let size = message.len();
    if size <= MAX_LOG_LINE {
        return message;
    }
    cut_with_marker(message, size)
}

/// Ends `kept`, the start of a line of `size` bytes, with the [`truncation_marker`], cut so that
/// the whole is at most [`MAX_LOG_LINE`] bytes.
pub fn cut_with_marker(mut kept: String, size: usize) -> String {
    let marker = truncation_marker(size, MAX_LOG_LINE);
    let mut end = MAX_LOG_LINE.saturating_sub(marker.len()).min(kept.len());
    while !kept.is_char_boundary(end) {
        end -= 1;
    }
    kept.truncate(end);
    kept.push_str(&marker);
    kept
}

/// The largest flow or configuration file read (16 MiB).
pub const MAX_SOURCE_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Reads a UTF-8 text file of at most `limit` bytes.
///
/// The file must be a regular file (a symbolic link is followed, then checked): anything else is
/// refused with [`io::ErrorKind::InvalidInput`] before it is opened. A larger file is refused with
/// [`io::ErrorKind::FileTooLarge`] after reading at most `limit + 1` bytes; invalid UTF-8 with
/// [`io::ErrorKind::InvalidData`]. Messages say what is wrong; callers add the path.
pub fn read_text_file(path: &Path, limit: u64) -> io::Result<String> {
    let metadata = regular_file(path)?;
    if metadata.len() > limit {
        return Err(too_large(metadata.len(), limit));
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > limit {
        return Err(too_large(read, limit));
    }
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// The metadata of `path` if it is a regular file (a symbolic link is followed, then checked):
/// a device, a FIFO, a socket or a directory is refused with [`io::ErrorKind::InvalidInput`]
/// ("not a regular file (a FIFO): refused"), so that reading it can neither run forever nor hang.
pub fn regular_file(path: &Path) -> io::Result<std::fs::Metadata> {
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a regular file ({}): refused",
                describe_file_type(&metadata.file_type())
            ),
        ));
    }
    Ok(metadata)
}

fn too_large(size: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("file too large: more than {limit} bytes (at least {size})"),
    )
}

fn describe_file_type(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_and_large_files_reads_small_ones() {
        let err = read_text_file(Path::new("/dev/zero"), 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("a device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yml");
        std::fs::write(&big, "x".repeat(2000)).unwrap();
        let err = read_text_file(&big, 1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(read_text_file(&big, 2000).unwrap().len(), 2000);
        let err = read_text_file(dir.path(), 1000).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
    }
}
