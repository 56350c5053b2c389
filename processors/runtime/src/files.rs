//! Owner-only files: what Trellis writes out of the log on purpose (access
//! exports) holds personal data, so it is created 0600 in 0700 directories
//! and appears whole or not at all.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Writes `bytes` to `path` (created 0600, `dir` 0700), through a partial
/// file renamed into place, so a reader never sees half a file.
///
/// # Errors
/// I/O errors.
pub fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_owner_only_and_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("exports/t");
        let path = dir.join("x.json");
        write_private(&dir, &path, b"{\"v\": 1}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(!path.with_extension("partial").exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"v\": 1}");

        // A write that fails before its rename (here: the partial file
        // cannot be created) leaves the earlier file whole: a direct,
        // truncating write would have emptied it.
        std::fs::create_dir(path.with_extension("partial")).unwrap();
        assert!(write_private(&dir, &path, b"{\"v\": 2}").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"v\": 1}");
        std::fs::remove_dir(path.with_extension("partial")).unwrap();
        write_private(&dir, &path, b"{\"v\": 2}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"v\": 2}");
    }
}
