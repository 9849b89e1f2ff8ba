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

    fn temp_dir(&self) -> Option<PathBuf> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir)
    }
}
