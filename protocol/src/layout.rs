//! Where a backup's objects live in a storage location, and how the metadata archive is laid out.
//!
//! A storage location (bucket and optional prefix) holds:
//!
//! ```text
//! <prefix>/backups/<backup>/<backup>.tar.gz               the objects, one JSON file each
//! <prefix>/backups/<backup>/ferry-backup.json             the Backup resource as it ended
//! <prefix>/backups/<backup>/<backup>-resource-list.json.gz  every item, by resource
//! <prefix>/backups/<backup>/<backup>-results.json.gz      warnings and errors
//! <prefix>/backups/<backup>/<backup>-logs.gz              the backup's log lines
//! <prefix>/backups/<backup>/<backup>-volumes.json.gz      each volume's snapshot (crate::volume)
//! <prefix>/restores/<restore>/<restore>-results.json.gz   per-object outcomes of a restore
//! <prefix>/restores/<restore>/<restore>-logs.gz
//! <prefix>/restores/<restore>/<restore>-volumes.json.gz   pod volumes the agents restore into
//! ```
//!
//! Inside the archive:
//!
//! ```text
//! metadata/version                                        the archive format version
//! resources/<resource>[.<group>]/namespaces/<ns>/<name>.json
//! resources/<resource>[.<group>]/cluster/<name>.json
//! ```
//!
//! The group is left out for the core group (`pods`, `deployments.apps`), as Velero does, so
//! tools that read Velero archives read Ferry's.

use std::fmt;

/// The archive layout version this build writes, in `metadata/version`.
pub const ARCHIVE_FORMAT_VERSION: &str = "1.0.0";

/// The path of the version file inside the archive.
pub const ARCHIVE_VERSION_PATH: &str = "metadata/version";

/// The object keys of one backup in a storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKeys {
    dir: String,
    name: String,
}

impl BackupKeys {
    pub fn new(prefix: Option<&str>, backup: &str) -> BackupKeys {
        BackupKeys {
            dir: format!("{}backups/{backup}/", prefix_dir(prefix)),
            name: backup.to_owned(),
        }
    }

    /// The directory all of the backup's objects are under, ending in `/`.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    pub fn archive(&self) -> String {
        format!("{}{}.tar.gz", self.dir, self.name)
    }

    pub fn record(&self) -> String {
        format!("{}ferry-backup.json", self.dir)
    }

    pub fn resource_list(&self) -> String {
        format!("{}{}-resource-list.json.gz", self.dir, self.name)
    }

    pub fn results(&self) -> String {
        format!("{}{}-results.json.gz", self.dir, self.name)
    }

    pub fn logs(&self) -> String {
        format!("{}{}-logs.gz", self.dir, self.name)
    }

    /// The volume records ([`crate::volume::VolumeRecords`]).
    pub fn volumes(&self) -> String {
        format!("{}{}-volumes.json.gz", self.dir, self.name)
    }
}

/// The object keys of one restore in a storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreKeys {
    dir: String,
    name: String,
}

impl RestoreKeys {
    pub fn new(prefix: Option<&str>, restore: &str) -> RestoreKeys {
        RestoreKeys {
            dir: format!("{}restores/{restore}/", prefix_dir(prefix)),
            name: restore.to_owned(),
        }
    }

    pub fn results(&self) -> String {
        format!("{}{}-results.json.gz", self.dir, self.name)
    }

    pub fn logs(&self) -> String {
        format!("{}{}-logs.gz", self.dir, self.name)
    }

    /// The pod volumes the node agents restore into ([`crate::volume::VolumeRecords`]).
    pub fn volumes(&self) -> String {
        format!("{}{}-volumes.json.gz", self.dir, self.name)
    }
}

/// The prefix under which every backup directory lives, for listing backups in a bucket.
pub fn backups_prefix(prefix: Option<&str>) -> String {
    format!("{}backups/", prefix_dir(prefix))
}

/// Where a storage location keeps the node agents' repositories: one per namespace below it,
/// `<prefix>/repositories/<namespace>/`.
pub fn repositories_prefix(prefix: Option<&str>) -> String {
    format!("{}repositories/", prefix_dir(prefix))
}

/// A location's prefix as the start of its keys: `team/a/`, or nothing.
pub fn prefix_dir(prefix: Option<&str>) -> String {
    match prefix.map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/"),
        _ => String::new(),
    }
}

/// A resource type as it appears in archive paths: plural name and API group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    pub resource: String,
    /// Empty for the core group.
    pub group: String,
}

impl GroupResource {
    pub fn new(resource: &str, group: &str) -> GroupResource {
        GroupResource {
            resource: resource.to_owned(),
            group: group.to_owned(),
        }
    }

    /// Whether this is `resource` of `group` (empty for the core group).
    pub fn is(&self, resource: &str, group: &str) -> bool {
        self.resource == resource && self.group == group
    }

    /// Parses `resource` or `resource.group` (`deployments.apps`, `widgets.example.com`).
    pub fn parse(text: &str) -> GroupResource {
        match text.split_once('.') {
            Some((resource, group)) => GroupResource::new(resource, group),
            None => GroupResource::new(text, ""),
        }
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One object's place in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveItem {
    pub resource: GroupResource,
    /// None for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
}

/// Why an archive path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadArchivePath {
    pub path: String,
    pub reason: &'static str,
}

impl fmt::Display for BadArchivePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "archive entry {:?}: {}", self.path, self.reason)
    }
}

impl std::error::Error for BadArchivePath {}

impl ArchiveItem {
    /// The item's path inside the archive.
    pub fn path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!(
                "resources/{}/namespaces/{ns}/{}.json",
                self.resource, self.name
            ),
            None => format!("resources/{}/cluster/{}.json", self.resource, self.name),
        }
    }

    /// Parses an archive path back into an item. Every component must be a plain name: an
    /// archive is input from storage, and a crafted one must not steer a restore anywhere.
    pub fn parse(path: &str) -> Result<ArchiveItem, BadArchivePath> {
        let bad = |reason| {
            Err(BadArchivePath {
                path: path.to_owned(),
                reason,
            })
        };
        if path.starts_with('/') {
            return bad("absolute paths are not allowed");
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\\'))
        {
            return bad("empty, `.` and `..` components are not allowed");
        }
        let file_name = |file: &str| {
            file.strip_suffix(".json")
                .filter(|n| !matches!(*n, "" | "." | ".."))
                .map(str::to_owned)
        };
        match parts.as_slice() {
            ["resources", resource, "namespaces", namespace, file] => match file_name(file) {
                Some(name) => Ok(ArchiveItem {
                    resource: GroupResource::parse(resource),
                    namespace: Some((*namespace).to_owned()),
                    name,
                }),
                None => bad("expected <name>.json"),
            },
            ["resources", resource, "cluster", file] => match file_name(file) {
                Some(name) => Ok(ArchiveItem {
                    resource: GroupResource::parse(resource),
                    namespace: None,
                    name,
                }),
                None => bad("expected <name>.json"),
            },
            _ => bad(
                "expected resources/<resource>/namespaces/<namespace>/<name>.json or resources/<resource>/cluster/<name>.json",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_keys_sit_under_the_location_prefix() {
        let keys = BackupKeys::new(Some("/team-a/"), "nightly");
        assert_eq!(keys.archive(), "team-a/backups/nightly/nightly.tar.gz");
        assert_eq!(keys.record(), "team-a/backups/nightly/ferry-backup.json");
        assert_eq!(
            BackupKeys::new(None, "b").results(),
            "backups/b/b-results.json.gz"
        );
        assert_eq!(backups_prefix(Some("")), "backups/");
        assert_eq!(
            RestoreKeys::new(Some("p"), "r").logs(),
            "p/restores/r/r-logs.gz"
        );
    }

    #[test]
    fn item_paths_round_trip() {
        let items = [
            ArchiveItem {
                resource: GroupResource::new("deployments", "apps"),
                namespace: Some("shop".into()),
                name: "web".into(),
            },
            ArchiveItem {
                resource: GroupResource::new("persistentvolumes", ""),
                namespace: None,
                name: "pv-1".into(),
            },
            ArchiveItem {
                resource: GroupResource::new("widgets", "example.com"),
                namespace: Some("ns".into()),
                name: "a.b".into(),
            },
        ];
        assert_eq!(
            items[0].path(),
            "resources/deployments.apps/namespaces/shop/web.json"
        );
        assert_eq!(
            items[1].path(),
            "resources/persistentvolumes/cluster/pv-1.json"
        );
        for item in items {
            assert_eq!(ArchiveItem::parse(&item.path()).unwrap(), item);
        }
    }

    #[test]
    fn crafted_paths_are_refused() {
        for path in [
            "/resources/pods/cluster/x.json",
            "resources/pods/namespaces/../../etc/x.json",
            "resources/pods/namespaces/ns/..json",
            "resources/pods/namespaces//x.json",
            "resources/pods/cluster/.json",
            "resources/pods/other/x.json",
            "resources/pods/namespaces/ns/x.yaml",
            "metadata/version",
        ] {
            assert!(ArchiveItem::parse(path).is_err(), "{path} was accepted");
        }
        let error = ArchiveItem::parse("resources/pods/namespaces/../x.json").unwrap_err();
        assert!(error.to_string().contains("`..`"), "{error}");
    }
}
