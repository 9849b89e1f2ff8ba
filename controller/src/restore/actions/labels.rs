//! Every object: the labels that name the backup and the restore it came from, so that what a
//! restore created can be found (and deleted) as one.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict};

pub struct RestoreLabels;

impl ItemAction for RestoreLabels {
    fn applies_to(&self, _: &GroupResource) -> bool {
        true
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        if planning.scope.labels.is_empty() {
            return Verdict::Restore;
        }
        let labels = object
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
            .map(|metadata| {
                metadata
                    .entry("labels")
                    .or_insert_with(|| Value::Object(Default::default()))
            });
        if let Some(Value::Object(labels)) = labels {
            for (key, value) in planning.scope.labels {
                labels.insert(key.clone(), Value::String(value.clone()));
            }
        }
        Verdict::Restore
    }
}
