//! Services: ClusterIPs are assigned by the cluster, and so are node ports the user did not ask
//! for (those not in the last applied configuration), unless the Restore preserves node ports.

use std::collections::BTreeSet;

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict};

pub struct Service;

impl ItemAction for Service {
    fn applies_to(&self, resource: &GroupResource) -> bool {
        resource.is("services", "")
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        let preserve = planning.scope.preserve_node_ports;
        let asked: BTreeSet<i64> = object
            .pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
            .and_then(Value::as_str)
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .and_then(|applied| applied.pointer("/spec/ports").cloned())
            .and_then(|ports| ports.as_array().cloned())
            .into_iter()
            .flatten()
            .filter_map(|port| port.get("nodePort").and_then(Value::as_i64))
            .collect();
        let Some(spec) = object.pointer_mut("/spec").and_then(Value::as_object_mut) else {
            return Verdict::Restore;
        };
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        if !headless {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                let node_port = port.get("nodePort").and_then(Value::as_i64);
                if !preserve && node_port.is_some_and(|p| !asked.contains(&p)) {
                    port.remove("nodePort");
                }
            }
        }
        Verdict::Restore
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::restore::actions::{Scope, testing};

    #[test]
    fn preserve_node_ports_keeps_every_node_port() {
        let ports = |preserve: bool| {
            let mut service = json!({"metadata": {"name": "web"},
                "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 31234}]}});
            let verdict = testing::with(false, &BTreeMap::new(), &|_, _| false, |scope| {
                let scope = Scope {
                    preserve_node_ports: preserve,
                    ..*scope
                };
                testing::act(
                    &Service,
                    GroupResource::new("services", ""),
                    &mut service,
                    &scope,
                )
            });
            assert_eq!(verdict, Verdict::Restore);
            service["spec"]["ports"].clone()
        };
        assert_eq!(ports(true), json!([{"port": 80, "nodePort": 31234}]));
        assert_eq!(ports(false), json!([{"port": 80}]));
    }
}
