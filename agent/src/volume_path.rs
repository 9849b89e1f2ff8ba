//! Where a pod volume lives on this node. A request names a volume as (namespace, pod, volume);
//! the agent looks the pod up itself and finds the directory the kubelet mounted the volume at,
//! `<pods dir>/<pod uid>/volumes/<plugin>/<name>`. Nothing from the wire becomes a path: names are
//! checked, and the directory is opened from the pods directory's descriptor with no symlink on
//! the way; the backup or restore then works from that descriptor alone.

use std::path::{Path, PathBuf};

use rustix::io::Errno;

use ferry_protocol::agent::v1::PodVolume;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{Api, Client};
use tonic::Status;

use ferry_mover::root_dir::RootDir;

/// A resolved pod volume: its directory, opened, or for a block volume its device, borrowed from
/// the pod ([`crate::device_lending`]).
#[derive(Debug)]
pub enum VolumeData {
    Dir(RootDir),
    Device(std::fs::File),
}

/// Finds the directory of `volume` of a pod that runs on `node_name`, under `pods_dir` (the
/// kubelet's `pods` directory), or the device of a block volume, open for writing too when
/// `writable`.
pub async fn resolve(
    client: &Client,
    pods_dir: &Path,
    node_name: &str,
    volume: &PodVolume,
    writable: bool,
) -> Result<VolumeData, Status> {
    for (what, name) in [
        ("namespace", &volume.namespace),
        ("pod", &volume.pod),
        ("volume", &volume.volume),
    ] {
        if !is_object_name(name) {
            return Err(Status::invalid_argument(format!(
                "{what} {name:?} is not a valid Kubernetes name"
            )));
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &volume.namespace);
    let pod = pods
        .get_opt(&volume.pod)
        .await
        .map_err(kube_status)?
        .ok_or_else(|| {
            Status::not_found(format!("pod {}/{} not found", volume.namespace, volume.pod))
        })?;
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.node_name.as_deref() != Some(node_name) {
        return Err(Status::failed_precondition(format!(
            "pod {}/{} runs on node {}, not on this agent's node {node_name}",
            volume.namespace,
            volume.pod,
            spec.node_name.as_deref().unwrap_or("(none yet)")
        )));
    }
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let source = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == volume.volume)
        .ok_or_else(|| {
            Status::not_found(format!(
                "pod {}/{} has no volume {}",
                volume.namespace, volume.pod, volume.volume
            ))
        })?;
    // The plugin's directory, its name, and whether the volume is mounted at `mount` below it.
    // Every kind but emptyDir is a mount the kubelet makes; see `Mounted`.
    let (plugin, dir_name, mount) = if let Some(claim) = &source.persistent_volume_claim {
        let pv = bound_volume(client, &volume.namespace, &claim.claim_name).await?;
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let pv_spec = pv.spec.unwrap_or_default();
        if pv_spec.volume_mode.as_deref() == Some("Block") {
            return borrow_device(pods_dir, &pod_uid, &volume.volume, writable)
                .map(VolumeData::Device);
        }
        if pv_spec.csi.is_some() {
            ("kubernetes.io~csi", pv_name, true)
        } else if pv_spec.local.is_some() {
            ("kubernetes.io~local-volume", pv_name, false)
        } else if pv_spec.nfs.is_some() {
            ("kubernetes.io~nfs", pv_name, false)
        } else if pv_spec.host_path.is_some() {
            return Err(Status::failed_precondition(format!(
                "volume {} is a hostPath PersistentVolume ({pv_name}): the kubelet does not mount it under its pods directory, so the agent cannot reach it",
                volume.volume
            )));
        } else {
            return Err(Status::failed_precondition(format!(
                "volume {} is a PersistentVolume ({pv_name}) of a kind the agent does not know where the kubelet mounts",
                volume.volume
            )));
        }
    } else if source.empty_dir.is_some() {
        ("kubernetes.io~empty-dir", volume.volume.clone(), false)
    } else if source.csi.is_some() {
        ("kubernetes.io~csi", volume.volume.clone(), true)
    } else if source.nfs.is_some() {
        ("kubernetes.io~nfs", volume.volume.clone(), false)
    } else {
        return Err(Status::invalid_argument(format!(
            "volume {} is not a data volume (configMap, secret, projected, downwardAPI and hostPath volumes are restored from their objects or are not the pod's own data)",
            volume.volume
        )));
    };
    let mut rel = PathBuf::from(&pod_uid)
        .join("volumes")
        .join(plugin)
        .join(&dir_name);
    if mount {
        rel.push("mount");
    }
    let root = open_volume(pods_dir, &rel)?;
    if plugin != "kubernetes.io~empty-dir" && is_mount_root(&root) == Some(false) {
        // The kubelet makes the directory, then mounts the volume on it: data written in between
        // would go under the mount, hidden from the pod.
        return Err(Status::failed_precondition(format!(
            "{}: the kubelet has not mounted the volume there yet",
            pods_dir.join(&rel).display()
        )));
    }
    Ok(VolumeData::Dir(root))
}

/// Borrows the device of block volume `volume` from the pod `pod_uid` that lends it in its
/// device exchange emptyDir.
fn borrow_device(
    pods_dir: &Path,
    pod_uid: &str,
    volume: &str,
    writable: bool,
) -> Result<std::fs::File, Status> {
    let rel = PathBuf::from(pod_uid)
        .join("volumes")
        .join("kubernetes.io~empty-dir")
        .join(ferry_protocol::agent::DEVICE_EXCHANGE_VOLUME);
    let exchange = open_volume(pods_dir, &rel).map_err(|status| {
        Status::failed_precondition(format!(
            "volume {volume} is a block volume, which the agent reads through the pod's {} volume: {}",
            ferry_protocol::agent::DEVICE_EXCHANGE_VOLUME,
            status.message()
        ))
    })?;
    let dir = exchange
        .dir(Path::new(""))
        .map_err(|error| Status::failed_precondition(format!("{}: {error}", rel.display())))?;
    use std::os::fd::AsFd;
    crate::device_lending::borrow(dir.as_fd(), volume, writable)
        .map_err(|error| Status::failed_precondition(error.to_string()))
}

/// Whether the opened directory is the root of a mount (a bind mount included); `None` when
/// the kernel cannot say (before Linux 5.8).
fn is_mount_root(dir: &RootDir) -> Option<bool> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags, statx};
    let stat = statx(dir, "", AtFlags::EMPTY_PATH, StatxFlags::empty()).ok()?;
    stat.stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
        .then(|| stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Opens the volume directory `rel` below the kubelet's pods directory: no component may be a
/// symlink (a volume directory swapped for one would aim the agent elsewhere), mount points may
/// be crossed (a CSI volume is mounted at its `mount` directory).
pub fn open_volume(pods_dir: &Path, rel: &Path) -> Result<RootDir, Status> {
    if rel.as_os_str().is_empty() || rel.is_absolute() {
        return Err(Status::invalid_argument("no volume directory named"));
    }
    let pods = RootDir::open(pods_dir).map_err(|error| {
        Status::failed_precondition(format!(
            "{error}; is the kubelet's pods directory mounted into the agent?"
        ))
    })?;
    let shown = pods_dir.join(rel);
    let fd = pods.dir_across_mounts(rel).map_err(|error| {
        match Errno::from_io_error(&error) {
            Some(Errno::LOOP | Errno::XDEV) => Status::permission_denied(format!(
                "{}: a symlink or a path leaving the pods directory; refused",
                shown.display()
            )),
            Some(Errno::NOTDIR) => Status::permission_denied(format!(
                "{}: not a directory; refused",
                shown.display()
            )),
            _ => Status::failed_precondition(format!(
                "{}: {error}; is the pod running on this node, and has the kubelet mounted the volume (yet)?",
                shown.display()
            )),
        }
    })?;
    RootDir::from_fd(fd, shown).map_err(|error| Status::failed_precondition(error.to_string()))
}

async fn bound_volume(
    client: &Client,
    namespace: &str,
    claim: &str,
) -> Result<PersistentVolume, Status> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc = claims
        .get_opt(claim)
        .await
        .map_err(kube_status)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "PersistentVolumeClaim {namespace}/{claim} not found"
            ))
        })?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "PersistentVolumeClaim {namespace}/{claim} is not bound to a volume yet"
            ))
        })?;
    Api::<PersistentVolume>::all(client.clone())
        .get_opt(&pv_name)
        .await
        .map_err(kube_status)?
        .ok_or_else(|| Status::not_found(format!("PersistentVolume {pv_name} not found")))
}

/// A DNS subdomain (RFC 1123): what namespaces, pods and volumes are named with. Refuses `/`,
/// `..` and everything else that could steer a path.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..")
}

fn kube_status(error: kube::Error) -> Status {
    Status::unavailable(format!("asking the API server: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_steer_a_path_are_refused() {
        for good in ["shop", "db-0", "data.v1"] {
            assert!(is_object_name(good), "{good}");
        }
        for bad in [
            "", "..", "a/b", "../etc", "a..b", "-a", "A", "a b", ".hidden",
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_volume_that_resolves_outside_the_pods_volumes_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let pods = root.path().join("pods");
        let inside = Path::new("uid/volumes/kubernetes.io~empty-dir/data");
        std::fs::create_dir_all(pods.join(inside)).unwrap();
        std::fs::write(pods.join(inside).join("file"), b"in").unwrap();
        let outside = root.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        let escape = Path::new("uid/volumes/kubernetes.io~empty-dir/escape");
        std::os::unix::fs::symlink(&outside, pods.join(escape)).unwrap();
        // A pod's volumes directory swapped for a symlink: every volume below refused too.
        std::os::unix::fs::symlink(pods.join("uid"), pods.join("other-uid")).unwrap();

        let opened = open_volume(&pods, inside).unwrap();
        assert!(
            rustix::fs::statat(&opened, "file", rustix::fs::AtFlags::empty()).is_ok(),
            "opened some other directory"
        );
        let refused = open_volume(&pods, escape).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let refused = open_volume(
            &pods,
            Path::new("other-uid/volumes/kubernetes.io~empty-dir/data"),
        )
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let missing = open_volume(
            &pods,
            Path::new("uid/volumes/kubernetes.io~csi/nothing/mount"),
        )
        .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::FailedPrecondition);
    }
}
