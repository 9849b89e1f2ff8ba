//! How each PersistentVolume of a backup is kept: the backup's volume policies, then the default.
//!
//! The choice is pure ([`choose`]): it reads the volume, its claim, the backup's spec and the
//! VolumeSnapshotClasses the cluster has, and says what to do; the snapshotters and the node
//! agents do it. The default, for a volume no policy matches:
//! 1. a volume a native snapshotter covers (EBS) gets a native snapshot;
//! 2. a CSI volume whose driver has a VolumeSnapshotClass gets a CSI snapshot;
//! 3. any other volume is backed up by file, through a running pod that mounts it.
//!
//! With `snapshotVolumes: false` no snapshot of either kind is taken. A pod volume named by the
//! pod's `backup.ferry.dev/volumes` annotation, or any with `defaultVolumesToFsBackup`, is backed
//! up by file whatever this says (`pod_volumes::choose_pod_volumes`).

use std::collections::BTreeMap;

use ferry_protocol::crd::{BackupSpec, VolumeAction, VolumeConditions};
use serde_json::Value;

use super::snapshots::volume_source;
use crate::ebs;

/// What becomes of one volume's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    NativeSnapshot,
    CsiSnapshot {
        driver: String,
        class: String,
    },
    /// By file, if a running pod mounts it.
    FileSystem,
    /// Deliberately not backed up; why.
    Skip(String),
    /// What was asked for cannot be done; why, in words a user can act on.
    Fail(String),
}

/// The VolumeSnapshotClass each CSI driver's snapshots use, or why there is no single one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotClasses {
    by_driver: BTreeMap<String, Result<String, String>>,
}

/// The label that makes a VolumeSnapshotClass its driver's class for Ferry's backups.
pub const SNAPSHOT_CLASS_LABEL: &str = "ferry.dev/csi-volumesnapshot-class";
/// Velero's label for the same, honoured so that clusters set up for Velero work as they are.
pub const VELERO_SNAPSHOT_CLASS_LABEL: &str = "velero.io/csi-volumesnapshot-class";

impl SnapshotClasses {
    /// The classes for a backup, from the cluster's VolumeSnapshotClasses (as JSON): those the
    /// spec names per driver, else the one class of each driver labelled for Ferry (or Velero).
    pub fn new(spec: &BackupSpec, cluster_classes: &[Value]) -> SnapshotClasses {
        let mut labelled: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for class in cluster_classes {
            let text = |pointer: &str| class.pointer(pointer).and_then(Value::as_str);
            let (Some(name), Some(driver)) = (text("/metadata/name"), text("/driver")) else {
                continue;
            };
            let chosen = [SNAPSHOT_CLASS_LABEL, VELERO_SNAPSHOT_CLASS_LABEL]
                .iter()
                .any(|label| {
                    class
                        .pointer(&format!("/metadata/labels/{}", label.replace('/', "~1")))
                        .and_then(Value::as_str)
                        == Some("true")
                });
            if chosen {
                labelled
                    .entry(driver.to_owned())
                    .or_default()
                    .push(name.to_owned());
            }
        }
        let mut by_driver: BTreeMap<String, Result<String, String>> = labelled
            .into_iter()
            .map(|(driver, mut names)| {
                names.sort();
                names.dedup();
                let class = if names.len() == 1 {
                    Ok(names.remove(0))
                } else {
                    Err(format!(
                        "VolumeSnapshotClasses {} of CSI driver {driver} are all labelled {SNAPSHOT_CLASS_LABEL}=true; name the one to use in the backup's volumeSnapshotClasses",
                        names.join(", ")
                    ))
                };
                (driver, class)
            })
            .collect();
        for (driver, class) in &spec.volume_snapshot_classes {
            by_driver.insert(driver.clone(), Ok(class.clone()));
        }
        SnapshotClasses { by_driver }
    }

    fn for_driver(&self, driver: &str) -> Option<&Result<String, String>> {
        self.by_driver.get(driver)
    }
}

/// The CSI driver of a PersistentVolume, if it is a CSI volume.
pub fn csi_driver(pv: &Value) -> Option<&str> {
    pv.pointer("/spec/csi/driver").and_then(Value::as_str)
}

/// How each of `persistent_volumes` is kept, by name; `claims` are the backup's claims, whose
/// annotations the policies read.
pub fn choose_all(
    spec: &BackupSpec,
    persistent_volumes: &[Value],
    claims: &[Value],
    classes: &SnapshotClasses,
) -> BTreeMap<String, Choice> {
    let claim_of = |pv: &Value| {
        let reference = pv.pointer("/spec/claimRef")?;
        claims.iter().find(|claim| {
            claim.pointer("/metadata/namespace") == reference.get("namespace")
                && claim.pointer("/metadata/name") == reference.get("name")
        })
    };
    persistent_volumes
        .iter()
        .filter_map(|pv| {
            let name = pv.pointer("/metadata/name")?.as_str()?.to_owned();
            Some((name, choose(spec, pv, claim_of(pv), classes)))
        })
        .collect()
}

/// How `pv` (bound to `claim`, when the backup has it) is kept.
pub fn choose(
    spec: &BackupSpec,
    pv: &Value,
    claim: Option<&Value>,
    classes: &SnapshotClasses,
) -> Choice {
    let policy = spec
        .volume_policies
        .iter()
        .position(|policy| meets(&policy.conditions, pv, claim));
    let action = match policy {
        Some(index) => spec.volume_policies[index].action,
        None => return default_choice(spec, pv, classes),
    };
    let which = format!("volumePolicies[{}]", policy.unwrap_or_default());
    let snapshots_off = spec.snapshot_volumes == Some(false);
    match action {
        VolumeAction::Skip => Choice::Skip(format!("{which} skips it")),
        VolumeAction::FileSystem => Choice::FileSystem,
        VolumeAction::NativeSnapshot | VolumeAction::CsiSnapshot if snapshots_off => Choice::Skip(
            format!("{which} asks for a snapshot, and snapshotVolumes is false"),
        ),
        VolumeAction::NativeSnapshot if ebs::volume_of(pv).is_some() => Choice::NativeSnapshot,
        VolumeAction::NativeSnapshot => Choice::Fail(format!(
            "{which} asks for a native snapshot, and no native snapshotter covers {} volumes",
            volume_source(pv)
        )),
        VolumeAction::CsiSnapshot => match csi_snapshot(pv, classes) {
            Some(Ok(choice)) => choice,
            Some(Err(why)) => Choice::Fail(format!("{which} asks for a CSI snapshot: {why}")),
            None => Choice::Fail(format!(
                "{which} asks for a CSI snapshot, and it is not a CSI volume ({})",
                volume_source(pv)
            )),
        },
    }
}

fn default_choice(spec: &BackupSpec, pv: &Value, classes: &SnapshotClasses) -> Choice {
    if ebs::volume_of(pv).is_some() {
        // `snapshot_volumes` records an EBS volume with snapshots off as skipped, as before.
        return Choice::NativeSnapshot;
    }
    if spec.snapshot_volumes == Some(false) {
        return Choice::FileSystem;
    }
    match csi_snapshot(pv, classes) {
        Some(Ok(choice)) => choice,
        // Several labelled classes: the user meant snapshots, and must say which.
        Some(Err(why)) if csi_driver(pv).is_some_and(|d| classes.for_driver(d).is_some()) => {
            Choice::Fail(why)
        }
        _ => Choice::FileSystem,
    }
}

/// The CSI driver of `pv` and the VolumeSnapshotClass its snapshots use, when it has one.
pub fn snapshot_class(pv: &Value, classes: &SnapshotClasses) -> Option<(String, String)> {
    match csi_snapshot(pv, classes)? {
        Ok(Choice::CsiSnapshot { driver, class }) => Some((driver, class)),
        _ => None,
    }
}

/// A CSI snapshot of `pv`: None when it is no CSI volume, an error when its driver has no class.
fn csi_snapshot(pv: &Value, classes: &SnapshotClasses) -> Option<Result<Choice, String>> {
    let driver = csi_driver(pv)?;
    Some(match classes.for_driver(driver) {
        Some(Ok(class)) => Ok(Choice::CsiSnapshot {
            driver: driver.to_owned(),
            class: class.clone(),
        }),
        Some(Err(why)) => Err(why.clone()),
        None => Err(format!(
            "CSI driver {driver} has no VolumeSnapshotClass labelled {SNAPSHOT_CLASS_LABEL}=true, and the backup's volumeSnapshotClasses names none for it"
        )),
    })
}

/// Whether `pv` and its claim meet every one of `conditions`.
fn meets(conditions: &VolumeConditions, pv: &Value, claim: Option<&Value>) -> bool {
    let class = pv.pointer("/spec/storageClassName").and_then(Value::as_str);
    if !conditions.storage_classes.is_empty()
        && !class.is_some_and(|class| conditions.storage_classes.iter().any(|c| c == class))
    {
        return false;
    }
    if !conditions.csi_drivers.is_empty()
        && !csi_driver(pv).is_some_and(|driver| conditions.csi_drivers.iter().any(|d| d == driver))
    {
        return false;
    }
    if let Some(range) = &conditions.capacity {
        let capacity = pv
            .pointer("/spec/capacity/storage")
            .and_then(Value::as_str)
            .and_then(|q| parse_quantity(q).ok());
        // Validation refused a range that does not parse.
        let Ok((min, max)) = parse_capacity_range(range) else {
            return false;
        };
        match capacity {
            Some(bytes) if min.is_none_or(|m| bytes >= m) && max.is_none_or(|m| bytes <= m) => {}
            _ => return false,
        }
    }
    conditions.claim_annotations.iter().all(|(key, value)| {
        claim
            .and_then(|c| {
                c.pointer(&format!(
                    "/metadata/annotations/{}",
                    key.replace('~', "~0").replace('/', "~1")
                ))
            })
            .and_then(Value::as_str)
            == Some(value.as_str())
    })
}

/// The problems of a backup's volume policies, for validation.
pub fn problems(spec: &BackupSpec) -> Vec<String> {
    spec.volume_policies
        .iter()
        .enumerate()
        .filter_map(|(index, policy)| {
            let range = policy.conditions.capacity.as_deref()?;
            parse_capacity_range(range)
                .err()
                .map(|why| format!("volumePolicies[{index}].conditions.capacity: {why}"))
        })
        .collect()
}

/// The problems of a backup's `volumeSnapshotClasses` against the cluster's classes (as JSON).
pub fn class_problems(spec: &BackupSpec, cluster_classes: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for (driver, class) in &spec.volume_snapshot_classes {
        let found = cluster_classes
            .iter()
            .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(class));
        match found.map(|c| c.get("driver").and_then(Value::as_str).unwrap_or_default()) {
            None => problems.push(format!(
                "volumeSnapshotClasses: VolumeSnapshotClass {class} (for CSI driver {driver}) not found; `kubectl get volumesnapshotclasses` lists them"
            )),
            Some(other) if other != driver => problems.push(format!(
                "volumeSnapshotClasses: VolumeSnapshotClass {class} is of CSI driver {other}, not {driver}"
            )),
            Some(_) => {}
        }
    }
    problems
}

/// `min,max` as bytes; either end may be empty.
fn parse_capacity_range(range: &str) -> Result<(Option<i64>, Option<i64>), String> {
    let Some((min, max)) = range.split_once(',') else {
        return Err(format!(
            "{range:?} is not a range; write min,max such as 0,100Gi or 10Gi,"
        ));
    };
    let end = |text: &str| -> Result<Option<i64>, String> {
        let text = text.trim();
        if text.is_empty() {
            Ok(None)
        } else {
            parse_quantity(text).map(Some)
        }
    };
    let (min, max) = (end(min)?, end(max)?);
    if let (Some(low), Some(high)) = (min, max)
        && low > high
    {
        return Err(format!("{range:?}: the minimum is above the maximum"));
    }
    Ok((min, max))
}

/// A Kubernetes quantity of bytes (`10Gi`, `500M`, `1.5Ti`, `1024`) as bytes, rounded up.
pub fn parse_quantity(text: &str) -> Result<i64, String> {
    let invalid = || format!("{text:?} is not a quantity of bytes; write e.g. 100Gi or 500M");
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return Err(invalid()),
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = (value * multiplier).ceil();
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::crd::VolumePolicy;
    use serde_json::json;

    fn csi_pv(class: &str, size: &str) -> Value {
        json!({"metadata": {"name": "pv-1"}, "spec": {
            "storageClassName": class,
            "capacity": {"storage": size},
            "csi": {"driver": "hostpath.csi.ferry.dev", "volumeHandle": "v1"}}})
    }

    fn ebs_pv() -> Value {
        json!({"metadata": {"name": "pv-2"}, "spec": {
            "storageClassName": "gp3", "capacity": {"storage": "100Gi"},
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-0123456789abcdef0"}}})
    }

    fn class(name: &str, driver: &str, label: Option<&str>) -> Value {
        let labels = label.map(|l| json!({l: "true"})).unwrap_or(json!({}));
        json!({"metadata": {"name": name, "labels": labels}, "driver": driver})
    }

    fn policy(conditions: Value, action: VolumeAction) -> VolumePolicy {
        VolumePolicy {
            conditions: serde_json::from_value(conditions).unwrap(),
            action,
        }
    }

    #[test]
    fn by_default_csi_volumes_with_a_labelled_class_get_csi_snapshots() {
        let spec = BackupSpec::default();
        let labelled = [class(
            "fast",
            "hostpath.csi.ferry.dev",
            Some(SNAPSHOT_CLASS_LABEL),
        )];
        let classes = SnapshotClasses::new(&spec, &labelled);
        let csi = Choice::CsiSnapshot {
            driver: "hostpath.csi.ferry.dev".into(),
            class: "fast".into(),
        };
        assert_eq!(choose(&spec, &csi_pv("c", "1Gi"), None, &classes), csi);
        // Velero's label works too; an unlabelled class is not chosen.
        let velero = [class(
            "v",
            "hostpath.csi.ferry.dev",
            Some(VELERO_SNAPSHOT_CLASS_LABEL),
        )];
        assert!(matches!(
            choose(&spec, &csi_pv("c", "1Gi"), None, &SnapshotClasses::new(&spec, &velero)),
            Choice::CsiSnapshot { class, .. } if class == "v"
        ));
        let unlabelled = [class("plain", "hostpath.csi.ferry.dev", None)];
        assert_eq!(
            choose(
                &spec,
                &csi_pv("c", "1Gi"),
                None,
                &SnapshotClasses::new(&spec, &unlabelled)
            ),
            Choice::FileSystem
        );
        // EBS volumes keep their native snapshots; snapshots off means by file.
        assert_eq!(
            choose(&spec, &ebs_pv(), None, &classes),
            Choice::NativeSnapshot
        );
        let off = BackupSpec {
            snapshot_volumes: Some(false),
            ..Default::default()
        };
        assert_eq!(
            choose(&off, &csi_pv("c", "1Gi"), None, &classes),
            Choice::FileSystem
        );
    }

    #[test]
    fn two_labelled_classes_of_a_driver_must_be_chosen_between_in_the_spec() {
        let cluster = [
            class("a", "hostpath.csi.ferry.dev", Some(SNAPSHOT_CLASS_LABEL)),
            class("b", "hostpath.csi.ferry.dev", Some(SNAPSHOT_CLASS_LABEL)),
        ];
        let spec = BackupSpec::default();
        let Choice::Fail(why) = choose(
            &spec,
            &csi_pv("c", "1Gi"),
            None,
            &SnapshotClasses::new(&spec, &cluster),
        ) else {
            panic!("two labelled classes must not be guessed between")
        };
        assert!(
            why.contains("a, b") && why.contains("volumeSnapshotClasses"),
            "{why}"
        );
        let named = BackupSpec {
            volume_snapshot_classes: [("hostpath.csi.ferry.dev".into(), "b".into())].into(),
            ..Default::default()
        };
        assert!(matches!(
            choose(&named, &csi_pv("c", "1Gi"), None, &SnapshotClasses::new(&named, &cluster)),
            Choice::CsiSnapshot { class, .. } if class == "b"
        ));
    }

    #[test]
    fn the_first_policy_a_volume_meets_decides() {
        let claim = json!({"metadata": {"annotations": {"ferry.dev/tier": "scratch"}}});
        let spec = BackupSpec {
            volume_policies: vec![
                policy(
                    json!({"claimAnnotations": {"ferry.dev/tier": "scratch"}}),
                    VolumeAction::Skip,
                ),
                policy(json!({"capacity": "10Gi,"}), VolumeAction::FileSystem),
                policy(
                    json!({"storageClasses": ["fast"], "csiDrivers": ["hostpath.csi.ferry.dev"]}),
                    VolumeAction::CsiSnapshot,
                ),
                policy(
                    json!({"storageClasses": ["slow"]}),
                    VolumeAction::NativeSnapshot,
                ),
            ],
            volume_snapshot_classes: [("hostpath.csi.ferry.dev".into(), "snap".into())].into(),
            ..Default::default()
        };
        let classes = SnapshotClasses::new(&spec, &[]);
        assert_eq!(
            choose(&spec, &csi_pv("fast", "1Gi"), Some(&claim), &classes),
            Choice::Skip("volumePolicies[0] skips it".into())
        );
        assert_eq!(
            choose(&spec, &csi_pv("fast", "20Gi"), None, &classes),
            Choice::FileSystem
        );
        assert!(matches!(
            choose(&spec, &csi_pv("fast", "1Gi"), None, &classes),
            Choice::CsiSnapshot { class, .. } if class == "snap"
        ));
        // A native snapshot of a volume no native snapshotter covers is refused, by its policy.
        let Choice::Fail(why) = choose(&spec, &csi_pv("slow", "1Gi"), None, &classes) else {
            panic!("a native snapshot of a CSI volume cannot be taken")
        };
        assert!(why.starts_with("volumePolicies[3]"), "{why}");
        // None matches: the default.
        assert!(matches!(
            choose(&spec, &csi_pv("other", "1Gi"), None, &classes),
            Choice::CsiSnapshot { .. }
        ));
    }

    #[test]
    fn capacities_and_their_ranges_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("10Gi"), Ok(10 << 30));
        assert_eq!(parse_quantity("500M"), Ok(500_000_000));
        assert_eq!(parse_quantity("1.5Ki"), Ok(1536));
        assert_eq!(parse_quantity("42"), Ok(42));
        assert!(parse_quantity("10GB").is_err());
        assert_eq!(
            parse_capacity_range("0,100Gi"),
            Ok((Some(0), Some(100 << 30)))
        );
        assert_eq!(parse_capacity_range("10Gi,"), Ok((Some(10 << 30), None)));
        assert!(parse_capacity_range("100Gi").is_err());
        assert!(parse_capacity_range("2Gi,1Gi").is_err());
        let spec = BackupSpec {
            volume_policies: vec![policy(json!({"capacity": "lots"}), VolumeAction::Skip)],
            ..Default::default()
        };
        assert_eq!(problems(&spec).len(), 1);
        assert!(problems(&spec)[0].starts_with("volumePolicies[0].conditions.capacity"));
    }
}
