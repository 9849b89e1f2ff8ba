//! Where a running operation keeps its volume records: a ConfigMap of its own, in the cluster.
//!
//! The records say which pod, namespace and repository each node agent task works on and which
//! snapshots are the operation's. Read back from the bucket at every poll, they would let anyone
//! who can write to the bucket (or roll an object back to an earlier version of itself) aim the
//! agents at any pod. So while an operation runs they live in the ConfigMap
//! `ferry-volumes-<uid of the operation>` beside it, owned by it (the cluster's garbage collector
//! removes it with the operation), and the bucket receives them once, when every volume has ended,
//! for the restores that read them later.

use ferry_protocol::volume::VolumeRecords;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::context::MANAGER;
use crate::error::{Error, Result};

/// The ConfigMap's one key: the records as gzipped JSON.
pub const RECORDS_KEY: &str = "records.json.gz";
/// The label that marks the ConfigMaps of volume state.
pub const STATE_LABEL: &str = "ferry.dev/volume-state";
/// The most a ConfigMap holds (the API server's limit on its data).
const MAX_BYTES: usize = 1024 * 1024;

/// The volume state of one Backup or Restore.
pub struct VolumeState {
    api: Api<ConfigMap>,
    name: String,
    owner: OwnerReference,
    /// `Backup shop-nightly`, for messages.
    what: String,
}

/// The name of the ConfigMap holding the volume state of the operation with `uid`.
pub fn config_map_name(uid: &str) -> String {
    format!("ferry-volumes-{uid}")
}

impl VolumeState {
    /// The volume state of `operation`, which must have been read from the API server (it has a
    /// uid).
    pub fn of<K: Resource<DynamicType = ()>>(client: kube::Client, operation: &K) -> VolumeState {
        let owner = owner_reference(operation);
        VolumeState {
            api: Api::namespaced(client, &operation.namespace().unwrap_or_default()),
            name: config_map_name(&owner.uid),
            what: format!("{} {}", owner.kind, owner.name),
            owner,
        }
    }

    /// Writes `records`, creating the ConfigMap the first time.
    pub async fn save(&self, records: &VolumeRecords) -> Result<()> {
        let config_map = config_map(&self.name, &self.owner, records)?;
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&config_map),
            )
            .await?;
        Ok(())
    }

    /// Reads the records. A ConfigMap that is gone, or that another object owns, is refused:
    /// nothing else can say which volumes the operation follows.
    pub async fn load(&self) -> Result<VolumeRecords> {
        let lost = |reason: String| Error::VolumeStateLost {
            operation: self.what.clone(),
            reason,
        };
        let Some(config_map) = self.api.get_opt(&self.name).await? else {
            return Err(lost(format!(
                "ConfigMap {} is gone: it was deleted, or a Ferry that kept this state in the bucket started the operation",
                self.name
            )));
        };
        let owned = config_map
            .owner_references()
            .iter()
            .any(|owner| owner.uid == self.owner.uid);
        if !owned {
            return Err(lost(format!(
                "ConfigMap {} does not belong to it (no owner reference with its uid)",
                self.name
            )));
        }
        let data = config_map
            .binary_data
            .as_ref()
            .and_then(|data| data.get(RECORDS_KEY))
            .ok_or_else(|| lost(format!("ConfigMap {} has no {RECORDS_KEY}", self.name)))?;
        crate::gunzip_json(&data.0)
            .map_err(|error| lost(format!("ConfigMap {}: {error}", self.name)))
    }
}

/// The reference that makes `operation` own its volume state.
fn owner_reference<K: Resource<DynamicType = ()>>(operation: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: operation.name_any(),
        uid: operation.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

/// The ConfigMap that holds `records` as the volume state of `operation` (public for tests that
/// set up an operation interrupted while it waited for its volumes).
pub fn config_map_of<K: Resource<DynamicType = ()>>(
    operation: &K,
    records: &VolumeRecords,
) -> Result<ConfigMap> {
    let owner = owner_reference(operation);
    config_map(&config_map_name(&owner.uid), &owner, records)
}

fn config_map(name: &str, owner: &OwnerReference, records: &VolumeRecords) -> Result<ConfigMap> {
    let data = crate::gzip_json(records)?;
    if data.len() > MAX_BYTES {
        return Err(Error::Validation(vec![format!(
            "the volume records of {} {} take {} bytes compressed, more than a ConfigMap holds ({MAX_BYTES}): split the operation by namespace",
            owner.kind,
            owner.name,
            data.len()
        )]));
    }
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([(STATE_LABEL.to_owned(), "true".to_owned())].into()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        binary_data: Some([(RECORDS_KEY.to_owned(), ByteString(data.to_vec()))].into()),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::volume::{VolumeMethod, VolumePhase, VolumeRecord};

    #[test]
    fn too_many_records_for_a_config_map_are_refused_with_the_limit() {
        let owner = OwnerReference {
            api_version: "ferry.dev/v1alpha1".into(),
            kind: "Backup".into(),
            name: "huge".into(),
            uid: "u".into(),
            ..OwnerReference::default()
        };
        // Names that do not compress: about 40 bytes each after gzip.
        let volumes = (0..40_000u64)
            .map(|i| VolumeRecord {
                persistent_volume: blake3::hash(&i.to_le_bytes()).to_hex().to_string(),
                claim: None,
                method: VolumeMethod::FileSystem,
                phase: VolumePhase::InProgress,
                message: None,
                snapshot: None,
                pod_volume: None,
                file_system: None,
                csi_snapshot: None,
            })
            .collect();
        let records = VolumeRecords::new(volumes);
        let Err(Error::Validation(problems)) = config_map("ferry-volumes-u", &owner, &records)
        else {
            panic!("a ConfigMap over the limit was made");
        };
        assert!(problems[0].contains("Backup huge"), "{problems:?}");
        assert!(problems[0].contains("1048576"), "{problems:?}");

        let few = VolumeRecords::new(records.volumes[..10].to_vec());
        let made = config_map("ferry-volumes-u", &owner, &few).unwrap();
        assert_eq!(made.metadata.owner_references.unwrap()[0].uid, "u");
        let data = &made.binary_data.unwrap()[RECORDS_KEY];
        assert_eq!(crate::gunzip_json::<VolumeRecords>(&data.0).unwrap(), few);
    }
}
