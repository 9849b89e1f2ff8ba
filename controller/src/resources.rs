//! Which resource types the cluster serves, and which of them (and which namespaces) a Backup or
//! Restore takes.

use ferry_protocol::layout::GroupResource;
use kube::Client;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};

use crate::error::Result;

/// A resource type the API server serves at its preferred version.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub api: ApiResource,
    pub capabilities: ApiCapabilities,
    /// The same resource at the other versions its group serves.
    pub other_versions: Vec<ApiResource>,
}

impl ResourceType {
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&self.api.plural, &self.api.group)
    }

    pub fn namespaced(&self) -> bool {
        self.capabilities.scope == Scope::Namespaced
    }

    /// Whether `name` (as a user writes it: plural, singular or kind, optionally `.group`) names
    /// this type.
    fn is_named(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let (base, group) = match name.split_once('.') {
            Some((base, group)) => (base, Some(group)),
            None => (name.as_str(), None),
        };
        let group_matches =
            group.is_none_or(|g| g == self.api.group || (g == "core" && self.api.group.is_empty()));
        group_matches && (base == self.api.plural || base == self.api.kind.to_ascii_lowercase())
    }
}

/// Resource types that are never backed up or restored: they describe the cluster's running
/// state, not an application, or they are Ferry's own bookkeeping.
pub fn is_never_backed_up(resource: &GroupResource) -> bool {
    matches!(
        (resource.resource.as_str(), resource.group.as_str()),
        ("nodes" | "events" | "componentstatuses", "")
            | ("events", "events.k8s.io")
            | ("leases", "coordination.k8s.io")
    ) || resource.group == ferry_protocol::crd::GROUP
        || resource.group == "metrics.k8s.io"
}

/// Every listable resource type at its preferred version, CRDs included.
pub async fn discover(client: &Client) -> Result<Vec<ResourceType>> {
    // Aggregated discovery answers in two requests; servers before 1.30 need one per group.
    let discovery = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(discovery) => discovery,
        Err(_) => Discovery::new(client.clone()).run().await?,
    };
    let mut types = Vec::new();
    for group in discovery.groups() {
        let preferred = group.preferred_version_or_latest();
        for (api, capabilities) in group.recommended_resources() {
            let listable = capabilities.supports_operation(verbs::LIST)
                && capabilities.supports_operation(verbs::GET)
                && capabilities.supports_operation(verbs::CREATE);
            if listable && !api.plural.contains('/') {
                let other_versions = group
                    .versions()
                    .filter(|version| *version != preferred)
                    .flat_map(|version| group.versioned_resources(version))
                    .filter(|(other, _)| other.plural == api.plural)
                    .map(|(other, _)| other)
                    .collect();
                types.push(ResourceType {
                    api,
                    capabilities,
                    other_versions,
                });
            }
        }
    }
    types.sort_by_key(ResourceType::group_resource);
    Ok(types)
}

/// Include and exclude lists of names, where an empty include list or `*` means everything and a
/// `*` inside a name matches any run of characters.
#[derive(Debug, Clone, Default)]
pub struct IncludesExcludes {
    includes: Vec<String>,
    excludes: Vec<String>,
}

impl IncludesExcludes {
    pub fn new(includes: &[String], excludes: &[String]) -> IncludesExcludes {
        IncludesExcludes {
            includes: includes.to_vec(),
            excludes: excludes.to_vec(),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let included = self.includes.is_empty()
            || self
                .includes
                .iter()
                .any(|pattern| glob_matches(pattern, name));
        included
            && !self
                .excludes
                .iter()
                .any(|pattern| glob_matches(pattern, name))
    }

    /// Whether everything is included (no names listed, or `*`).
    pub fn includes_everything(&self) -> bool {
        self.includes.is_empty() || self.includes.iter().any(|p| p == "*")
    }

    /// The included names when they are a plain list (no patterns), so a caller can list just
    /// those instead of everything.
    pub fn exact_includes(&self) -> Option<&[String]> {
        (!self.includes.is_empty() && self.includes.iter().all(|p| !p.contains('*')))
            .then_some(&self.includes[..])
    }
}

fn glob_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Which resource types a spec's included and excluded resource names select.
#[derive(Debug, Clone)]
pub struct ResourceFilter {
    included: Option<Vec<GroupResource>>,
    excluded: Vec<GroupResource>,
}

impl ResourceFilter {
    /// Resolves the names against the served types; every name that matches nothing is an error
    /// (a typo must not silently back up nothing).
    pub fn resolve(
        included: &[String],
        excluded: &[String],
        types: &[ResourceType],
    ) -> Result<ResourceFilter, Vec<String>> {
        Self::resolve_fields(
            (included, "includedResources"),
            (excluded, "excludedResources"),
            types,
        )
    }

    /// As [`ResourceFilter::resolve`], naming the spec's fields in the problems.
    pub fn resolve_fields(
        (included, included_field): (&[String], &str),
        (excluded, excluded_field): (&[String], &str),
        types: &[ResourceType],
    ) -> Result<ResourceFilter, Vec<String>> {
        let mut problems = Vec::new();
        let mut resolve = |names: &[String], field: &str| -> Vec<GroupResource> {
            let mut resolved = Vec::new();
            for name in names.iter().filter(|n| n.as_str() != "*") {
                let matched: Vec<_> = types
                    .iter()
                    .filter(|t| t.is_named(name))
                    .map(ResourceType::group_resource)
                    .collect();
                if matched.is_empty() {
                    problems.push(format!(
                        "{field}: unknown resource {name:?}; `kubectl api-resources` lists the names the cluster serves (at this scope)"
                    ));
                }
                resolved.extend(matched);
            }
            resolved
        };
        let everything = included.is_empty() || included.iter().any(|n| n == "*");
        let included = resolve(included, included_field);
        let excluded = resolve(excluded, excluded_field);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ResourceFilter {
            included: (!everything).then_some(included),
            excluded,
        })
    }

    pub fn matches(&self, resource: &GroupResource) -> bool {
        self.included
            .as_ref()
            .is_none_or(|included| included.contains(resource))
            && !self.excluded.contains(resource)
    }

    /// Whether the user named this type explicitly among the included ones.
    pub fn explicitly_includes(&self, resource: &GroupResource) -> bool {
        self.included
            .as_ref()
            .is_some_and(|included| included.contains(resource))
    }
}

/// An object's labels, as a label selector reads them (none when it has none).
pub fn labels_of(object: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(|labels| serde_json::from_value(labels.clone()).ok())
        .unwrap_or_default()
}

/// A label selector as the API server would read it, or a problem that names the bad part.
pub fn parse_selector(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<kube::core::Selector, String> {
    const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];
    if let Some(bad) = selector
        .match_expressions
        .iter()
        .flatten()
        .find(|e| !OPERATORS.contains(&e.operator.as_str()))
    {
        return Err(format!(
            "labelSelector: operator {:?} (key {:?}) is not one of {}",
            bad.operator,
            bad.key,
            OPERATORS.join(", ")
        ));
    }
    kube::core::Selector::try_from(selector.clone())
        .map_err(|error| format!("invalid labelSelector: {error}"))
}

/// Whether a user-written name (`deployments.apps`, `secrets`) names `resource`.
pub fn names_resource(name: &str, resource: &GroupResource) -> bool {
    let name = name.to_ascii_lowercase();
    name == resource.to_string() || (resource.group.is_empty() && name == resource.resource)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::discovery::ApiCapabilities;

    #[test]
    fn a_bad_selector_operator_is_named() {
        let selector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "tier", "operator": "Sideways", "values": ["db"]}]
        }))
        .unwrap();
        let problem = parse_selector(&selector).unwrap_err();
        assert!(
            problem.contains("\"Sideways\"") && problem.contains("\"tier\""),
            "{problem}"
        );
        let good = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "shop"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        assert!(parse_selector(&good).is_ok());
    }

    fn served(group: &str, version: &str, kind: &str, plural: &str, scope: Scope) -> ResourceType {
        let api = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        };
        ResourceType {
            api,
            capabilities: ApiCapabilities {
                scope,
                subresources: vec![],
                operations: vec![],
            },
            other_versions: vec![],
        }
    }

    fn cluster() -> Vec<ResourceType> {
        vec![
            served("", "v1", "Secret", "secrets", Scope::Namespaced),
            served(
                "",
                "v1",
                "PersistentVolume",
                "persistentvolumes",
                Scope::Cluster,
            ),
            served("apps", "v1", "Deployment", "deployments", Scope::Namespaced),
            served("example.com", "v1", "Widget", "widgets", Scope::Namespaced),
        ]
    }

    #[test]
    fn resource_names_resolve_by_plural_kind_and_group() {
        let filter = ResourceFilter::resolve(
            &["deployments.apps".into(), "Secret".into(), "widgets".into()],
            &[],
            &cluster(),
        )
        .unwrap();
        assert!(filter.matches(&GroupResource::new("deployments", "apps")));
        assert!(filter.matches(&GroupResource::new("secrets", "")));
        assert!(filter.matches(&GroupResource::new("widgets", "example.com")));
        assert!(!filter.matches(&GroupResource::new("persistentvolumes", "")));

        let all_but_secrets =
            ResourceFilter::resolve(&[], &["secrets".into()], &cluster()).unwrap();
        assert!(all_but_secrets.matches(&GroupResource::new("deployments", "apps")));
        assert!(!all_but_secrets.matches(&GroupResource::new("secrets", "")));
    }

    #[test]
    fn every_unknown_resource_name_is_reported() {
        let problems =
            ResourceFilter::resolve(&["deploymnets".into()], &["secretz".into()], &cluster())
                .unwrap_err();
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0].contains("\"deploymnets\"") && problems[0].contains("includedResources")
        );
        assert!(problems[1].contains("\"secretz\"") && problems[1].contains("excludedResources"));
    }

    #[test]
    fn namespace_patterns() {
        let filter = IncludesExcludes::new(&["app-*".into(), "db".into()], &["app-tmp*".into()]);
        assert!(filter.matches("app-web"));
        assert!(filter.matches("db"));
        assert!(!filter.matches("app-tmp1"));
        assert!(!filter.matches("dbx"));
        assert!(filter.exact_includes().is_none());
        assert!(IncludesExcludes::new(&["*".into()], &[]).includes_everything());
        assert!(IncludesExcludes::new(&[], &["kube-system".into()]).matches("default"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxc"));
        assert!(!glob_matches("ab*ba", "aba"));
    }

    #[test]
    fn cluster_state_and_ferry_resources_are_never_backed_up() {
        assert!(is_never_backed_up(&GroupResource::new("nodes", "")));
        assert!(is_never_backed_up(&GroupResource::new(
            "events",
            "events.k8s.io"
        )));
        assert!(is_never_backed_up(&GroupResource::new(
            "backups",
            "ferry.dev"
        )));
        assert!(!is_never_backed_up(&GroupResource::new("secrets", "")));
    }
}
