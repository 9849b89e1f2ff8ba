//! Pods: every pod written is kept for the file-level backups of its volumes that follow the
//! listing.

use ferry_protocol::layout::GroupResource;
use kube::api::DynamicObject;

use super::{ItemAction, VolumeSources};

pub struct Pod;

impl ItemAction for Pod {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("pods", "")
    }

    fn written(
        &self,
        object: &DynamicObject,
        sources: &mut VolumeSources,
    ) -> serde_json::Result<()> {
        sources.pods.push(serde_json::to_value(object)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::object;
    use super::*;

    #[test]
    fn written_pods_are_kept_for_their_volumes() {
        let mut sources = VolumeSources::default();
        let pod = object(
            Some("shop"),
            "db-0",
            serde_json::json!({"spec": {"nodeName": "n1"}}),
        );
        Pod.written(&pod, &mut sources).unwrap();
        assert_eq!(sources.pods.len(), 1);
        assert_eq!(
            sources.pods[0].pointer("/spec/nodeName"),
            Some(&serde_json::json!("n1"))
        );
        assert!(sources.persistent_volumes.is_empty());
    }
}
