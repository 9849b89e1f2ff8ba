//! Keeping a repository healthy: `check`, `forget` and `prune`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use crate::backend::Kind;
use crate::blob::{BlobKind, SealedBlob};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{IndexFile, IndexPack};
use crate::lock::RepoLock;
use crate::packer::Packer;
use crate::repository::Repository;
use crate::snapshot::RetentionPolicy;
use crate::tree::{Extent, NodeKind};

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Download every pack and verify every blob, not only the structure.
    pub read_data: bool,
    /// How long to wait for a conflicting (exclusive) lock, such as a prune's, to go.
    pub lock_wait: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: u64,
    pub trees: u64,
    pub packs: u64,
    pub blobs: u64,
    /// Damage: the repository cannot restore everything it claims to hold.
    pub errors: Vec<String>,
    /// Harmless leftovers, such as packs of an interrupted backup that no index names yet;
    /// `prune` removes them.
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

pub fn check(repo: &Arc<Repository>, options: &CheckOptions) -> Result<CheckReport> {
    let _lock = RepoLock::acquire(repo, false, options.lock_wait)?;
    repo.load_index()?;
    let mut report = CheckReport::default();
    let stored: HashMap<Id, u64> = repo
        .backend()
        .list(Kind::Pack)?
        .into_iter()
        .filter_map(|info| info.name.parse::<Id>().ok().map(|id| (id, info.size)))
        .collect();
    {
        let index = repo.index();
        report.packs = index.packs.len() as u64;
        report.blobs = index.blob_count() as u64;
        for (pack, size) in &index.packs {
            match stored.get(pack) {
                None => report.errors.push(format!(
                    "pack {pack} is in the index but missing from the repository"
                )),
                Some(actual) if actual != size => report.errors.push(format!(
                    "pack {pack} holds {actual} bytes; the index says {size}"
                )),
                Some(_) => {}
            }
        }
        for pack in stored.keys() {
            if !index.has_pack(pack) {
                report.warnings.push(format!("pack {pack} is not in any index (left by an interrupted backup; `ferry repo prune` removes it)"));
            }
        }
    }

    // Every snapshot's trees, and every blob they name.
    let mut seen_trees = HashSet::new();
    let listing = repo.list_snapshots()?;
    for (id, error) in &listing.damaged {
        report.errors.push(format!("snapshot {id}: {error}"));
    }
    let snapshots = listing.snapshots;
    report.snapshots = (snapshots.len() + listing.damaged.len()) as u64;
    for (snapshot_id, snapshot) in &snapshots {
        let mut stack = vec![(snapshot.tree, String::from("/"))];
        while let Some((tree_id, path)) = stack.pop() {
            if !seen_trees.insert(tree_id) {
                continue;
            }
            report.trees += 1;
            let tree = match repo.load_tree(&tree_id) {
                Ok(tree) => tree,
                Err(error) => {
                    report.errors.push(format!(
                        "snapshot {}: directory {path}: {error}",
                        snapshot_id.short()
                    ));
                    continue;
                }
            };
            let index = repo.index();
            for node in &tree.nodes {
                let child = format!("{}{}", path, node.name_lossy());
                if let Err(error) = node.check_name() {
                    report.errors.push(format!(
                        "snapshot {}: {child}: {error}",
                        snapshot_id.short()
                    ));
                }
                match node.kind {
                    NodeKind::Dir => match node.subtree {
                        Some(subtree) => stack.push((subtree, format!("{child}/"))),
                        None => report.errors.push(format!(
                            "snapshot {}: directory {child} has no tree",
                            snapshot_id.short()
                        )),
                    },
                    NodeKind::File => {
                        for extent in &node.content {
                            if let Extent::Blob(id) = extent
                                && !index.contains(id)
                            {
                                report.errors.push(format!(
                                    "snapshot {}: file {child}: blob {} is missing from the index",
                                    snapshot_id.short(),
                                    id.short()
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    if options.read_data {
        let packs: Vec<(Id, u64)> = repo.index().packs.clone();
        for (pack, _) in packs {
            if !stored.contains_key(&pack) {
                continue;
            }
            if let Err(error) = verify_pack(repo, &pack) {
                report.errors.push(error);
            }
        }
    }
    Ok(report)
}

/// Downloads a pack and verifies its name, its header and every blob in it.
fn verify_pack(repo: &Repository, pack: &Id) -> Result<(), String> {
    let name = pack.to_hex();
    let bytes = repo
        .backend()
        .get(Kind::Pack, &name)
        .map_err(|error| format!("pack {name}: {error}"))?;
    if Id::hash_of_ciphertext(&bytes) != *pack {
        // Go on to name the damaged blobs, which is what a user needs to know.
        warn!(message = "pack content does not match its name", pack = %pack.short());
    }
    let entries = crate::pack::parse_pack(repo.key(), &name, &bytes)
        .map_err(|error| format!("pack {name}: {error}"))?;
    let mut problems = Vec::new();
    for entry in &entries {
        let end = entry.offset as usize + entry.length as usize;
        let what = format!("blob {} in pack {name}", entry.id);
        if let Err(error) = repo.open_blob(
            &entry.id,
            entry.compression,
            entry.raw_length,
            &bytes[entry.offset as usize..end],
            &what,
        ) {
            problems.push(error.to_string());
        }
    }
    if problems.is_empty() && Id::hash_of_ciphertext(&bytes) != *pack {
        problems.push(format!("pack {name}: content does not match its name"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Removes the snapshots `policy` does not keep, per host and source path; returns their ids.
/// Waits up to `lock_wait` for an exclusive lock (a prune's) to go.
pub fn forget(
    repo: &Arc<Repository>,
    policy: &RetentionPolicy,
    lock_wait: Duration,
) -> Result<Vec<Id>> {
    if policy.is_empty() {
        return Err(Error::InvalidArgument(
            "no retention rule given; pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly".into(),
        ));
    }
    let _lock = RepoLock::acquire(repo, false, lock_wait)?;
    let mut groups: HashMap<(String, String), Vec<(Id, jiff::Timestamp)>> = HashMap::new();
    for (id, snapshot) in repo.snapshots()? {
        groups
            .entry((snapshot.hostname, snapshot.source))
            .or_default()
            .push((id, snapshot.time));
    }
    let mut removed = Vec::new();
    for (_, mut snapshots) in groups {
        snapshots.sort_by_key(|(_, time)| std::cmp::Reverse(*time));
        let times: Vec<_> = snapshots.iter().map(|(_, t)| *t).collect();
        for ((id, _), keep) in snapshots.iter().zip(policy.apply(&times)) {
            if !keep {
                repo.backend().delete(Kind::Snapshot, &id.to_hex())?;
                removed.push(*id);
            }
        }
    }
    Ok(removed)
}

/// Removes the snapshots named by `specs` (full ids or unique prefixes), readable or not: the way
/// out for a snapshot so damaged that it stops prune. Returns their ids. Waits up to `lock_wait`
/// for an exclusive lock to go.
pub fn forget_snapshots(
    repo: &Arc<Repository>,
    specs: &[String],
    lock_wait: Duration,
) -> Result<Vec<Id>> {
    let _lock = RepoLock::acquire(repo, false, lock_wait)?;
    let names: Vec<Id> = repo
        .backend()
        .list(Kind::Snapshot)?
        .into_iter()
        .filter_map(|info| info.name.parse::<Id>().ok())
        .collect();
    let mut chosen = Vec::new();
    for spec in specs {
        let spec = spec.to_ascii_lowercase();
        let matching: Vec<&Id> = names
            .iter()
            .filter(|id| !spec.is_empty() && id.to_hex().starts_with(&spec))
            .collect();
        match matching.as_slice() {
            [id] => chosen.push(**id),
            [] => {
                return Err(Error::InvalidArgument(format!(
                    "no snapshot id starts with {spec:?}; list them with `ferry repo snapshots`"
                )));
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "several snapshots start with {spec:?}; give more digits"
                )));
            }
        }
    }
    for id in &chosen {
        repo.backend().delete(Kind::Snapshot, &id.to_hex())?;
    }
    Ok(chosen)
}

/// Removes every snapshot carrying `tag` (a deleted Backup's `backup-uid=<uid>`); returns their
/// ids. Their data goes at the next prune. Waits up to `lock_wait` for an exclusive lock to go.
pub fn forget_tagged(repo: &Arc<Repository>, tag: &str, lock_wait: Duration) -> Result<Vec<Id>> {
    let _lock = RepoLock::acquire(repo, false, lock_wait)?;
    let mut removed = Vec::new();
    for (id, snapshot) in repo.snapshots()? {
        if snapshot.tags.iter().any(|t| t == tag) {
            repo.backend().delete(Kind::Snapshot, &id.to_hex())?;
            removed.push(id);
        }
    }
    Ok(removed)
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// A pack whose unused bytes reach this fraction is rewritten without them.
    pub repack_threshold: f64,
    /// Packs that no index names are removed only once this old, so that nothing a backup is
    /// writing right now (under a lock this prune could not see) is deleted.
    pub unindexed_grace: Duration,
    /// How long to wait for running backups to release their locks.
    pub lock_wait: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            repack_threshold: 0.3,
            unindexed_grace: Duration::from_secs(3600),
            lock_wait: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub blobs_kept: u64,
    pub blobs_removed: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub unindexed_packs_deleted: u64,
    pub bytes_freed: u64,
    /// Temp files and unfinished uploads of interrupted writes, removed.
    pub leftovers_removed: u64,
    /// Locks of processes that are gone, removed.
    pub stale_locks_removed: u64,
}

/// Mark and sweep: removes every blob no snapshot needs. Crash-safe at every step: new packs,
/// then the new index, then old indexes, and only then old packs.
///
/// Every read it decides from must succeed: a snapshot, tree or index that cannot be read (for any
/// reason but "deleted meanwhile") stops it before anything is deleted, naming the object.
pub fn prune(repo: &Arc<Repository>, options: &PruneOptions) -> Result<PruneReport> {
    let lock = RepoLock::acquire(repo, true, options.lock_wait)?;
    repo.load_index()?;
    // Holding the exclusive lock, the only other locks are stale ones (which every later
    // operation would read again) or those of processes about to back off.
    let mut report = PruneReport {
        stale_locks_removed: crate::lock::remove_stale_locks(repo)? as u64,
        ..PruneReport::default()
    };

    // Mark.
    let mut used: HashSet<Id> = HashSet::new();
    let mut stack: Vec<Id> = repo.snapshots()?.into_iter().map(|(_, s)| s.tree).collect();
    while let Some(tree_id) = stack.pop() {
        if !used.insert(tree_id) {
            continue;
        }
        let tree = repo.load_tree(&tree_id).map_err(|error| {
            Error::Other(format!("cannot read tree {}: {error}; refusing to prune a damaged repository (run `ferry repo check`)", tree_id.short()))
        })?;
        for node in tree.nodes {
            if let Some(subtree) = node.subtree {
                stack.push(subtree);
            }
            for extent in node.content {
                if let Extent::Blob(id) = extent {
                    used.insert(id);
                }
            }
        }
    }

    // Sweep: classify packs.
    let index_names: Vec<String> = repo
        .backend()
        .list(Kind::Index)?
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut old_packs: Vec<IndexPack> = Vec::new();
    let mut seen_packs = HashSet::new();
    for name in &index_names {
        for pack in repo.load_index_file(name)?.packs {
            if seen_packs.insert(pack.id) {
                old_packs.push(pack);
            }
        }
    }
    let mut keep: Vec<IndexPack> = Vec::new();
    let mut delete: Vec<IndexPack> = Vec::new();
    let mut repack: Vec<(IndexPack, Vec<usize>)> = Vec::new();
    // A blob stored twice (two concurrent backups) is kept once: where the index points.
    let mut kept_blobs: HashSet<Id> = HashSet::new();
    for pack in old_packs {
        let mut used_positions = Vec::new();
        let mut used_bytes = 0u64;
        let mut total_bytes = 0u64;
        for (position, blob) in pack.blobs.iter().enumerate() {
            total_bytes += blob.4 as u64;
            if used.contains(&blob.0) && !kept_blobs.contains(&blob.0) {
                used_positions.push(position);
                used_bytes += blob.4 as u64;
            }
        }
        let unused = total_bytes - used_bytes;
        if used_positions.is_empty() {
            report.blobs_removed += pack.blobs.len() as u64;
            report.packs_deleted += 1;
            report.bytes_freed += pack.size;
            delete.push(pack);
        } else if unused as f64 >= options.repack_threshold * total_bytes as f64 {
            for &position in &used_positions {
                kept_blobs.insert(pack.blobs[position].0);
            }
            report.blobs_kept += used_positions.len() as u64;
            report.blobs_removed += (pack.blobs.len() - used_positions.len()) as u64;
            repack.push((pack, used_positions));
        } else {
            for blob in &pack.blobs {
                kept_blobs.insert(blob.0);
            }
            report.blobs_kept += pack.blobs.len() as u64;
            keep.push(pack);
        }
    }

    // Repack the blobs still needed from mostly-empty packs.
    if !repack.is_empty() {
        let packer = Packer::new(repo.clone())?;
        for (pack, positions) in &repack {
            let bytes = repo.backend().get(Kind::Pack, &pack.id.to_hex())?;
            for &position in positions {
                let (id, kind, compression, offset, length, raw_length) = pack.blobs[position];
                let end = offset as usize + length as usize;
                let stored = bytes.get(offset as usize..end).ok_or_else(|| {
                    Error::corrupt(format!("pack {}", pack.id), "shorter than its index says")
                })?;
                packer.add(SealedBlob {
                    id,
                    kind: BlobKind::from_code(kind)?,
                    compression,
                    raw_length,
                    bytes: stored.to_vec(),
                })?;
            }
            report.packs_repacked += 1;
            report.bytes_freed += pack.size;
        }
        // Writes the new packs and an index of them.
        packer.finish()?;
    }
    let repacked_ids: HashSet<Id> = repack.iter().map(|(p, _)| p.id).collect();
    let new_index_names: HashSet<String> = repo
        .backend()
        .list(Kind::Index)?
        .into_iter()
        .map(|i| i.name)
        .filter(|name| !index_names.contains(name))
        .collect();

    // The index of the packs kept, then the old indexes go, then the packs. Nothing is deleted
    // under a lock that others may have judged abandoned meanwhile.
    lock.check_held()?;
    let kept_ids: HashSet<Id> = keep.iter().map(|p| p.id).collect();
    for batch in keep.chunks(1_000) {
        repo.save_index_file(&IndexFile {
            version: 1,
            packs: batch.to_vec(),
        })?;
    }
    lock.check_held()?;
    for name in &index_names {
        if !new_index_names.contains(name) {
            repo.backend().delete(Kind::Index, name)?;
        }
    }
    for pack in delete
        .iter()
        .map(|p| p.id)
        .chain(repacked_ids.iter().copied())
    {
        repo.backend().delete(Kind::Pack, &pack.to_hex())?;
    }
    repo.load_index()?;

    // Packs no index names: left by interrupted backups. Their age is judged by the store's
    // clock, as the lock's LastModified tells it, not by this machine's.
    lock.check_held()?;
    let now = lock.store_time();
    for info in repo.backend().list(Kind::Pack)? {
        let Ok(id) = info.name.parse::<Id>() else {
            continue;
        };
        if kept_ids.contains(&id) || repo.index().has_pack(&id) {
            continue;
        }
        let old_enough = info
            .modified
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= options.unindexed_grace);
        if old_enough {
            repo.backend().delete(Kind::Pack, &info.name)?;
            report.unindexed_packs_deleted += 1;
            report.bytes_freed += info.size;
        }
    }
    // Leftovers cost only space: a store that refuses listing or aborting uploads (a missing
    // permission) does not fail the prune.
    report.leftovers_removed = match repo.backend().remove_leftovers(options.unindexed_grace) {
        Ok(removed) => removed,
        Err(error) => {
            warn!(message = "cannot remove leftovers of interrupted writes", %error);
            0
        }
    };
    info!(message = "prune done", ?report);
    Ok(report)
}
