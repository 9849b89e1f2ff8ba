//! Objects labelled `ferry.dev/exclude-from-backup=true` (or Velero's
//! `velero.io/exclude-from-backup=true`) stay out of every backup, whatever its filters say.

use ferry_protocol::layout::GroupResource;
use kube::ResourceExt;
use kube::api::DynamicObject;

use super::{FerrySecrets, ItemAction};

/// The labels that keep an object out; the value must be `true`.
pub const EXCLUDE_LABELS: &[&str] = &[
    "ferry.dev/exclude-from-backup",
    "velero.io/exclude-from-backup",
];

pub struct ExcludedByLabel;

impl ItemAction for ExcludedByLabel {
    fn applies_to(&self, _: &GroupResource) -> bool {
        true
    }

    fn left_out(&self, object: &DynamicObject, _: &FerrySecrets) -> Option<String> {
        let labels = object.labels();
        EXCLUDE_LABELS
            .iter()
            .find(|label| labels.get(**label).map(String::as_str) == Some("true"))
            .map(|label| format!("labelled {label}=true"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::object;
    use super::*;
    use serde_json::json;

    #[test]
    fn the_label_keeps_an_object_out_only_when_true() {
        let labelled = |labels: serde_json::Value| {
            let mut object = object(Some("shop"), "cm", json!({}));
            object.metadata.labels = serde_json::from_value(labels).unwrap();
            ExcludedByLabel.left_out(&object, &FerrySecrets::default())
        };
        assert_eq!(
            labelled(json!({"ferry.dev/exclude-from-backup": "true"})).as_deref(),
            Some("labelled ferry.dev/exclude-from-backup=true")
        );
        assert!(labelled(json!({"velero.io/exclude-from-backup": "true"})).is_some());
        assert!(labelled(json!({"ferry.dev/exclude-from-backup": "false"})).is_none());
        assert!(labelled(json!({"app": "shop"})).is_none());
    }
}
