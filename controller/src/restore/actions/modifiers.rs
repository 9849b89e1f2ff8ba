//! The Restore's resource modifier rules ([`crate::modifiers`]), after Ferry's own changes so
//! that the user's rules have the last word; a rule that fails fails the object, naming the rule.

use ferry_protocol::layout::GroupResource;
use serde_json::Value;

use super::{ItemAction, Planning, Verdict};

pub struct ResourceModifiers;

impl ItemAction for ResourceModifiers {
    fn applies_to(&self, _: &GroupResource) -> bool {
        true
    }

    fn act(&self, object: &mut Value, planning: &mut Planning) -> Verdict {
        let item = planning.item;
        match planning
            .scope
            .modifiers
            .apply(&item.resource, item.namespace.as_deref(), object)
        {
            Ok(()) => Verdict::Restore,
            Err(failed) => Verdict::Fail(failed.to_string()),
        }
    }
}
