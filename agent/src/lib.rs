//! Ferry's node agent and its data mover.
//!
//! The agent runs on every node, reads pod volumes from the kubelet's directory and stores them in
//! a deduplicating, encrypted repository. The same data mover backs the CLI's standalone
//! `ferry volume` commands.
