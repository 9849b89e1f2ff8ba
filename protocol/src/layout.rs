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
//! resources/<resource>[.<group>]/namespaces/<ns>/<name>.json             at the preferred version
//! resources/<resource>[.<group>]/cluster/<name>.json
//! resources/<resource>[.<group>]/<version>/namespaces/<ns>/<name>.json   at each other version
//! resources/<resource>[.<group>]/<version>/cluster/<name>.json            the group serves it
//! ```
//!
//! The group is left out for the core group (`pods`, `deployments.apps`), as Velero does, so
//! tools that read Velero archives read Ferry's. Each object is there at the version its group
//! prefers, and again at every other version the source cluster served it (format 1.1), so that
//! a cluster that no longer serves the preferred one can still take it.

use std::fmt;

/// The archive layout version this build writes, in `metadata/version`.
pub const ARCHIVE_FORMAT_VERSION: &str = "1.1.0";

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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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

    /// The path of its copy at `version`, one its group serves besides the preferred one.
    pub fn path_at(&self, version: &str) -> String {
        let preferred = self.path();
        let rest = &preferred["resources/".len() + self.resource.to_string().len()..];
        format!("resources/{}/{version}{rest}", self.resource)
    }

    /// Parses an archive path back into an item, at the preferred version (None) or another.
    /// Every component must be a plain name: an archive is input from storage, and a crafted one
    /// must not steer a restore anywhere.
    pub fn parse_entry(path: &str) -> Result<(ArchiveItem, Option<String>), BadArchivePath> {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["resources", resource, version, rest @ ..]
                if is_api_version(version)
                    && matches!(rest.first(), Some(&"namespaces" | &"cluster")) =>
            {
                let preferred = format!("resources/{resource}/{}", rest.join("/"));
                let item = ArchiveItem::parse(&preferred).map_err(|bad| BadArchivePath {
                    path: path.to_owned(),
                    reason: bad.reason,
                })?;
                Ok((item, Some((*version).to_owned())))
            }
            _ => Ok((ArchiveItem::parse(path)?, None)),
        }
    }

    /// Parses the path of an item at its preferred version.
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

/// Whether `text` is a Kubernetes API version: `v1`, `v2beta1`, `v1alpha3`.
pub fn is_api_version(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('v') else {
        return false;
    };
    let digits =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    let (major, level) = match rest.find(|c: char| !c.is_ascii_digit()) {
        None => return digits(rest),
        Some(at) => rest.split_at(at),
    };
    let minor = level
        .strip_prefix("alpha")
        .or_else(|| level.strip_prefix("beta"));
    digits(major) && minor.is_some_and(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_versions_have_paths_of_their_own() {
        let item = ArchiveItem {
            resource: GroupResource::new("widgets", "example.com"),
            namespace: Some("shop".into()),
            name: "w".into(),
        };
        assert_eq!(
            item.path_at("v1beta1"),
            "resources/widgets.example.com/v1beta1/namespaces/shop/w.json"
        );
        assert_eq!(
            ArchiveItem::parse_entry(&item.path_at("v1beta1")).unwrap(),
            (item.clone(), Some("v1beta1".to_owned()))
        );
        assert_eq!(
            ArchiveItem::parse_entry(&item.path()).unwrap(),
            (item, None)
        );
        let cluster = ArchiveItem {
            resource: GroupResource::new("gadgets", "example.com"),
            namespace: None,
            name: "g".into(),
        };
        assert_eq!(
            ArchiveItem::parse_entry("resources/gadgets.example.com/v2/cluster/g.json").unwrap(),
            (cluster, Some("v2".to_owned()))
        );
        // A namespace named like a version is still a namespace.
        assert_eq!(
            ArchiveItem::parse_entry("resources/pods/namespaces/v1/p.json")
                .unwrap()
                .1,
            None
        );
        for bad in [
            "resources/pods/v1/namespaces/../p.json",
            "resources/pods/v1/elsewhere/p.json",
            "resources/pods/vx/cluster/p.json",
        ] {
            assert!(ArchiveItem::parse_entry(bad).is_err(), "{bad}");
        }
        for (text, is) in [
            ("v1", true),
            ("v2beta1", true),
            ("v1alpha3", true),
            ("v0", false),
            ("v1gamma1", false),
            ("1", false),
            ("v", false),
            ("v1beta", false),
        ] {
            assert_eq!(is_api_version(text), is, "{text}");
        }
    }

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
