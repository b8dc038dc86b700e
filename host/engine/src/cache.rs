//! The size bound of the on-disk cache (compiled probe code, pulled modules): whatever writes
//! into it then evicts the least recently used files, so the cache cannot outgrow the volume it
//! lives on (the chart's is an `emptyDir` with a size limit, whose overflow evicts the pod).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The default bound: room within the chart's 256 MiB cache volume.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 192 << 20;

/// Mark a cached file as used now (its modification time orders eviction).
pub fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// A temporary file written into the cache older than this was left by a write that never
/// finished (the process killed, the disk full): no write takes this long.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether `path` is being written: a compiled file's `<name>.tmp<pid>`, or a pulled
/// module's `.tmp<random>`.
fn is_temporary(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.starts_with(".tmp") || path.extension().is_some_and(|e| e.to_string_lossy().starts_with("tmp"))
}

/// Delete the least recently used files under `dir` until what is left takes at most
/// `max_bytes`, never one of `keep` (what was just written). Returns the bytes freed. Files
/// being written (temporary names) are counted but never deleted, unless a write left them
/// behind long ago; errors only log.
pub fn bound(dir: &Path, max_bytes: u64, keep: &[&Path]) -> u64 {
    let mut files = Vec::new();
    collect(dir, &mut files);
    let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
    files.sort_by_key(|(_, _, used)| *used);
    let mut freed = 0;
    for (path, size, used) in files {
        let temporary = is_temporary(&path);
        let stale = temporary && used.elapsed().is_ok_and(|age| age > STALE_TEMPORARY);
        if total <= max_bytes && !stale {
            continue;
        }
        if (temporary && !stale) || keep.iter().any(|k| *k == path) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= size;
                freed += size;
                tracing::info!(path = %path.display(), bytes = size, "evicted from the probe cache (over its size bound)");
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot evict from the probe cache"),
        }
    }
    freed
}

fn collect(dir: &Path, files: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(metadata) = entry.metadata() else { continue };
        if metadata.is_dir() {
            collect(&entry.path(), files);
        } else if metadata.is_file() {
            let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.push((entry.path(), metadata.len(), used));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(dir: &Path, name: &str, bytes: usize, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let file = std::fs::File::options().append(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        path
    }

    #[test]
    fn the_least_recently_used_files_go_first_until_the_cache_fits() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = file(dir.path(), "a.cwasm", 400, 300);
        let old = file(dir.path(), "oci/sha256/b", 400, 200);
        let recent = file(dir.path(), "c.cwasm", 400, 100);
        let written = file(dir.path(), "d.cwasm", 400, 0);
        assert_eq!(bound(dir.path(), 900, &[&written]), 800);
        assert!(!oldest.exists() && !old.exists());
        assert!(recent.exists() && written.exists());
        // Within the bound: nothing goes.
        assert_eq!(bound(dir.path(), 900, &[]), 0);
    }

    #[test]
    fn a_file_just_used_is_kept_over_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let used = file(dir.path(), "a.cwasm", 400, 300);
        let unused = file(dir.path(), "b.cwasm", 400, 200);
        touch(&used);
        bound(dir.path(), 500, &[]);
        assert!(used.exists() && !unused.exists());
    }

    #[test]
    fn what_was_just_written_and_files_being_written_stay_even_over_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let written = file(dir.path(), "a.cwasm", 400, 300);
        let writing = file(dir.path(), "b.tmp123", 400, 400);
        let pulling = file(dir.path(), "oci/sha256/.tmpAbC123", 400, 400);
        assert_eq!(bound(dir.path(), 100, &[&written]), 0);
        assert!(written.exists() && writing.exists() && pulling.exists());
    }

    #[test]
    fn a_temporary_file_a_write_left_behind_long_ago_is_deleted_even_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let left = file(dir.path(), "b.tmp123", 400, 3600);
        let left_by_a_pull = file(dir.path(), "oci/sha256/.tmpAbC123", 400, 3600);
        let cached = file(dir.path(), "a.cwasm", 400, 3600);
        assert_eq!(bound(dir.path(), 10_000, &[]), 800);
        assert!(!left.exists() && !left_by_a_pull.exists() && cached.exists());
    }
}
