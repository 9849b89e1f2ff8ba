//! The restore plan: from the snapshot's entries and what the target holds, every directory to
//! make, every file to write and how, and every blob with the places it goes. Nothing here
//! touches the target.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::scan::TargetScan;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repository::Repository;
use crate::tree::{Extent, MAX_DEPTH, Node, NodeKind, Tree};

/// Every entry of the tree, parents before children, with paths relative to the target.
/// Directories nest at most [`MAX_DEPTH`] deep (what a backup keeps), and no deeper path is
/// even looked at: a crafted tree cannot exhaust the stack.
pub(super) fn collect(repo: &Repository, tree: &Id) -> Result<Vec<(PathBuf, Node)>> {
    let mut out = Vec::new();
    let mut pending: Vec<(Id, PathBuf, usize)> = vec![(*tree, PathBuf::new(), 0)];
    while let Some((tree, prefix, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::UnsafePath(format!(
                "directories nested more than {MAX_DEPTH} deep"
            )));
        }
        let tree: Tree = repo.load_tree(&tree)?;
        let mut seen = HashSet::new();
        // Children are listed after their directory: pushed in reverse, so that the listing
        // comes out in tree order, parents first.
        let mut subtrees = Vec::new();
        for node in tree.nodes {
            node.check_name()?;
            if !seen.insert(node.name.clone()) {
                return Err(Error::UnsafePath(format!(
                    "entry {:?} appears twice in one directory",
                    node.name_lossy()
                )));
            }
            let rel = prefix.join(OsStr::from_bytes(&node.name));
            if node.kind == NodeKind::Dir {
                let subtree = node.subtree.ok_or_else(|| {
                    Error::corrupt(format!("directory {}", rel.display()), "no subtree")
                })?;
                subtrees.push((subtree, rel.clone(), depth + 1));
            }
            out.push((rel, node));
        }
        pending.extend(subtrees.into_iter().rev());
    }
    Ok(out)
}

/// Offset, length, and for a blob its id and whether the target already holds it at that offset.
pub(super) type PlannedExtent = (u64, u64, Option<(Id, bool)>);

/// A regular file to write.
pub(super) struct FilePlan {
    pub rel: PathBuf,
    pub node: Node,
    /// Where the data goes while being written: `rel`, or a temp file beside it renamed at the end.
    pub write_rel: PathBuf,
    /// Patched where it is: only the ranges in `written` are written.
    pub in_place: bool,
    /// Offsets of the ranges written (not already in place), for in-place files.
    pub written: Vec<(u64, u64)>,
    pub holes: Vec<(u64, u64)>,
    /// Every extent of the file. Empty for unchanged and damaged files.
    pub layout: Vec<PlannedExtent>,
    /// The target holds it exactly: nothing to write, metadata only.
    pub unchanged: bool,
    /// For a file patched in place whose content moved within it (bytes inserted or removed
    /// before it): the blobs copied from one place of the file to another, in the order that
    /// reads each before any write covers it ([`FilePlan::order_moves`]). Done before every other
    /// write into the file; its holes are punched and its size set only after them.
    pub moves: Vec<Move>,
}

/// A blob copied within a file patched in place.
pub(super) struct Move {
    pub id: Id,
    pub source: u64,
    pub length: u64,
    pub destinations: Vec<u64>,
}

impl FilePlan {
    /// Orders the moves so that none writes over the source of one still to come: all of them
    /// towards the end of the file (content shifted by an insertion before it), done from the
    /// last source to the first, or all towards the start, first to last. Sources are distinct
    /// chunks of the old file and never overlap, so a move can only cover sources on the side it
    /// moves to, and those were read already. Moves both ways cannot always be ordered: `false`,
    /// and the file is written to a temp file instead.
    fn order_moves(&mut self) -> bool {
        let later = |m: &Move| m.destinations.iter().all(|&d| d > m.source);
        let earlier = |m: &Move| m.destinations.iter().all(|&d| d < m.source);
        if self.moves.iter().all(later) {
            self.moves.sort_by_key(|m| std::cmp::Reverse(m.source));
            true
        } else if self.moves.iter().all(earlier) {
            self.moves.sort_by_key(|m| m.source);
            true
        } else {
            false
        }
    }
}

pub(super) struct Destination {
    pub file: u32,
    pub offset: u64,
}

pub(super) struct BlobPlan {
    pub length: u64,
    pub destinations: Vec<Destination>,
}

/// Where in the target a blob can be read: a scanned file and an offset.
#[derive(Clone, Copy)]
pub(super) struct LocalSource {
    pub file: u32,
    pub offset: u64,
}

pub(super) struct RestorePlan {
    /// Directories, parents before children.
    pub dirs: Vec<(PathBuf, Node)>,
    pub files: Vec<FilePlan>,
    /// Hard links: (path, path of the first entry of the same inode).
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Symlinks, FIFOs, sockets and devices.
    pub specials: Vec<(PathBuf, Node)>,
    /// Regular files of the target where the snapshot has a directory: moved aside (they may
    /// hold chunks other files need), removed at the end. (path, aside path)
    pub displaced: Vec<(PathBuf, PathBuf)>,
    /// Every path the snapshot has: what `delete` keeps.
    pub wanted: HashSet<PathBuf>,
    /// Where each file the scan found will be when the data is copied (after displacement).
    pub source_paths: Vec<PathBuf>,
    /// Blobs copied from within the target.
    pub local: Vec<(Id, LocalSource, BlobPlan)>,
    /// Blobs fetched from the repository.
    pub remote: HashMap<Id, BlobPlan>,
    /// Files that cannot be restored whole (blobs missing from the index, a size that does not
    /// add up, or later, writes that failed), by position in `files`.
    pub damaged: HashSet<u32>,
    pub files_unchanged: u64,
    /// Bytes the target already holds in place.
    pub bytes_reused: u64,
}

impl RestorePlan {
    pub fn new(
        entries: Vec<(PathBuf, Node)>,
        scan: TargetScan,
        index: &MasterIndex,
        incremental: bool,
    ) -> RestorePlan {
        let mut plan = RestorePlan {
            dirs: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
            specials: Vec::new(),
            displaced: Vec::new(),
            wanted: entries.iter().map(|(rel, _)| rel.clone()).collect(),
            source_paths: scan.paths.clone(),
            local: Vec::new(),
            remote: HashMap::new(),
            damaged: HashSet::new(),
            files_unchanged: 0,
            bytes_reused: 0,
        };
        let scanned: HashMap<&Path, usize> = scan
            .paths
            .iter()
            .enumerate()
            .map(|(n, rel)| (rel.as_path(), n))
            .collect();
        let mut first_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
        for (rel, node) in entries {
            match node.kind {
                NodeKind::Dir => {
                    if let Some(&n) = scanned.get(rel.as_path()) {
                        let aside = rel.with_file_name(format!(
                            ".ferry-displaced-{}",
                            &Id::random().to_hex()[..12]
                        ));
                        plan.source_paths[n] = aside.clone();
                        plan.displaced.push((rel.clone(), aside));
                    }
                    plan.dirs.push((rel, node));
                }
                NodeKind::File => {
                    if node.links > 1 {
                        if let Some(first) = first_of_inode.get(&(node.device, node.inode)) {
                            plan.links.push((rel, first.clone()));
                            continue;
                        }
                        first_of_inode.insert((node.device, node.inode), rel.clone());
                    }
                    plan.files.push(FilePlan {
                        write_rel: rel.clone(),
                        rel,
                        node,
                        in_place: false,
                        written: Vec::new(),
                        holes: Vec::new(),
                        layout: Vec::new(),
                        unchanged: false,
                        moves: Vec::new(),
                    });
                }
                _ => plan.specials.push((rel, node)),
            }
        }
        plan.lay_out_files(&scan, index);
        plan.avoid_clobbering_sources(&scan);
        plan.assign_blobs(&scan);
        if incremental {
            plan.choose_temp_files(&scan);
        }
        plan
    }

    /// Which blob goes where in each file; which files the target already holds exactly, or in
    /// part (then patched in place).
    fn lay_out_files(&mut self, scan: &TargetScan, index: &MasterIndex) {
        for (position, plan) in self.files.iter_mut().enumerate() {
            let position = position as u32;
            let existing = scan.files.get(&plan.rel);
            let mut offset = 0u64;
            let mut layout = Vec::with_capacity(plan.node.content.len());
            let mut complete = true;
            for extent in &plan.node.content {
                match extent {
                    Extent::Hole { hole } => {
                        layout.push((offset, *hole, None));
                        offset = offset.saturating_add(*hole);
                    }
                    Extent::Blob(id) => match index.get(id) {
                        Some(location) => {
                            let length = location.raw_length as u64;
                            let here = existing.is_some_and(|e| e.chunks.get(&offset) == Some(id));
                            layout.push((offset, length, Some((*id, here))));
                            offset = offset.saturating_add(length);
                        }
                        None => {
                            complete = false;
                            break;
                        }
                    },
                }
            }
            if !complete || offset != plan.node.size {
                self.damaged.insert(position);
                continue;
            }
            if let Some(existing) = existing {
                let all_in_place = layout
                    .iter()
                    .all(|(_, _, blob)| blob.is_none_or(|(_, here)| here));
                let holes_fine = layout
                    .iter()
                    .all(|(o, l, blob)| blob.is_some() || existing.zero_ranges_cover(*o, *l));
                if existing.size == plan.node.size && all_in_place && holes_fine {
                    plan.unchanged = true;
                    self.files_unchanged += 1;
                    self.bytes_reused += plan.node.size;
                    continue;
                }
                plan.in_place = true;
                for (o, l, blob) in &layout {
                    if blob.is_none_or(|(_, here)| !here) {
                        plan.written.push((*o, *l));
                    }
                }
                if existing.size > plan.node.size {
                    plan.written
                        .push((plan.node.size, existing.size - plan.node.size));
                }
            }
            plan.holes = layout
                .iter()
                .filter(|(_, _, blob)| blob.is_none())
                .map(|(o, l, _)| (*o, *l))
                .collect();
            plan.layout = layout;
        }
    }

    /// A file patched in place must not overwrite bytes that some blob is copied from before
    /// that blob is copied. Copies into other files run in parallel with every write, so a file
    /// some other file copies from where it is written goes to a temp file instead, which then
    /// needs all of its chunks, and those may come from yet another file patched in place: repeat
    /// until nothing changes. Copies within the file itself (its content shifted) become moves,
    /// done first and in an order that keeps their sources intact, when such an order exists.
    fn avoid_clobbering_sources(&mut self, scan: &TargetScan) {
        let path_to_plan: HashMap<PathBuf, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.rel.clone(), i))
            .collect();
        loop {
            let mut clobbered = Vec::new();
            for plan in &mut self.files {
                plan.moves.clear();
            }
            for position in 0..self.files.len() {
                let plan = &self.files[position];
                let mut moves: HashMap<Id, Move> = HashMap::new();
                for (offset, length, blob) in &plan.layout {
                    let Some((id, here)) = blob else { continue };
                    if plan.in_place && *here {
                        continue;
                    }
                    let Some(source) = scan.sources.get(id) else {
                        continue;
                    };
                    let source_rel = scan.paths[source.file as usize].as_path();
                    let Some(&other) = path_to_plan.get(source_rel) else {
                        continue;
                    };
                    let covered = self.files[other].in_place
                        && self.files[other]
                            .written
                            .iter()
                            .any(|(o, l)| *o < source.offset + length && source.offset < o + l);
                    if !covered {
                        continue;
                    }
                    if other == position {
                        moves
                            .entry(*id)
                            .or_insert_with(|| Move {
                                id: *id,
                                source: source.offset,
                                length: *length,
                                destinations: Vec::new(),
                            })
                            .destinations
                            .push(*offset);
                    } else {
                        clobbered.push(other);
                    }
                }
                if !moves.is_empty() {
                    let plan = &mut self.files[position];
                    plan.moves = moves.into_values().collect();
                    if !plan.order_moves() {
                        clobbered.push(position);
                    }
                }
            }
            if clobbered.is_empty() {
                return;
            }
            for position in clobbered {
                self.files[position].in_place = false;
            }
        }
    }

    /// Every blob still to write, with its destinations; copied from the target where it holds
    /// the blob, fetched otherwise.
    fn assign_blobs(&mut self, scan: &TargetScan) {
        let mut blobs: HashMap<Id, BlobPlan> = HashMap::new();
        for (position, plan) in self.files.iter().enumerate() {
            if plan.in_place {
                self.bytes_reused += plan
                    .layout
                    .iter()
                    .filter(|(_, _, blob)| blob.is_some_and(|(_, here)| here))
                    .map(|(_, length, _)| length)
                    .sum::<u64>();
            }
            for (offset, length, blob) in &plan.layout {
                let Some((id, here)) = blob else { continue };
                if plan.in_place && *here {
                    continue;
                }
                if plan.moves.iter().any(|m| m.id == *id) {
                    continue; // moved within the file, first (write.rs)
                }
                blobs
                    .entry(*id)
                    .or_insert_with(|| BlobPlan {
                        length: *length,
                        destinations: Vec::new(),
                    })
                    .destinations
                    .push(Destination {
                        file: position as u32,
                        offset: *offset,
                    });
            }
        }
        for (id, plan) in blobs {
            match scan.sources.get(&id) {
                Some(source) => self.local.push((id, *source, plan)),
                None => {
                    self.remote.insert(id, plan);
                }
            }
        }
    }

    /// A file not patched in place whose path the target already uses is written to a temp
    /// file beside it and renamed over it at the end, so that its old content stays readable as
    /// a source until then.
    fn choose_temp_files(&mut self, scan: &TargetScan) {
        for plan in &mut self.files {
            if plan.in_place || plan.unchanged || !scan.occupied.contains(&plan.rel) {
                continue;
            }
            // A name of its own length: the file's own name may already be NAME_MAX long.
            plan.write_rel = plan
                .rel
                .with_file_name(format!(".ferry-new-{}", &Id::random().to_hex()[..16]));
        }
    }
}
