//! The metadata archive: a tar.gz of one JSON file per object (layout in
//! [`ferry_protocol::layout`]), written and read as streams.
//!
//! Writing: objects go through a bounded channel to a blocking task that tars and gzips them
//! into parts, which an async task uploads as a multipart upload. Memory holds a few objects and
//! at most two parts, whatever the size of the backup.
//!
//! Reading: the archive is downloaded and gunzipped once into a spool file, while its entries are
//! indexed; restore then reads objects tier by tier from the spool, in whatever order it needs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use bytes::{Bytes, BytesMut};
use ferry_protocol::layout::{
    ARCHIVE_FORMAT_VERSION, ARCHIVE_VERSION_PATH, ArchiveItem, GroupResource,
};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::storage::{PART_SIZE, Upload};

struct Entry {
    path: String,
    body: Vec<u8>,
}

/// A streaming archive upload in progress.
pub struct ArchiveWriter {
    entries: mpsc::Sender<Entry>,
    tar_task: JoinHandle<Result<()>>,
    upload_task: JoinHandle<Result<Upload>>,
}

impl ArchiveWriter {
    /// Starts writing an archive into `upload`, beginning with the format version.
    pub fn start(upload: Upload) -> ArchiveWriter {
        let (entries, mut entry_rx) = mpsc::channel::<Entry>(64);
        let (part_tx, mut part_rx) = mpsc::channel::<Bytes>(2);
        let tar_task = tokio::task::spawn_blocking(move || {
            let sink = PartSink {
                buffer: BytesMut::with_capacity(PART_SIZE),
                parts: part_tx,
            };
            let mut tar = tar::Builder::new(GzEncoder::new(sink, Compression::default()));
            append(
                &mut tar,
                ARCHIVE_VERSION_PATH,
                ARCHIVE_FORMAT_VERSION.as_bytes(),
            )?;
            while let Some(entry) = entry_rx.blocking_recv() {
                append(&mut tar, &entry.path, &entry.body)?;
            }
            let mut sink = tar
                .into_inner()
                .map_err(archive_io)?
                .finish()
                .map_err(archive_io)?;
            sink.flush_part(true)
        });
        let upload_task = tokio::spawn(async move {
            let mut upload = upload;
            while let Some(part) = part_rx.recv().await {
                if let Err(error) = upload.send_part(part).await {
                    upload.abort().await;
                    return Err(error);
                }
            }
            Ok(upload)
        });
        ArchiveWriter {
            entries,
            tar_task,
            upload_task,
        }
    }

    /// Adds one object, at its group's preferred version.
    pub async fn add(&self, item: &ArchiveItem, body: Vec<u8>) -> Result<()> {
        self.add_entry(item.path(), body).await
    }

    /// Adds an object's copy at another version its group serves.
    pub async fn add_at(&self, item: &ArchiveItem, version: &str, body: Vec<u8>) -> Result<()> {
        self.add_entry(item.path_at(version), body).await
    }

    async fn add_entry(&self, path: String, body: Vec<u8>) -> Result<()> {
        let entry = Entry { path, body };
        if self.entries.send(entry).await.is_err() {
            // The tar task ended early; its error is what `finish` reports.
            return Err(Error::PipelineStopped("the archive writer"));
        }
        Ok(())
    }

    /// Finishes the archive and completes the upload; the archive object appears only now.
    pub async fn finish(self) -> Result<()> {
        drop(self.entries);
        let tarred = self.tar_task.await.map_err(|source| Error::Task {
            task: "the archive writer",
            source,
        })?;
        let upload = self.upload_task.await.map_err(|source| Error::Task {
            task: "the archive upload",
            source,
        })??;
        match tarred {
            Ok(()) => upload.finish().await,
            Err(error) => {
                upload.abort().await;
                Err(error)
            }
        }
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, body: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, body).map_err(archive_io)
}

fn archive_io(source: std::io::Error) -> Error {
    Error::Io {
        context: "writing the archive".to_owned(),
        source,
    }
}

/// Cuts the gzip stream into upload parts.
struct PartSink {
    buffer: BytesMut,
    parts: mpsc::Sender<Bytes>,
}

impl PartSink {
    fn flush_part(&mut self, last: bool) -> Result<()> {
        if self.buffer.is_empty() && !last {
            return Ok(());
        }
        let part = self.buffer.split().freeze();
        self.parts
            .blocking_send(part)
            .map_err(|_| Error::PipelineStopped("the archive upload"))
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= PART_SIZE {
            self.flush_part(false).map_err(std::io::Error::other)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How much of an archive a restore reads at most. An archive is input from the bucket: a crafted
/// one must not fill the controller's disk or memory (a gzip bomb expands a few kilobytes into
/// terabytes of zeros).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// One object's JSON. The API server keeps objects of at most about 1.5 MiB in etcd.
    pub object_bytes: u64,
    /// Everything, gunzipped, in the spool file (which deploy/controller.yaml's emptyDir holds).
    pub spool_bytes: u64,
    /// Objects in the index, which is held in memory.
    pub objects: usize,
}

impl Default for ReadLimits {
    fn default() -> ReadLimits {
        ReadLimits {
            object_bytes: 16 << 20,
            spool_bytes: 8 << 30,
            objects: 2_000_000,
        }
    }
}

/// `bytes` for a message: in MiB when it is a whole number of them.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Where one object sits in the spool file.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    len: u64,
}

/// A downloaded, indexed archive.
#[derive(Debug)]
pub struct Archive {
    spool: File,
    format_version: String,
    items: BTreeMap<GroupResource, Vec<(ArchiveItem, Span)>>,
    /// Copies at the other versions the source served, by item.
    other_versions: BTreeMap<ArchiveItem, Vec<(String, Span)>>,
}

impl Archive {
    /// Downloads and indexes an archive. A malformed archive, an unknown format version, or an
    /// entry whose path is not a plain `resources/...` path fails the whole read, before
    /// anything is restored.
    pub async fn read(reader: impl AsyncRead + Send + Unpin + 'static) -> Result<Archive> {
        tokio::task::spawn_blocking(move || {
            let bridge = tokio_util::io::SyncIoBridge::new(reader);
            Archive::index(GzDecoder::new(bridge), ReadLimits::default())
        })
        .await
        .map_err(|source| Error::Task {
            task: "the archive reader",
            source,
        })?
    }

    fn index(gunzipped: impl Read, limits: ReadLimits) -> Result<Archive> {
        let bad = Error::MalformedArchive;
        let mut spool = tempfile::tempfile().map_err(|source| Error::Io {
            context: "creating the archive's spool file".to_owned(),
            source,
        })?;
        let mut archive = tar::Archive::new(gunzipped);
        let mut items: BTreeMap<GroupResource, Vec<(ArchiveItem, Span)>> = BTreeMap::new();
        let mut other_versions: BTreeMap<ArchiveItem, Vec<(String, Span)>> = BTreeMap::new();
        let mut format_version = None;
        let mut offset = 0u64;
        let mut count = 0usize;
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let path = String::from_utf8(entry.path_bytes().into_owned())
                .map_err(|_| bad("an entry's path is not UTF-8".to_owned()))?;
            if entry.header().entry_type() == tar::EntryType::Directory {
                continue;
            }
            if entry.header().entry_type() != tar::EntryType::Regular {
                return Err(bad(format!("entry {path:?} is not a regular file")));
            }
            if path == ARCHIVE_VERSION_PATH {
                let mut version = String::new();
                entry
                    .by_ref()
                    .take(64)
                    .read_to_string(&mut version)
                    .map_err(|e| bad(e.to_string()))?;
                format_version = Some(version.trim().to_owned());
                continue;
            }
            let (item, version) =
                ArchiveItem::parse_entry(&path).map_err(|e| bad(e.to_string()))?;
            // The header's size is the archive's word; the bytes read are what counts.
            let room = limits
                .object_bytes
                .min(limits.spool_bytes.saturating_sub(offset));
            let len = std::io::copy(&mut entry.by_ref().take(room + 1), &mut spool)
                .map_err(|e| bad(format!("{path}: {e}")))?;
            if len > limits.object_bytes {
                return Err(bad(format!(
                    "{path} is larger than {}, more than any Kubernetes object",
                    size(limits.object_bytes)
                )));
            }
            if len > room {
                return Err(bad(format!(
                    "it holds more than {} of objects, the most a restore reads",
                    size(limits.spool_bytes)
                )));
            }
            count += 1;
            if count > limits.objects {
                return Err(bad(format!(
                    "it holds more than {} objects, the most a restore reads",
                    limits.objects
                )));
            }
            let span = Span { offset, len };
            match version {
                None => items
                    .entry(item.resource.clone())
                    .or_default()
                    .push((item, span)),
                Some(version) => other_versions
                    .entry(item)
                    .or_default()
                    .push((version, span)),
            }
            offset += len;
        }
        let format_version =
            format_version.ok_or_else(|| bad(format!("it has no {ARCHIVE_VERSION_PATH}")))?;
        let major = |v: &str| v.split('.').next().map(str::to_owned);
        if major(&format_version) != major(ARCHIVE_FORMAT_VERSION) {
            return Err(Error::ArchiveVersion {
                found: format_version,
                supported: ARCHIVE_FORMAT_VERSION,
            });
        }
        Ok(Archive {
            spool,
            format_version,
            items,
            other_versions,
        })
    }

    pub fn format_version(&self) -> &str {
        &self.format_version
    }

    /// The resource types in the archive.
    pub fn resources(&self) -> impl Iterator<Item = &GroupResource> {
        self.items.keys()
    }

    /// The items of one resource type.
    pub fn items(&self, resource: &GroupResource) -> impl Iterator<Item = &ArchiveItem> {
        self.items
            .get(resource)
            .into_iter()
            .flatten()
            .map(|(item, _)| item)
    }

    pub fn len(&self) -> usize {
        self.items.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The other versions the archive holds an item at, besides its preferred one.
    pub fn other_versions(&self, item: &ArchiveItem) -> impl Iterator<Item = &str> {
        self.other_versions
            .get(item)
            .into_iter()
            .flatten()
            .map(|(version, _)| version.as_str())
    }

    /// Reads one object back as JSON, at its preferred version.
    pub fn object(&self, item: &ArchiveItem) -> Result<serde_json::Value> {
        self.object_at(item, None)
    }

    /// Reads one object back as JSON, at its preferred version (None) or another it holds.
    pub fn object_at(
        &self,
        item: &ArchiveItem,
        version: Option<&str>,
    ) -> Result<serde_json::Value> {
        let span = match version {
            None => self
                .items
                .get(&item.resource)
                .and_then(|items| items.iter().find(|(candidate, _)| candidate == item))
                .map(|(_, span)| *span),
            Some(version) => self
                .other_versions
                .get(item)
                .and_then(|copies| copies.iter().find(|(v, _)| v == version))
                .map(|(_, span)| *span),
        };
        let span = span.ok_or_else(|| Error::NotFound {
            what: format!(
                "{} in the archive",
                version.map_or_else(|| item.path(), |v| item.path_at(v))
            ),
        })?;
        let mut body = vec![0; usize::try_from(span.len).expect("an object fits in memory")];
        let mut spool = &self.spool;
        spool
            .seek(SeekFrom::Start(span.offset))
            .and_then(|_| spool.read_exact(&mut body))
            .map_err(|source| Error::Io {
                context: format!("reading {} from the spool file", item.path()),
                source,
            })?;
        serde_json::from_slice(&body).map_err(|source| Error::InvalidJson {
            what: format!("{} in the archive", item.path()),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (path, body) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the name raw, as a crafted archive would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            tar.append(&header, *body).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    fn index(bytes: Vec<u8>) -> Result<Archive> {
        index_within(bytes, ReadLimits::default())
    }

    fn index_within(bytes: Vec<u8>, limits: ReadLimits) -> Result<Archive> {
        Archive::index(GzDecoder::new(std::io::Cursor::new(bytes)), limits)
    }

    #[test]
    fn oversized_objects_archives_and_bombs_are_refused() {
        let limits = ReadLimits {
            object_bytes: 1024,
            spool_bytes: 4096,
            objects: 3,
        };
        let object = |n: usize| vec![b' '; n];
        let within = tar_gz(&[
            ("metadata/version", b"1.0.0"),
            ("resources/a/cluster/b.json", &object(1024)),
        ]);
        assert!(index_within(within, limits).is_ok());

        let large = tar_gz(&[
            ("metadata/version", b"1.0.0"),
            ("resources/a/cluster/b.json", &object(1025)),
        ]);
        let error = index_within(large, limits).unwrap_err().to_string();
        assert!(error.contains("larger than"), "{error}");

        let entries: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| (format!("resources/a/cluster/b{i}.json"), object(1000)))
            .collect();
        let mut many: Vec<(&str, &[u8])> = vec![("metadata/version", b"1.0.0")];
        many.extend(entries.iter().map(|(p, b)| (p.as_str(), b.as_slice())));
        let roomy = ReadLimits {
            objects: 100,
            ..limits
        };
        let error = index_within(tar_gz(&many), roomy).unwrap_err().to_string();
        assert!(error.contains("more than 4096 bytes of objects"), "{error}");

        let small: Vec<(String, Vec<u8>)> = (0..4)
            .map(|i| (format!("resources/a/cluster/c{i}.json"), object(2)))
            .collect();
        let mut many: Vec<(&str, &[u8])> = vec![("metadata/version", b"1.0.0")];
        many.extend(small.iter().map(|(p, b)| (p.as_str(), b.as_slice())));
        let error = index_within(tar_gz(&many), limits).unwrap_err().to_string();
        assert!(error.contains("more than 3 objects"), "{error}");

        // A bomb: 64 MiB of zeros in one entry gzips to about 64 KiB; it is refused after
        // reading just past the object limit, not expanded whole.
        let bomb = tar_gz(&[
            ("metadata/version", b"1.0.0"),
            ("resources/a/cluster/bomb.json", &vec![0; 64 << 20]),
        ]);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let error = index(bomb).unwrap_err().to_string();
        assert!(error.contains("larger than 16 MiB"), "{error}");
    }

    #[test]
    fn an_archive_is_indexed_and_its_objects_read_back() {
        let archive = index(tar_gz(&[
            ("metadata/version", b"1.0.0\n"),
            (
                "resources/configmaps/namespaces/app/settings.json",
                br#"{"kind":"ConfigMap"}"#,
            ),
            (
                "resources/deployments.apps/namespaces/app/web.json",
                br#"{"kind":"Deployment"}"#,
            ),
            (
                "resources/namespaces/cluster/app.json",
                br#"{"kind":"Namespace"}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(archive.len(), 3);
        assert_eq!(archive.format_version(), "1.0.0");
        let deployments = GroupResource::new("deployments", "apps");
        let web = archive.items(&deployments).next().unwrap().clone();
        assert_eq!(web.namespace.as_deref(), Some("app"));
        assert_eq!(archive.object(&web).unwrap()["kind"], "Deployment");
        let namespace = archive
            .items(&GroupResource::new("namespaces", ""))
            .next()
            .unwrap()
            .clone();
        assert_eq!(archive.object(&namespace).unwrap()["kind"], "Namespace");
    }

    #[test]
    fn crafted_and_malformed_archives_are_refused_whole() {
        let traversal = tar_gz(&[
            ("metadata/version", b"1.0.0"),
            ("resources/secrets/namespaces/../../etc/x.json", b"{}"),
        ]);
        let error = index(traversal).unwrap_err().to_string();
        assert!(
            error.contains("malformed") && error.contains(".."),
            "{error}"
        );

        let absolute = tar_gz(&[
            ("metadata/version", b"1.0.0"),
            ("/resources/secrets/cluster/x.json", b"{}"),
        ]);
        assert!(index(absolute).is_err());

        let unversioned = tar_gz(&[("resources/secrets/cluster/x.json", b"{}")]);
        assert!(
            index(unversioned)
                .unwrap_err()
                .to_string()
                .contains("metadata/version")
        );

        let future = tar_gz(&[("metadata/version", b"2.0.0")]);
        assert!(
            index(future)
                .unwrap_err()
                .to_string()
                .contains("upgrade Ferry")
        );

        assert!(index(b"not a gzip stream".to_vec()).is_err());
        let mut truncated = tar_gz(&[
            ("metadata/version", b"1.0.0"),
            ("resources/a/cluster/b.json", &[b'x'; 4096]),
        ]);
        truncated.truncate(truncated.len() / 2);
        assert!(index(truncated).is_err());
    }
}
