//! Restore of an image snapshot (see [`crate::backup::backup_image`]: a tree of one regular file)
//! into an open block device or file. The image's data is fetched pack by pack and written at
//! its offsets as a file's would be; its holes are zeroed, since a device holds whatever was on
//! it before. Nothing but the given descriptor is written.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::plan::{BlobPlan, Destination};
use super::{RestoreOptions, RestoreSummary, write};
use crate::backup::image_size;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::lock::RepoLock;
use crate::progress::Tracker;
use crate::repository::Repository;
use crate::tree::{Extent, NodeKind};
use crate::util::available_cores;

/// Zeros are written in pieces of this size where the kernel cannot zero a range itself.
const ZERO_PIECE: usize = 1 << 20;

/// Restores the image snapshot `tree` into `image`, which must hold at least the image's size;
/// bytes past it are left alone. Damaged or missing data fails the restore (an image with a
/// wrong block in it is not restored) after everything else was written.
pub fn restore_image(
    repo: &Arc<Repository>,
    tree: &Id,
    image: &File,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let lock = RepoLock::acquire(repo, false, options.lock_wait)?;
    repo.refresh_index()?;
    let tree = repo.load_tree(tree)?;
    let node = match tree.nodes.as_slice() {
        [node] if node.kind == NodeKind::File => node,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "the snapshot is not an image: it holds {} entries, where an image's holds one file; restore it into a directory instead",
                tree.nodes.len()
            )));
        }
    };
    let capacity = image_size(image)?;
    if capacity < node.size {
        return Err(Error::InvalidArgument(format!(
            "the target holds {capacity} bytes, fewer than the image's {}: restore into a volume of at least that size",
            node.size
        )));
    }
    let tracker = Tracker::new(options.progress.clone());
    tracker.total_files.store(1, Ordering::Relaxed);
    tracker.total_bytes.store(node.size, Ordering::Relaxed);
    let ticker = tracker.start_ticker(Duration::from_millis(250));

    let index = repo.index();
    let mut blobs: HashMap<Id, BlobPlan> = HashMap::new();
    let mut holes = Vec::new();
    let mut offset = 0u64;
    for extent in &node.content {
        match extent {
            Extent::Blob(id) => {
                let location = index.get(id).ok_or_else(|| {
                    Error::corrupt(
                        format!("blob {}", id.short()),
                        "the image needs it and no pack of the repository holds it",
                    )
                })?;
                let length = u64::from(location.raw_length);
                blobs
                    .entry(*id)
                    .or_insert_with(|| BlobPlan {
                        length,
                        destinations: Vec::new(),
                    })
                    .destinations
                    .push(Destination { file: 0, offset });
                offset += length;
            }
            Extent::Hole { hole } => {
                holes.push((offset, *hole));
                offset += hole;
            }
        }
    }
    drop(index);
    if offset != node.size {
        return Err(Error::corrupt(
            "the image snapshot",
            format!(
                "its content covers {offset} bytes, its size says {}",
                node.size
            ),
        ));
    }
    let mut zeroed = 0u64;
    for (offset, length) in holes {
        if options
            .cancel
            .as_ref()
            .is_some_and(|cancel| cancel.load(Ordering::Relaxed))
        {
            return Err(Error::Cancelled);
        }
        zero_range(image, offset, length)
            .map_err(|error| Error::Other(format!("zeroing bytes {offset}+{length}: {error}")))?;
        zeroed += length;
        tracker.bytes_done.fetch_add(length, Ordering::Relaxed);
    }
    let workers = options
        .workers
        .unwrap_or_else(|| (2 * available_cores()).max(4));
    let (counters, damaged) = write::write_image(repo, image, blobs, workers, &tracker);
    if options.sync {
        image
            .sync_all()
            .map_err(|error| Error::Other(format!("flushing the image: {error}")))?;
    }
    lock.check_held()?;
    tracker.finish(ticker);
    if damaged {
        return Err(Error::corrupt(
            "the image",
            "some of its data could not be read from the repository or written; it is incomplete (ferry repo check --read-data names the damage)",
        ));
    }
    Ok(RestoreSummary {
        files_restored: 1,
        bytes_written: counters.written.load(Ordering::Relaxed) + zeroed,
        bytes_downloaded: counters.downloaded.load(Ordering::Relaxed),
        ..Default::default()
    })
}

/// Makes `[offset, offset + length)` of `image` read as zeros: the kernel zeroes the part
/// aligned to 4 KiB (a block device's `BLKZEROOUT` through `fallocate`), the rest is written.
fn zero_range(image: &File, offset: u64, length: u64) -> std::io::Result<()> {
    const ALIGN: u64 = 4096;
    let end = offset + length;
    let (start_aligned, end_aligned) = (offset.div_ceil(ALIGN) * ALIGN, end / ALIGN * ALIGN);
    if end_aligned > start_aligned {
        let zeroed = rustix::fs::fallocate(
            image,
            rustix::fs::FallocateFlags::ZERO_RANGE | rustix::fs::FallocateFlags::KEEP_SIZE,
            start_aligned,
            end_aligned - start_aligned,
        );
        if zeroed.is_ok() {
            write_zeros(image, offset, start_aligned)?;
            return write_zeros(image, end_aligned, end);
        }
    }
    write_zeros(image, offset, end)
}

fn write_zeros(image: &File, mut from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_PIECE.min((to - from) as usize)];
    while from < to {
        let piece = (to - from).min(ZERO_PIECE as u64) as usize;
        image.write_all_at(&zeros[..piece], from)?;
        from += piece as u64;
    }
    Ok(())
}
