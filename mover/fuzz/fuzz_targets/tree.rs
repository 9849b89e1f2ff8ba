//! Trees: `Tree::decode` of a tree blob's plaintext (a key holder plants any), then
//! `Node::check_name` on every node, as restore does before it touches the target.
//!
//! A name `check_name` accepts must be a single path component: not empty, not `.` or `..`, no
//! `/`, no NUL, so that joining it to a directory stays in that directory.
#![no_main]

use std::os::unix::ffi::OsStrExt;

use ferry_mover::tree::Tree;
use ferry_mover_fuzz::assert_json_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tree) = Tree::decode(data) else {
        return;
    };
    for node in &tree.nodes {
        let _ = node.name_lossy();
        if node.check_name().is_ok() {
            let name = std::ffi::OsStr::from_bytes(&node.name);
            assert!(!node.name.is_empty() && !node.name.contains(&b'/') && !node.name.contains(&0));
            assert!(node.name != b"." && node.name != b"..");
            let joined = std::path::Path::new("/target").join(name);
            assert_eq!(joined.parent(), Some(std::path::Path::new("/target")));
        }
    }
    assert_json_round_trip(&tree, Tree::decode);
    // The writer's form (sorted by name) decodes to the same tree.
    let mut sorted = tree.clone();
    let bytes = sorted.encode();
    assert_eq!(Tree::decode(&bytes).ok(), Some(sorted));
});
