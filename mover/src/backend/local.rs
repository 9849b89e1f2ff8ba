use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{Backend, Kind, ObjectInfo};
use crate::error::{Error, IoContext, Result};
use crate::util::{sync_dir, write_atomically};

/// A repository in a local directory. Every write is atomic (temp file, fsync, rename), so a crash
/// never leaves a torn object.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        self.root.join(kind.path_of(name))
    }

    fn not_found_or(&self, kind: Kind, name: &str, path: &Path, error: std::io::Error) -> Error {
        if error.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                name: kind.path_of(name),
            }
        } else {
            Error::io(path, error)
        }
    }

    fn ensure_parent(&self, path: &Path) -> Result<()> {
        let parent = path.parent().expect("objects live in a directory");
        std::fs::create_dir_all(parent).at(parent)
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(kind, name);
        self.ensure_parent(&path)?;
        write_atomically(&path, bytes)
    }

    fn put_file(&self, kind: Kind, name: &str, source: &Path) -> Result<()> {
        let path = self.path(kind, name);
        self.ensure_parent(&path)?;
        std::fs::File::open(source)
            .and_then(|f| f.sync_all())
            .at(source)?;
        match std::fs::rename(source, &path) {
            Ok(()) => sync_dir(path.parent().expect("a parent")),
            // Another filesystem: copy through a temp file instead.
            Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
                let bytes = std::fs::read(source).at(source)?;
                write_atomically(&path, &bytes)?;
                std::fs::remove_file(source).at(source)
            }
            Err(error) => Err(Error::io(&path, error)),
        }
    }

    fn put_new(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.path(kind, name);
        self.ensure_parent(&path)?;
        let dir = path.parent().expect("a parent");
        let temp = crate::util::durable_temp_file(dir, bytes)?;
        // A hard link fails if the name exists: the create is atomic, unlike a rename.
        match temp.persist_noclobber(&path) {
            Ok(_) => sync_dir(dir).map(|()| true),
            Err(error) if error.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(Error::io(&path, error.error)),
        }
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        let path = self.path(kind, name);
        std::fs::read(&path).map_err(|error| self.not_found_or(kind, name, &path, error))
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let path = self.path(kind, name);
        let mut file = std::fs::File::open(&path)
            .map_err(|error| self.not_found_or(kind, name, &path, error))?;
        file.seek(SeekFrom::Start(offset)).at(&path)?;
        let mut buffer = Vec::with_capacity(length as usize);
        file.take(length).read_to_end(&mut buffer).at(&path)?;
        if (buffer.len() as u64) < length {
            return Err(Error::corrupt(
                kind.path_of(name),
                format!(
                    "shorter than expected: wanted bytes {offset}..{}",
                    offset + length
                ),
            ));
        }
        Ok(buffer)
    }

    fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        let mut found = Vec::new();
        let dir = self.root.join(kind.prefix());
        if kind == Kind::Config {
            let path = self.root.join("config");
            return match std::fs::metadata(&path) {
                Ok(meta) => Ok(vec![ObjectInfo {
                    name: "config".into(),
                    size: meta.len(),
                    modified: meta.modified().ok(),
                }]),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(found),
                Err(error) => Err(Error::io(path, error)),
            };
        }
        let mut dirs = vec![dir];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(Error::io(dir, error)),
            };
            for entry in entries {
                let entry = entry.at(&dir)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // a temp file of an unfinished write
                }
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted since the directory was read (a lock released meanwhile).
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(Error::io(entry.path(), error)),
                };
                if meta.is_dir() {
                    if kind == Kind::Pack {
                        dirs.push(entry.path());
                    }
                } else {
                    found.push(ObjectInfo {
                        name,
                        size: meta.len(),
                        modified: meta.modified().ok(),
                    });
                }
            }
        }
        // In name order, as S3 lists: the same repository reads the same way on both.
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        let path = self.path(kind, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::io(path, error)),
        }
    }

    fn exists(&self, kind: Kind, name: &str) -> Result<bool> {
        Ok(self.path(kind, name).exists())
    }

    /// Removes the temp files of interrupted writes: `.tmp-*` anywhere in the repository (an
    /// atomic write's file before its rename) and `.pack-*` in `tmp/` (a pack being written), once
    /// their mtime is `older_than` ago. A file whose mtime is in the future stays. Symlinks are
    /// neither followed nor removed.
    fn remove_leftovers(&self, older_than: std::time::Duration) -> Result<u64> {
        let now = std::time::SystemTime::now();
        let temp_dir = self.root.join("tmp");
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(Error::io(dir, error)),
            };
            for entry in entries {
                let entry = entry.at(&dir)?;
                let file_type = entry.file_type().at(entry.path())?;
                if file_type.is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let leftover =
                    name.starts_with(".tmp-") || (dir == temp_dir && name.starts_with(".pack-"));
                if !file_type.is_file() || !leftover {
                    continue;
                }
                let modified = match entry.metadata() {
                    Ok(meta) => meta.modified().at(entry.path())?,
                    // Renamed into place or removed since the directory was read.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(Error::io(entry.path(), error)),
                };
                if now
                    .duration_since(modified)
                    .is_ok_and(|age| age >= older_than)
                {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => return Err(Error::io(entry.path(), error)),
                    }
                }
            }
        }
        Ok(removed)
    }

    fn temp_dir(&self) -> Option<PathBuf> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn file(path: &Path, age: Duration) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn remove_leftovers_removes_old_temp_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let backend = LocalBackend::new(&root);
        backend.put(Kind::Snapshot, "kept", b"an object").unwrap();
        let hour = Duration::from_secs(3600);
        let old = 2 * hour;
        let leftovers = [
            ".tmp-config",
            "keys/.tmp-abc",
            "data/ab/.tmp-123",
            "snapshots/.tmp-x",
            "tmp/.pack-1",
            "tmp/.tmp-2",
        ];
        for name in leftovers {
            file(&root.join(name), old);
        }
        let kept = [
            // Too young: a write or a backup under way.
            "index/.tmp-young",
            "tmp/.pack-young",
            // Not temp files, or not where packs are written.
            "data/ab/abcdef",
            "locks/.other",
            "data/ab/.pack-2",
            // A clock stepped back: an mtime in the future is no age.
            "locks/.tmp-future",
        ];
        for name in &kept[..2] {
            file(&root.join(name), Duration::from_secs(60));
        }
        for name in &kept[2..5] {
            file(&root.join(name), old);
        }
        let future = root.join(kept[5]);
        std::fs::create_dir_all(future.parent().unwrap()).unwrap();
        std::fs::File::create(&future)
            .unwrap()
            .set_modified(SystemTime::now() + old)
            .unwrap();
        // A symlink named like a leftover, to a file outside the repository: neither followed
        // nor removed.
        let outside = dir.path().join("outside");
        file(&outside, old);
        std::os::unix::fs::symlink(&outside, root.join("tmp/.pack-link")).unwrap();

        assert_eq!(
            backend.remove_leftovers(hour).unwrap(),
            leftovers.len() as u64
        );
        for name in leftovers {
            assert!(!root.join(name).exists(), "{name} is still there");
        }
        for name in kept {
            assert!(root.join(name).exists(), "{name} was removed");
        }
        assert!(root.join("tmp/.pack-link").symlink_metadata().is_ok());
        assert!(outside.exists());
        assert_eq!(backend.get(Kind::Snapshot, "kept").unwrap(), b"an object");
        assert_eq!(backend.remove_leftovers(hour).unwrap(), 0);
        // With no age limit, the young ones go too.
        assert_eq!(backend.remove_leftovers(Duration::ZERO).unwrap(), 2);
    }

    #[test]
    fn remove_leftovers_of_a_missing_repository_is_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path().join("absent"));
        assert_eq!(backend.remove_leftovers(Duration::ZERO).unwrap(), 0);
    }
}
