use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Backend, Kind, ObjectInfo};
use crate::error::{Error, Result};

/// Objects in memory: for tests.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<Objects>,
}

/// Each object's bytes and when it was written, by kind and name.
type Objects = BTreeMap<(Kind, String), (Vec<u8>, SystemTime)>;

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// Lets tests damage or inspect stored bytes.
    pub fn with_object<T>(
        &self,
        kind: Kind,
        name: &str,
        f: impl FnOnce(&mut Vec<u8>) -> T,
    ) -> Option<T> {
        let mut objects = self.objects.lock().expect("memory backend lock");
        objects
            .get_mut(&(kind, name.to_owned()))
            .map(|(bytes, _)| f(bytes))
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn put(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<()> {
        let mut objects = self.objects.lock().expect("memory backend lock");
        objects.insert((kind, name.to_owned()), (bytes.to_vec(), SystemTime::now()));
        Ok(())
    }

    fn put_new(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<bool> {
        let mut objects = self.objects.lock().expect("memory backend lock");
        match objects.entry((kind, name.to_owned())) {
            std::collections::btree_map::Entry::Occupied(_) => Ok(false),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert((bytes.to_vec(), SystemTime::now()));
                Ok(true)
            }
        }
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        let objects = self.objects.lock().expect("memory backend lock");
        objects
            .get(&(kind, name.to_owned()))
            .map(|(bytes, _)| bytes.clone())
            .ok_or_else(|| Error::NotFound {
                name: kind.path_of(name),
            })
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let bytes = self.get(kind, name)?;
        let end = offset
            .checked_add(length)
            .filter(|end| *end <= bytes.len() as u64)
            .ok_or_else(|| {
                Error::corrupt(
                    kind.path_of(name),
                    format!(
                        "shorter than expected: wanted bytes {offset}..{}",
                        offset + length
                    ),
                )
            })?;
        Ok(bytes[offset as usize..end as usize].to_vec())
    }

    fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        let objects = self.objects.lock().expect("memory backend lock");
        Ok(objects
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, name), (bytes, modified))| ObjectInfo {
                name: name.clone(),
                size: bytes.len() as u64,
                modified: Some(*modified),
            })
            .collect())
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        self.objects
            .lock()
            .expect("memory backend lock")
            .remove(&(kind, name.to_owned()));
        Ok(())
    }
}
