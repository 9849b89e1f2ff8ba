//! The kubelet's part, played by tests: the environment has a control plane but no kubelet.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tempfile::TempDir;

/// A stand-in kubelet for one node: a temporary kubelet root with the directory layout a real
/// kubelet keeps (`<root>/pods/<pod uid>/volumes/<plugin>/<volume>`), a Node object, and the
/// bindings and status updates a scheduler and kubelet would make.
#[derive(Debug)]
pub struct FakeKubelet {
    node_name: String,
    root: TempDir,
    /// The volume mounts it made, undone when it is dropped.
    mounts: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        for mount in self
            .mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .output();
        }
    }
}

impl FakeKubelet {
    /// Registers a Node named `node_name` (if it does not exist yet) and creates an empty kubelet root.
    pub async fn start(client: &Client, node_name: &str) -> FakeKubelet {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(node_name.to_owned()),
                labels: Some([("kubernetes.io/hostname".to_owned(), node_name.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => panic!("registering node {node_name}: {error}"),
        }
        let root = tempfile::Builder::new()
            .prefix("ferry-kubelet-")
            .tempdir()
            .expect("a kubelet root");
        FakeKubelet {
            node_name: node_name.to_owned(),
            root,
            mounts: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The kubelet root, what the agent's `--kubelet-root` points at.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates and returns the directory where the kubelet would mount volume `volume` of plugin
    /// `plugin` (e.g. `kubernetes.io~empty-dir`) for the pod with UID `pod_uid`.
    pub fn volume_dir(&self, pod_uid: &str, plugin: &str, volume: &str) -> PathBuf {
        let dir = self
            .root()
            .join("pods")
            .join(pod_uid)
            .join("volumes")
            .join(plugin)
            .join(volume);
        std::fs::create_dir_all(&dir).expect("creating a volume directory");
        dir
    }

    /// Creates, mounts and returns the mount directory of a CSI volume: CSI volumes are mounted
    /// one level deeper, under `.../kubernetes.io~csi/<pv name>/mount`.
    pub fn csi_volume_dir(&self, pod_uid: &str, pv_name: &str) -> PathBuf {
        let dir = self.csi_volume_dir_unmounted(pod_uid, pv_name);
        self.mount(&dir);
        dir
    }

    /// The mount directory of a CSI volume as the kubelet makes it before it mounts the volume
    /// there ([`FakeKubelet::mount`]).
    pub fn csi_volume_dir_unmounted(&self, pod_uid: &str, pv_name: &str) -> PathBuf {
        let dir = self
            .volume_dir(pod_uid, "kubernetes.io~csi", pv_name)
            .join("mount");
        std::fs::create_dir_all(&dir).expect("creating a CSI mount directory");
        dir
    }

    /// Mounts a volume on `dir`, as the kubelet does: here a bind mount of a directory of its own.
    pub fn mount(&self, dir: &Path) {
        let volume = tempfile::Builder::new()
            .prefix("volume-")
            .tempdir_in(self.root())
            .expect("a volume's directory")
            .keep();
        let output = std::process::Command::new("mount")
            .arg("--bind")
            .arg(&volume)
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "mount --bind {} {}: {} (the tests run as root)",
            volume.display(),
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        self.mounts.lock().unwrap().push(dir.to_owned());
    }

    /// Binds a pod to this node, as the scheduler would, and marks it Running, as the kubelet
    /// would once its containers started. Returns the pod as it is then.
    pub async fn run_pod(&self, client: &Client, namespace: &str, pod_name: &str) -> Pod {
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod_name.to_owned()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".to_owned()),
                name: Some(self.node_name.clone()),
                ..Default::default()
            },
        };
        pods.create_subresource::<Binding, serde_json::Value>(
            "binding",
            pod_name,
            &PostParams::default(),
            &binding,
        )
        .await
        .unwrap_or_else(|error| {
            panic!(
                "binding pod {namespace}/{pod_name} to {}: {error}",
                self.node_name
            )
        });
        let status = json!({
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        });
        pods.patch_status(pod_name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap_or_else(|error| panic!("marking pod {namespace}/{pod_name} running: {error}"))
    }
}

/// Runs the first container of `job`'s pod as a kubelet would, with the `ferry` binary standing
/// for the image and the test cluster's kubeconfig for the service account; returns its output.
pub async fn run_job(job: &k8s_openapi::api::batch::v1::Job) -> std::process::Output {
    let container = job
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .and_then(|pod| pod.containers.first())
        .cloned()
        .expect("a Job with a container");
    let mut command = std::process::Command::new(crate::ferry_binary());
    command
        .args(container.args.unwrap_or_default())
        .env("KUBECONFIG", crate::TestEnv::get().kubeconfig_path());
    for variable in container.env.unwrap_or_default() {
        command.env(variable.name, variable.value.unwrap_or_default());
    }
    tokio::task::spawn_blocking(move || command.output().expect("running the Job's command"))
        .await
        .expect("the Job's command")
}
