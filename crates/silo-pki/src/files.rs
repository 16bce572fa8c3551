//! Crash-safe file writing for keys and certificates.
//!
//! A key is written to a temporary file in the destination directory, synced,
//! renamed over the destination and the directory synced, so a crash leaves
//! either the old file or the complete new one, never half a key. The temp
//! file is created with its final restrictive mode, so the secret is never
//! readable by others, not even for a moment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::PkiError;

/// Mode of private keys and other secrets.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of certificates.
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of every directory this crate creates (key directories must be
/// private, and certificate directories usually hold keys too).
pub const DIR_MODE: u32 = 0o700;

/// Atomically writes a secret (private key) with mode 0600.
///
/// Missing parent directories are created with mode 0700; existing ones are
/// left as they are (they may belong to the operator).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, bytes, PRIVATE_FILE_MODE)
}

/// Atomically writes a public file (certificate) with mode 0644.
///
/// Missing parent directories are created with mode 0700, like for keys,
/// because certificate and key usually share a directory.
pub fn write_public_file(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, bytes, PUBLIC_FILE_MODE)
}

/// Creates `dir` and its missing ancestors with mode 0700.
pub fn create_private_dir_all(dir: &Path) -> Result<(), PkiError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_private_dir_all(parent)?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    match builder.create(dir) {
        Ok(()) => set_mode(dir, DIR_MODE).map_err(|e| io_err("set mode of", dir, e)),
        // Another process created it concurrently: fine.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err("create directory", dir, e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err("write", path, io::Error::other("path has no file name")))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_private_dir_all(&dir)?;

    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(
        ".{}.tmp-{suffix:016x}",
        file_name.to_string_lossy()
    ));
    let result = write_tmp_and_rename(&tmp, path, &dir, bytes, mode);
    if result.is_err() {
        // Best effort: do not leave a stray temp file (possibly holding a key).
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_tmp_and_rename(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    // Created 0600 whatever the final mode: the content is not complete yet.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
    let mut file = options.open(tmp).map_err(|e| io_err("create", tmp, e))?;
    file.write_all(bytes).map_err(|e| io_err("write", tmp, e))?;
    // Explicit chmod: the mode given at creation is reduced by the umask.
    set_file_mode(&file, mode).map_err(|e| io_err("set mode of", tmp, e))?;
    file.sync_all().map_err(|e| io_err("sync", tmp, e))?;
    drop(file);
    fs::rename(tmp, path).map_err(|e| io_err("rename into", path, e))?;
    // The rename itself is durable only once the directory entry is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync directory", dir, e))
}

#[cfg(unix)]
fn set_file_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_file_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

pub(crate) fn io_err(action: &'static str, path: &Path, source: io::Error) -> PkiError {
    PkiError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_file_and_dirs_get_restrictive_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/key.pem");
        write_private_file(&path, b"secret").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
    }

    #[test]
    fn public_file_is_0644_and_replaces_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("cert.pem");
        write_public_file(&path, b"one").unwrap();
        write_public_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o644);
        // No temp file left behind.
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn existing_directory_mode_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("operator");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        write_private_file(&dir.join("k"), b"x").unwrap();
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&dir.join("k")), 0o600);
    }
}
