//! The image of the pods the controller makes of its own: the `ferry-restore-wait` init container
//! of restored pods and the repository maintenance Jobs run the controller's own image, pulled as
//! the controller's is. `FERRY_IMAGE` names another; else `ferry controller` finds its own at start
//! ([`discover`]: the image of its pod, `POD_NAME` in its namespace), so that an installation
//! whose image was changed with kustomize's `images:` (which rewrites `image:` fields, not
//! environment variables) runs the same image everywhere.

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

/// The published image, when neither FERRY_IMAGE nor the controller's pod says otherwise (a
/// controller run outside a pod).
pub const DEFAULT_IMAGE: &str = "ghcr.io/ferry-dev/ferry:latest";

/// The controller container's image and pull policy, as its pod says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnImage {
    pub image: String,
    pub pull_policy: Option<String>,
}

static OWN: OnceLock<OwnImage> = OnceLock::new();

/// The image the controller's own pods run: `FERRY_IMAGE`, else the controller pod's image found
/// by [`discover`], else [`DEFAULT_IMAGE`].
pub fn ferry_image() -> String {
    if let Ok(image) = std::env::var("FERRY_IMAGE")
        && !image.is_empty()
    {
        return image;
    }
    OWN.get()
        .map(|own| own.image.clone())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned())
}

/// The pull policy of [`ferry_image`]: the controller container's, when the image is its own.
pub fn pull_policy() -> Option<String> {
    let own = OWN.get()?;
    (own.image == ferry_image())
        .then(|| own.pull_policy.clone())
        .flatten()
}

/// Reads the controller's own pod (`pod` in `namespace`) and remembers the image and pull policy
/// of its container `controller` (else its first container) for [`ferry_image`].
pub async fn discover(client: &Client, namespace: &str, pod: &str) -> Result<OwnImage, String> {
    let found = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await
        .map_err(|error| format!("reading the controller's own pod {namespace}/{pod}: {error}"))?;
    let own = own_image(&found)
        .ok_or_else(|| format!("the controller's pod {namespace}/{pod} names no image"))?;
    let _ = OWN.set(own.clone());
    Ok(own)
}

fn own_image(pod: &Pod) -> Option<OwnImage> {
    let containers = &pod.spec.as_ref()?.containers;
    let container = containers
        .iter()
        .find(|c| c.name == "controller")
        .or_else(|| containers.first())?;
    Some(OwnImage {
        image: container.image.clone().filter(|i| !i.is_empty())?,
        pull_policy: container.image_pull_policy.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_container_names_the_image() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ferry-controller-1"},
            "spec": {"containers": [
                {"name": "sidecar", "image": "proxy:1"},
                {"name": "controller", "image": "registry.local/ferry:2", "imagePullPolicy": "IfNotPresent"},
            ]},
        }))
        .unwrap();
        assert_eq!(
            own_image(&pod),
            Some(OwnImage {
                image: "registry.local/ferry:2".to_owned(),
                pull_policy: Some("IfNotPresent".to_owned()),
            })
        );
        let other: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "main", "image": "ferry:3"}]},
        }))
        .unwrap();
        assert_eq!(own_image(&other).unwrap().image, "ferry:3");
    }
}
