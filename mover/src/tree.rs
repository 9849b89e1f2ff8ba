//! Trees: one directory listing per tree blob, with everything a faithful restore needs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{Id, os_bytes};

/// How deep directories may nest in a snapshot. A backup reports deeper ones as errors and leaves
/// them out, and a restore refuses a tree nesting deeper, so that whatever was backed up without
/// error restores, and no crafted tree can exhaust a stack.
pub const MAX_DEPTH: usize = 1024;

/// The longest path (relative to the backed-up directory) a snapshot holds: Linux resolves no
/// longer path, so a restore could not create its entry. A backup reports longer ones as errors.
pub const MAX_PATH: usize = 4095;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// A piece of a file's content: a stored chunk, or a run of zeros that costs nothing and is
/// restored as a hole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Extent {
    Blob(Id),
    Hole { hole: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "os_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "crate::crypto::hex_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(with = "os_bytes")]
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// ctime, inode and device are not restored; they tell the next backup what is unchanged and
    /// which entries are hard links of one another.
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub inode: u64,
    pub device: u64,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub links: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Extent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "os_bytes")]
    pub link_target: Vec<u8>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

fn one() -> u64 {
    1
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_one(value: &u64) -> bool {
    *value == 1
}

impl Node {
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Refuses names that could escape the restore target: empty, `.`, `..`, or with a slash or
    /// NUL. A tree crafted by someone holding the key must not write outside the target.
    pub fn check_name(&self) -> Result<()> {
        let name = &self.name;
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(Error::UnsafePath(format!(
                "entry name {:?}",
                self.name_lossy()
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Deterministic bytes (nodes sorted by name), so an unchanged directory yields the same blob.
    pub fn encode(&mut self) -> Vec<u8> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        serde_json::to_vec(self).expect("a tree serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Tree> {
        serde_json::from_slice(bytes).map_err(|error| Error::Format(format!("tree: {error}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn node_strategy() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(any::<u8>(), 1..20),
            prop_oneof![
                Just(NodeKind::File),
                Just(NodeKind::Dir),
                Just(NodeKind::Symlink),
                Just(NodeKind::Fifo)
            ],
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<i64>(),
                0u32..1_000_000_000,
            ),
            (any::<u64>(), any::<u64>(), 1u64..5, any::<u64>()),
            proptest::collection::vec(
                prop_oneof![
                    any::<[u8; 32]>().prop_map(|b| Extent::Blob(Id(b))),
                    any::<u64>().prop_map(|hole| Extent::Hole { hole })
                ],
                0..4,
            ),
            proptest::collection::vec(any::<u8>(), 0..10),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..8),
                    proptest::collection::vec(any::<u8>(), 0..8),
                ),
                0..3,
            ),
        )
            .prop_map(
                |(
                    name,
                    kind,
                    (mode, uid, gid, mtime, nsec),
                    (inode, device, links, size),
                    content,
                    link_target,
                    xattrs,
                )| Node {
                    name,
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime,
                    mtime_nsec: nsec,
                    ctime: mtime,
                    ctime_nsec: nsec,
                    inode,
                    device,
                    links,
                    size,
                    content,
                    subtree: None,
                    link_target,
                    rdev: 0,
                    xattrs: xattrs
                        .into_iter()
                        .map(|(name, value)| Xattr { name, value })
                        .collect(),
                },
            )
    }

    proptest! {
        #[test]
        fn trees_round_trip(nodes in proptest::collection::vec(node_strategy(), 0..10)) {
            let mut tree = Tree { nodes };
            let bytes = tree.encode();
            prop_assert_eq!(Tree::decode(&bytes).unwrap(), tree);
        }

        #[test]
        fn garbage_trees_error_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Tree::decode(&bytes);
        }

        #[test]
        fn near_valid_trees_error_and_never_panic(text in "\\{\"nodes\":\\[\\{\"name\":(\"[a-z./]{0,4}\"|\\[[0-9,]{0,9}\\]),\"kind\":\"[a-z]{3,8}\"[^\\]]{0,60}\\}\\]\\}") {
            let _ = Tree::decode(text.as_bytes());
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        let mut tree = Tree { nodes: vec![] };
        let mut node = Node {
            name: b"ok".to_vec(),
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            ctime: 0,
            ctime_nsec: 0,
            inode: 1,
            device: 1,
            links: 1,
            size: 0,
            content: vec![],
            subtree: None,
            link_target: vec![],
            rdev: 0,
            xattrs: vec![],
        };
        node.check_name().unwrap();
        for bad in [&b".."[..], b".", b"", b"a/b", b"/etc", b"x\0y"] {
            node.name = bad.to_vec();
            assert!(
                matches!(node.check_name(), Err(Error::UnsafePath(_))),
                "{bad:?} was accepted"
            );
        }
        tree.nodes.push(node);
        tree.encode();
    }
}
