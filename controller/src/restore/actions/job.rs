//! Jobs: one that had finished is skipped (restoring it would run it again); one that was running
//! comes back without the selector and labels its controller generated from the old Job's uid,
//! which the API server would refuse for the new one.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict, remove};

/// The labels the Job controller puts on a Job's pod template and selector.
const CONTROLLER_UID_LABELS: &[&str] = &["controller-uid", "batch.kubernetes.io/controller-uid"];

pub struct Job;

impl ItemAction for Job {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("jobs", "batch")
    }

    fn skip(&self, object: &Value) -> Option<&'static str> {
        object
            .pointer("/status/completionTime")
            .is_some()
            .then_some("the job had finished")
    }

    fn act(&self, object: &mut Value, _: &mut Planning) -> Verdict {
        let manual = object
            .pointer("/spec/manualSelector")
            .and_then(Value::as_bool)
            == Some(true);
        if !manual {
            remove(object, "/spec", "selector");
        }
        for label in CONTROLLER_UID_LABELS {
            remove(object, "/spec/template/metadata/labels", label);
            remove(object, "/spec/selector/matchLabels", label);
        }
        Verdict::Restore
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::restore::actions::testing;

    #[test]
    fn a_running_job_loses_its_generated_selector_and_labels() {
        let mut job = json!({
            "spec": {
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
                "template": {"metadata": {"labels": {
                    "batch.kubernetes.io/controller-uid": "u1", "controller-uid": "u1",
                    "job-name": "migrate", "app": "shop"
                }}}
            },
            "status": {"active": 1}
        });
        assert_eq!(Job.skip(&job), None);
        let verdict = testing::with(false, &BTreeMap::new(), &|_, _| false, |scope| {
            testing::act(&Job, GroupResource::new("jobs", "batch"), &mut job, scope)
        });
        assert_eq!(verdict, Verdict::Restore);
        assert_eq!(job["spec"].get("selector"), None);
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"],
            json!({"job-name": "migrate", "app": "shop"})
        );
    }
}
