//! Jobs that had finished: restoring one would run it again.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::ItemAction;

pub struct FinishedJob;

impl ItemAction for FinishedJob {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("jobs", "batch")
    }

    fn skip(&self, object: &Value) -> Option<&'static str> {
        object
            .pointer("/status/completionTime")
            .is_some()
            .then_some("the job had finished")
    }
}
