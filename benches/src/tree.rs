//! Directory trees: size on disk and comparison of a restore with its source.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Total size of the regular files under `dir`: (apparent bytes, allocated bytes, file count).
pub fn du(dir: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let mut apparent = 0;
    let mut allocated = 0;
    let mut files = 0;
    walk(dir, &mut |_, md| {
        if md.is_file() {
            apparent += md.len();
            allocated += md.blocks() * 512;
            files += 1;
        }
    })?;
    Ok((apparent, allocated, files))
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        f(&entry.path(), &md);
        if md.is_dir() {
            walk(&entry.path(), f)?;
        }
    }
    Ok(())
}

/// Relative paths of the regular files under `dir`, excluding the data set's marker file.
fn files(dir: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    walk(dir, &mut |p, md| {
        if md.is_file() {
            let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
            if rel != Path::new(crate::dataset::MARKER_FILE) {
                out.insert(rel);
            }
        }
    })?;
    Ok(out)
}

/// How a restored tree differs from its source.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    pub missing: u64,
    pub different: u64,
    pub extra: u64,
    pub examples: Vec<String>,
}

impl Diff {
    pub fn is_exact(&self) -> bool {
        self.missing == 0 && self.different == 0 && self.extra == 0
    }

    /// Identical content for every source file (extra files in the target are tolerated: restic
    /// 0.14 and kopia never delete anything in the target).
    pub fn content_ok(&self) -> bool {
        self.missing == 0 && self.different == 0
    }

    pub fn summary(&self) -> String {
        if self.is_exact() {
            "exact".into()
        } else {
            format!(
                "{} missing, {} different, {} extra (e.g. {})",
                self.missing,
                self.different,
                self.extra,
                self.examples.join(", ")
            )
        }
    }
}

/// Compares every regular file of `restored` with `source` byte for byte.
pub fn compare(source: &Path, restored: &Path) -> anyhow::Result<Diff> {
    let want = files(source)?;
    let have = files(restored)?;
    let mut d = Diff::default();
    let note = |d: &mut Diff, what: &str, p: &Path| {
        if d.examples.len() < 3 {
            d.examples.push(format!("{what} {}", p.display()));
        }
    };
    for p in &want {
        if !have.contains(p) {
            d.missing += 1;
            note(&mut d, "missing", p);
        } else if !same_content(&source.join(p), &restored.join(p))? {
            d.different += 1;
            note(&mut d, "different", p);
        }
    }
    for p in have.difference(&want) {
        d.extra += 1;
        note(&mut d, "extra", p);
    }
    Ok(d)
}

fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    if fs::metadata(a)?.len() != fs::metadata(b)?.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
