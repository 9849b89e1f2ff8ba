//! Pods: finished and mirror pods are skipped; a pod loses its node (the scheduler places it
//! anew) and the token volume the API server projected into it. A pod whose volumes the node
//! agents backed up gets the `ferry-restore-wait` init container, which holds it until the agent
//! of its node has filled them, and a task for each volume; with `inPlaceVolumes`, a pod that runs
//! now has its volumes restored where they are instead.

use ferry_protocol::layout::{ArchiveItem, GroupResource};
use ferry_protocol::volume::{VolumeMethod, VolumePhase, VolumeRecord};
use serde_json::Value;

use super::{Effect, ItemAction, Planning, Verdict, remove, text};

/// Where the init container mounts the volumes it waits for.
const RESTORE_WAIT_DIR: &str = "/ferry-restore";

pub struct Pod;

impl ItemAction for Pod {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("pods", "")
    }

    fn skip(&self, object: &Value) -> Option<&'static str> {
        if matches!(text(object, "/status/phase"), Some("Succeeded" | "Failed")) {
            return Some("the pod had finished");
        }
        object
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some()
            .then_some("mirror pods are created by the kubelet")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        remove(object, "/spec", "nodeName");
        strip_service_account_token_volumes(object);
        let (item, scope) = (planning.item, planning.scope);
        let backed_up = agent_volumes_of(item, scope.backup_volumes);
        let key = (
            item.namespace.clone().unwrap_or_default(),
            item.name.clone(),
        );
        if scope
            .running_pods
            .is_some_and(|running| running.contains(&key))
        {
            planning
                .effects
                .extend(backed_up.map(|record| Effect::FillPodVolume {
                    record: Box::new(record.clone()),
                    in_place: true,
                }));
        } else if scope.restore_volumes {
            wait_for_volumes(object, backed_up, scope.marker, &mut planning.effects);
            if crate::restore::fill::uses_filled_claim(object, &key.0, scope.filled_claims) {
                crate::restore::fill::gate(object);
            }
        }
        Verdict::Restore
    }
}

/// The agent-backed volumes of an archived pod that the backup holds.
fn agent_volumes_of<'a>(
    item: &'a ArchiveItem,
    volumes: &'a [VolumeRecord],
) -> impl Iterator<Item = &'a VolumeRecord> + Clone {
    let namespace = item.namespace.as_deref().unwrap_or_default();
    volumes
        .iter()
        .filter(|r| r.method == VolumeMethod::FileSystem && r.phase == VolumePhase::Completed)
        .filter(move |r| {
            r.pod_volume
                .as_ref()
                .is_some_and(|p| p.namespace == namespace && p.pod == item.name)
        })
        .filter(|r| r.file_system.is_some())
}

/// Gives the pod an init container that holds it until its volumes are filled, and asks for a
/// task for each volume.
fn wait_for_volumes<'a>(
    pod: &mut Value,
    backed_up: impl Iterator<Item = &'a VolumeRecord>,
    marker: &str,
    effects: &mut Vec<Effect>,
) {
    let mut args = vec![
        "restore-wait".to_owned(),
        "--marker".to_owned(),
        marker.to_owned(),
    ];
    let mut mounts = Vec::new();
    for record in backed_up {
        let Some(pod_volume) = &record.pod_volume else {
            continue;
        };
        let mount = format!("{RESTORE_WAIT_DIR}/{}", pod_volume.volume);
        mounts.push(serde_json::json!({"name": pod_volume.volume, "mountPath": mount}));
        args.push(mount);
        effects.push(Effect::FillPodVolume {
            record: Box::new(record.clone()),
            in_place: false,
        });
    }
    if mounts.is_empty() {
        return;
    }
    // Ferry's own image, pulled as the controller's is (crate::image).
    let mut wait = serde_json::json!({
        "name": "ferry-restore-wait",
        "image": crate::image::ferry_image(),
        "args": args,
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
    });
    if let Some(policy) = crate::image::pull_policy() {
        wait["imagePullPolicy"] = Value::String(policy);
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        let init = spec
            .entry("initContainers")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(init) = init {
            init.insert(0, wait);
        }
    }
}

/// The service-account token volume the API server projected into the pod; it is added again
/// when the pod is created.
fn strip_service_account_token_volumes(pod: &mut Value) {
    let is_token = |name: Option<&str>| name.is_some_and(|n| n.starts_with("kube-api-access-"));
    if let Some(Value::Array(volumes)) = pod.pointer_mut("/spec/volumes") {
        volumes.retain(|v| !is_token(v.get("name").and_then(Value::as_str)));
    }
    for containers in ["/spec/containers", "/spec/initContainers"] {
        if let Some(Value::Array(containers)) = pod.pointer_mut(containers) {
            for container in containers {
                if let Some(Value::Array(mounts)) = container.get_mut("volumeMounts") {
                    mounts.retain(|m| !is_token(m.get("name").and_then(Value::as_str)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use ferry_protocol::volume::{FileSystemBackup, PodVolumeRef};
    use serde_json::json;

    use super::*;
    use crate::restore::actions::{Scope, plan, testing};

    fn record(pod: &str, volume: &str) -> VolumeRecord {
        VolumeRecord {
            persistent_volume: format!("pv-{volume}"),
            claim: None,
            method: VolumeMethod::FileSystem,
            phase: VolumePhase::Completed,
            message: None,
            snapshot: None,
            csi_snapshot: None,
            pod_volume: Some(PodVolumeRef {
                namespace: "db".to_owned(),
                pod: pod.to_owned(),
                volume: volume.to_owned(),
                node: "n1".to_owned(),
            }),
            file_system: Some(FileSystemBackup {
                repository: "repositories/db".to_owned(),
                snapshot_id: Some("s1".to_owned()),
                ..Default::default()
            }),
        }
    }

    fn planned(
        running: Option<&BTreeSet<(String, String)>>,
        restore_volumes: bool,
    ) -> (Value, Vec<Effect>) {
        let item = ArchiveItem {
            resource: GroupResource::new("pods", ""),
            namespace: Some("db".to_owned()),
            name: "postgres-0".to_owned(),
        };
        let mut pod = json!({
            "metadata": {"name": "postgres-0", "namespace": "db"},
            "spec": {"volumes": [{"name": "data"}], "containers": [{"name": "postgres"}]}
        });
        let volumes = [
            record("postgres-0", "data"),
            record("other-0", "data"),
            VolumeRecord {
                phase: VolumePhase::Failed,
                ..record("postgres-0", "logs")
            },
        ];
        let (verdict, effects) = testing::with(false, &BTreeMap::new(), &|_, _| false, |scope| {
            let scope = Scope {
                backup_volumes: &volumes,
                restore_volumes,
                running_pods: running,
                ..*scope
            };
            plan(&item, &mut pod, &scope)
        });
        assert_eq!(verdict, Verdict::Restore);
        (pod, effects)
    }

    #[test]
    fn a_pod_with_agent_backed_volumes_waits_for_them() {
        let (pod, effects) = planned(None, true);
        let init = &pod["spec"]["initContainers"][0];
        assert_eq!(init["name"], "ferry-restore-wait");
        assert_eq!(
            init["args"],
            json!([
                "restore-wait",
                "--marker",
                "uid.done",
                "/ferry-restore/data"
            ])
        );
        assert_eq!(
            effects,
            vec![Effect::FillPodVolume {
                record: Box::new(record("postgres-0", "data")),
                in_place: false
            }]
        );
    }

    #[test]
    fn a_running_pod_is_restored_in_place_and_unchanged() {
        let running = BTreeSet::from([("db".to_owned(), "postgres-0".to_owned())]);
        let (pod, effects) = planned(Some(&running), true);
        assert_eq!(pod["spec"].get("initContainers"), None);
        assert_eq!(
            effects,
            vec![Effect::FillPodVolume {
                record: Box::new(record("postgres-0", "data")),
                in_place: true
            }]
        );
    }

    #[test]
    fn without_restored_volumes_a_pod_neither_waits_nor_asks() {
        let (pod, effects) = planned(None, false);
        assert_eq!(pod["spec"].get("initContainers"), None);
        assert!(effects.is_empty());
    }
}
