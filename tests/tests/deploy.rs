//! The manifests in deploy/ install: `kubectl apply -k deploy/` takes every one of them, the API
//! server accepts every object in them, and the RBAC and the workloads say what deploy/README.md
//! says they do.
//!
//! The objects are applied with server-side apply in dry-run mode, so the test validates them
//! against the real schemas and admission of the test API server without installing Ferry. Two
//! kinds are applied for real, because the others cannot be dry-run without them: the CRDs (Ferry's
//! own, which tests/tests/crds.rs installs as well) and the ferry-system namespace. Both are left
//! in place: they are idempotent, and deleting the namespace would leave it terminating for the
//! next run.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ferry_tests::{CONVERGENCE_TIMEOUT, TestEnv};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{self, ApiResource, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::Value;

const FIELD_MANAGER: &str = "ferry-deploy-test";

/// The verbs that remove objects; the controller may use them on ferry.dev resources only, and on
/// the CSI snapshots it took (deploy/controller-deletes.yaml).
const DELETING_VERBS: [&str; 3] = ["delete", "deletecollection", "*"];

#[derive(Debug, Deserialize)]
struct Kustomization {
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
}

/// One document of one manifest file.
struct Manifest {
    file: String,
    document: usize,
    object: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// How a failure names this object: file, document and the object itself.
    fn describe(&self) -> String {
        format!(
            "deploy/{} document {}: {} {}",
            self.file,
            self.document,
            self.kind(),
            self.name()
        )
    }
}

fn deploy_dir() -> PathBuf {
    ferry_tests::workspace_root().join("deploy")
}

fn kustomization() -> Kustomization {
    let path = deploy_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|error| panic!("parsing {}: {error}", path.display()))
}

/// Every document of every file the kustomization lists, in the kustomization's order.
fn manifests(kustomization: &Kustomization) -> Vec<Manifest> {
    let mut manifests = Vec::new();
    for file in &kustomization.resources {
        let path = deploy_dir().join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("reading deploy/{file}: {error}"));
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|error| panic!("parsing deploy/{file}: {error}"));
        assert!(!documents.is_empty(), "deploy/{file} holds no object");
        for (index, object) in documents.into_iter().enumerate() {
            let manifest = Manifest {
                file: file.clone(),
                document: index + 1,
                object,
            };
            assert!(
                manifest.object["apiVersion"].is_string()
                    && !manifest.kind().is_empty()
                    && !manifest.name().is_empty(),
                "{} lacks apiVersion, kind or metadata.name",
                manifest.describe()
            );
            manifests.push(manifest);
        }
    }
    manifests
}

/// The one object of `kind` named `name`.
fn find<'a>(manifests: &'a [Manifest], kind: &str, name: &str) -> &'a Manifest {
    let found: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.kind() == kind && m.name() == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "deploy/ should hold exactly one {kind} {name}"
    );
    found[0]
}

#[test]
fn the_kustomization_lists_every_manifest_and_only_existing_ones() {
    let kustomization = kustomization();
    let listed: BTreeSet<String> = kustomization.resources.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        kustomization.resources.len(),
        "deploy/kustomization.yaml lists a file twice: {:?}",
        kustomization.resources
    );
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .expect("reading deploy/")
        .map(|entry| {
            entry
                .expect("reading deploy/")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .filter(|name| name != "kustomization.yaml")
        .collect();
    let unlisted: Vec<&String> = present.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "deploy/kustomization.yaml does not list {unlisted:?}, so `kubectl apply -k deploy/` would skip them"
    );
    let missing: Vec<&String> = listed.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "deploy/kustomization.yaml lists {missing:?}, which are not in deploy/"
    );
    assert_eq!(kustomization.namespace.as_deref(), Some("ferry-system"));
}

/// Whether `rules` (a Role's or ClusterRole's) allow `verb` on `resource` in `group`, by RBAC's
/// own matching: `*` matches any group, resource or verb.
fn grants(rules: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    let has = |rule: &Value, field: &str, wanted: &str| {
        rule[field]
            .as_array()
            .is_some_and(|values| values.iter().any(|v| v == "*" || v == wanted))
    };
    rules.iter().any(|rule| {
        has(rule, "apiGroups", group)
            && has(rule, "resources", resource)
            && has(rule, "verbs", verb)
    })
}

fn rules(manifest: &Manifest) -> Vec<Value> {
    manifest.object["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no rules", manifest.describe()))
        .clone()
}

#[test]
fn the_rbac_grants_delete_only_on_ferry_resources() {
    let manifests = manifests(&kustomization());

    // No rule of any role grants a deleting verb outside ferry.dev.
    let roles: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.kind() == "ClusterRole" || m.kind() == "Role")
        .collect();
    assert!(!roles.is_empty(), "deploy/ holds no Role or ClusterRole");
    for role in &roles {
        for rule in rules(role) {
            let verbs = rule["verbs"].as_array().cloned().unwrap_or_default();
            let deleting: Vec<&Value> = verbs
                .iter()
                .filter(|verb| DELETING_VERBS.iter().any(|d| *verb == d))
                .collect();
            if deleting.is_empty() {
                continue;
            }
            // Deleting outside ferry.dev, each behind the admission policy of
            // controller-deletes.yaml (checked against the API server below): the CSI snapshots
            // Ferry took, its data mover's and fill pods, and the data mover's claims in Ferry's
            // own namespace.
            let exceptions = [
                (
                    "ClusterRole",
                    serde_json::json!(["snapshot.storage.k8s.io"]),
                    serde_json::json!(["volumesnapshots", "volumesnapshotcontents"]),
                ),
                (
                    "ClusterRole",
                    serde_json::json!([""]),
                    serde_json::json!(["pods"]),
                ),
                (
                    "Role",
                    serde_json::json!([""]),
                    serde_json::json!(["persistentvolumeclaims"]),
                ),
            ];
            if let Some((_, _, resources)) = exceptions
                .iter()
                .find(|(kind, groups, _)| role.kind() == *kind && rule["apiGroups"] == *groups)
            {
                assert_eq!(
                    (&rule["resources"], &rule["verbs"]),
                    (resources, &serde_json::json!(["delete"])),
                    "{} grants more than deleting what Ferry made in rule {rule}",
                    role.describe()
                );
                find(
                    &manifests,
                    "ValidatingAdmissionPolicyBinding",
                    "ferry-controller-deletes",
                );
                continue;
            }
            assert_eq!(
                rule["apiGroups"],
                serde_json::json!(["ferry.dev"]),
                "{} grants {deleting:?} outside ferry.dev in rule {rule}",
                role.describe()
            );
        }
    }

    // And the controller's ClusterRole allows what backing up and restoring needs.
    let cluster_role = rules(find(&manifests, "ClusterRole", "ferry-controller"));
    let any_type = [
        ("", "secrets"),
        ("", "namespaces"),
        ("apps", "deployments"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("example.com", "widgets"),
    ];
    for (group, resource) in any_type {
        for verb in ["get", "list", "watch", "create", "update", "patch"] {
            assert!(
                grants(&cluster_role, group, resource, verb),
                "the ClusterRole does not grant {verb} on {resource}.{group}"
            );
        }
        assert!(
            !grants(&cluster_role, group, resource, "delete"),
            "the ClusterRole grants delete on {resource}.{group}"
        );
    }
    for resource in ["roles", "clusterroles"] {
        for verb in ["escalate", "bind"] {
            assert!(
                grants(&cluster_role, "rbac.authorization.k8s.io", resource, verb),
                "the ClusterRole does not grant {verb} on {resource}, so restoring RBAC fails"
            );
        }
    }
    for resource in [
        "backups",
        "restores",
        "schedules",
        "backupstoragelocations",
        "volumesnapshotlocations",
    ] {
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            assert!(
                grants(&cluster_role, "ferry.dev", resource, verb),
                "the ClusterRole does not grant {verb} on {resource}.ferry.dev"
            );
        }
        let status = format!("{resource}/status");
        for verb in ["get", "update", "patch"] {
            assert!(
                grants(&cluster_role, "ferry.dev", &status, verb),
                "the ClusterRole does not grant {verb} on {status}.ferry.dev"
            );
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            assert!(
                grants(&cluster_role, group, "events", verb),
                "the ClusterRole does not grant {verb} on events.{group}"
            );
        }
    }

    // Leader election in its own namespace, and the Secrets it issues there.
    let role = rules(find(&manifests, "Role", "ferry-controller"));
    for verb in ["get", "create", "update"] {
        assert!(
            grants(&role, "coordination.k8s.io", "leases", verb),
            "the Role does not grant {verb} on leases"
        );
    }
    for verb in ["get", "create", "patch"] {
        assert!(
            grants(&role, "", "secrets", verb),
            "the Role does not grant {verb} on secrets"
        );
    }

    // The agent reads pods, claims and volumes, and keeps its Lease; nothing more.
    let agent = rules(find(&manifests, "ClusterRole", "ferry-agent"));
    for resource in ["pods", "persistentvolumeclaims", "persistentvolumes"] {
        assert!(
            grants(&agent, "", resource, "get"),
            "the agent cannot get {resource}"
        );
        for verb in ["list", "create", "update", "patch"] {
            assert!(
                !grants(&agent, "", resource, verb),
                "the agent may {verb} {resource}"
            );
        }
    }
    assert!(
        !grants(&agent, "", "secrets", "get"),
        "the agent may read Secrets"
    );
    let agent_role = rules(find(&manifests, "Role", "ferry-agent"));
    for verb in ["get", "create", "patch"] {
        assert!(
            grants(&agent_role, "coordination.k8s.io", "leases", verb),
            "the agent's Role does not grant {verb} on leases"
        );
    }
}

#[test]
fn the_workloads_run_the_controller_and_the_agent() {
    let manifests = manifests(&kustomization());
    let container_args = |kind: &str, name: &str| {
        let workload = find(&manifests, kind, name);
        workload.object["spec"]["template"]["spec"]["containers"][0]["args"].clone()
    };
    assert_eq!(
        container_args("Deployment", "ferry-controller"),
        serde_json::json!(["controller"]),
        "the controller Deployment's container args"
    );
    assert_eq!(
        container_args("DaemonSet", "ferry-agent"),
        serde_json::json!(["agent"]),
        "the agent DaemonSet's container args"
    );
    // The agent advertises its address where `ferry agent` looks, and mounts no Secret: its key
    // is made in its memory, its certificate comes through its Lease.
    let agent = &find(&manifests, "DaemonSet", "ferry-agent").object["spec"]["template"]["spec"];
    let container = &agent["containers"][0];
    let secrets: Vec<&Value> = agent["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.get("secret").is_some() || v.get("projected").is_some())
        .collect();
    assert!(secrets.is_empty(), "the agent mounts {secrets:?}");
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    for name in ["NODE_NAME", "POD_IP", "FERRY_NAMESPACE"] {
        assert!(
            env.iter().any(|e| e["name"] == name),
            "the agent has no {name}"
        );
    }
    assert_eq!(
        container["ports"][0]["containerPort"],
        u64::from(ferry_protocol::agent::DEFAULT_PORT)
    );
}

#[tokio::test]
async fn every_object_in_deploy_is_accepted_by_the_api_server() {
    let kustomization = kustomization();
    let manifests = manifests(&kustomization);
    let client = TestEnv::get().kube_client().await;

    // What the others need first is applied for real: the CRDs, then the namespace. Then
    // everything, those two included, in dry-run mode, in the kustomization's order.
    let first = |kind: &'static str| manifests.iter().filter(move |m| m.kind() == kind);
    for crd in first("CustomResourceDefinition") {
        apply(&client, &kustomization, crd, false)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        tokio::time::timeout(
            CONVERGENCE_TIMEOUT,
            await_condition(crds, crd.name(), conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("{} was not established", crd.describe()))
        .expect("watching CRDs");
    }
    for namespace in first("Namespace") {
        wait_until_not_terminating(&client, namespace).await;
        apply(&client, &kustomization, namespace, false)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    let mut failures = Vec::new();
    for manifest in &manifests {
        if let Err(error) = apply(&client, &kustomization, manifest, true).await {
            failures.push(error);
        }
    }
    assert!(
        failures.is_empty(),
        "the API server refused {} of {} objects in deploy/:\n{}",
        failures.len(),
        manifests.len(),
        failures.join("\n")
    );
}

/// Applies one object with server-side apply, as `kubectl apply -k` would after kustomize set the
/// namespace of namespaced objects. Its error names the file and the object.
async fn apply(
    client: &Client,
    kustomization: &Kustomization,
    manifest: &Manifest,
    dry_run: bool,
) -> Result<(), String> {
    let fail = |what: String| format!("{}: {what}", manifest.describe());
    let api_version = manifest.object["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, manifest.kind());
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|error| {
            fail(format!(
                "the API server does not serve {api_version} {}: {error}",
                gvk.kind
            ))
        })?;

    let mut object: DynamicObject = serde_json::from_value(manifest.object.clone())
        .map_err(|error| fail(format!("not a Kubernetes object: {error}")))?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            let namespace = kustomization
                .namespace
                .clone()
                .or_else(|| object.namespace())
                .unwrap_or_else(|| "default".to_owned());
            object.metadata.namespace = Some(namespace.clone());
            Api::namespaced_with(client.clone(), &namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    // Strict: an unknown or duplicated field is an error, as with `kubectl apply`.
    let mut params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    let applied = api
        .patch(manifest.name(), &params, &Patch::Apply(&object))
        .await
        .map_err(|error| fail(format!("{} refused: {error}", mode(dry_run))))?;
    check_answer(&resource, &object, &applied).map_err(fail)
}

fn mode(dry_run: bool) -> &'static str {
    if dry_run {
        "dry-run server-side apply"
    } else {
        "server-side apply"
    }
}

/// The API server answered with the object that was sent, not some other one.
fn check_answer(
    resource: &ApiResource,
    sent: &DynamicObject,
    answer: &DynamicObject,
) -> Result<(), String> {
    if answer.name_any() != sent.name_any() || answer.namespace() != sent.namespace() {
        return Err(format!(
            "the API server answered with {} {:?}/{}",
            resource.kind,
            answer.namespace(),
            answer.name_any()
        ));
    }
    Ok(())
}

/// A namespace that an earlier run or a person deleted may still be finalizing, and nothing can be
/// applied in it until it is gone.
async fn wait_until_not_terminating(client: &Client, manifest: &Manifest) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let Some(existing) = namespaces
        .get_opt(manifest.name())
        .await
        .unwrap_or_else(|error| panic!("reading {}: {error}", manifest.describe()))
    else {
        return;
    };
    if existing.metadata.deletion_timestamp.is_none() {
        return;
    }
    let uid = existing.metadata.uid.unwrap_or_default();
    tokio::time::timeout(
        CONVERGENCE_TIMEOUT,
        await_condition(namespaces, manifest.name(), conditions::is_deleted(&uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("{} is still terminating", manifest.describe()))
    .expect("watching namespaces");
}

/// What the tests above rely on from the YAML parser: every value keeps its type.
#[test]
fn yaml_documents_parse_into_json_values() {
    let documents: Vec<Value> = serde_saphyr::from_multiple(
        "# comment\n---\na: 1\nb: \"1\"\nc: [x]\nd: true\n---\n---\ne: {}\n",
    )
    .unwrap();
    assert_eq!(
        documents,
        vec![
            serde_json::json!({"a": 1, "b": "1", "c": ["x"], "d": true}),
            serde_json::json!({"e": {}}),
        ]
    );
}

/// A client that authenticates with `token` instead of the test environment's own credentials.
async fn client_with_token(token: &str) -> Client {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(TestEnv::get().kubeconfig_path())
        .expect("the test environment's kubeconfig");
    for named in &mut kubeconfig.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        });
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a config");
    Client::try_from(config).expect("a client")
}

/// deploy/agent-leases.yaml, installed for real: an agent's token, bound to its pod on node A,
/// may write the Lease of node A, and the API server refuses it node B's Lease and the
/// controller's leader Lease though RBAC allows both. (The agents of the other tests run with the
/// test environment's own credentials, which the policy does not match.)
#[tokio::test]
async fn an_agent_may_write_only_the_lease_of_its_own_node() {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
    use kube::api::{DeleteParams, PostParams};

    let kustomization = kustomization();
    let manifests = manifests(&kustomization);
    let client = TestEnv::get().kube_client().await;
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        let manifest = find(&manifests, kind, "ferry-agent-leases");
        apply(&client, &kustomization, manifest, false)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    let namespace = ferry_tests::TestNamespace::create(&client, "agent-leases").await;
    let ns = namespace.name().to_owned();
    let node_a = ferry_tests::unique_name("lease-node-a");
    let nodes = Api::<Node>::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": node_a}})).unwrap(),
        )
        .await
        .unwrap();
    let objects = [
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ferry-agent"}}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "ferry-agent"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "update"]}]}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "ferry-agent"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry-agent"},
            "subjects": [{"kind": "ServiceAccount", "name": "ferry-agent", "namespace": ns}]}),
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent"},
            "spec": {"nodeName": node_a, "serviceAccountName": "ferry-agent",
                     "containers": [{"name": "agent", "image": "ferry.invalid/none"}]}}),
    ];
    for object in objects {
        ferry_tests::create_object(&client, &ns, object).await;
    }
    let pod = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("agent")
        .await
        .unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(600),
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request("ferry-agent", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("a token")
        .token;
    let agent = client_with_token(&token).await;
    let leases = Api::<Lease>::namespaced(agent, &ns);
    let lease = |name: &str| -> Lease {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": name}, "spec": {"holderIdentity": name}}),
        )
        .unwrap()
    };
    // The controller's leader Lease, made by the controller (here, the test's credentials).
    Api::<Lease>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &lease("ferry-controller"))
        .await
        .unwrap();

    // The policy takes effect a moment after it is created.
    let own = format!("ferry-agent-{node_a}");
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let refusal = loop {
        match leases
            .create(&PostParams::default(), &lease("ferry-agent-another-node"))
            .await
        {
            Err(kube::Error::Api(status)) if status.message.contains("its own node") => {
                break status.message;
            }
            // Not in force yet. The cleanup uses the test's own credentials: the policy may come
            // into force between this create and the delete, and it refuses the agent's delete.
            Ok(_) => {
                Api::<Lease>::namespaced(client.clone(), &ns)
                    .delete("ferry-agent-another-node", &DeleteParams::default())
                    .await
                    .expect("the test's credentials delete any Lease");
            }
            Err(error) => panic!("an unexpected refusal: {error}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent's token still writes another node's Lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(refusal.contains("ferry-agent-<node>"), "{refusal}");
    leases
        .create(&PostParams::default(), &lease(&own))
        .await
        .unwrap_or_else(|error| panic!("the agent may not write its own Lease: {error}"));
    let takeover = serde_json::json!({"spec": {"holderIdentity": "the-agent"}});
    let error = leases
        .patch(
            "ferry-controller",
            &PatchParams::default(),
            &Patch::Merge(&takeover),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("its own node"), "{error}");
    leases
        .patch(&own, &PatchParams::default(), &Patch::Merge(&takeover))
        .await
        .unwrap();

    nodes
        .delete(&node_a, &DeleteParams::default())
        .await
        .unwrap();
    namespace.delete_and_wait().await;
}

/// deploy/controller-deletes.yaml, installed for real: the controller's token may delete a
/// VolumeSnapshot or a pod that Ferry labelled, and the API server refuses it any other, though
/// RBAC allows both. Needs the VolumeSnapshot CRDs, which the environment's node installs.
#[tokio::test]
async fn the_controller_may_delete_only_the_snapshots_and_pods_ferry_labelled() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{ApiResource, DeleteParams, DynamicObject, PostParams};

    let kustomization = kustomization();
    let manifests = manifests(&kustomization);
    let client = TestEnv::get().kube_client().await;
    let resource = ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshot".into(),
        plural: "volumesnapshots".into(),
    };
    let probe: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    if let Err(error) = probe.list(&Default::default()).await {
        panic!(
            "the test cluster serves no VolumeSnapshots ({error}); its node installs the CRDs: start it with `tests/env/up`"
        );
    }
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        let manifest = find(&manifests, kind, "ferry-controller-deletes");
        apply(&client, &kustomization, manifest, false)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }
    let namespace = ferry_tests::TestNamespace::create(&client, "csi-policy").await;
    let ns = namespace.name().to_owned();
    let objects = [
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ferry-controller"}}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "ferry-controller"},
            "rules": [{"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"], "verbs": ["get", "delete"]},
                      {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}]}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "ferry-controller"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry-controller"},
            "subjects": [{"kind": "ServiceAccount", "name": "ferry-controller", "namespace": ns}]}),
    ];
    for object in objects {
        ferry_tests::create_object(&client, &ns, object).await;
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request("ferry-controller", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("a token")
        .token;
    let as_controller: Api<DynamicObject> =
        Api::namespaced_with(client_with_token(&token).await, &ns, &resource);
    let as_admin: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    // Snapshots of a claim that does not exist: the snapshot controller leaves them pending.
    let snapshot = |name: &str, labels: Value| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name, "labels": labels},
            "spec": {"source": {"persistentVolumeClaimName": "none"}},
        }))
        .unwrap()
    };

    // The policy takes effect a moment after it is created; each try uses a new snapshot.
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let refusal = loop {
        let name = ferry_tests::unique_name("applications");
        as_admin
            .create(
                &PostParams::default(),
                &snapshot(&name, serde_json::json!({})),
            )
            .await
            .unwrap();
        match as_controller.delete(&name, &DeleteParams::default()).await {
            Err(kube::Error::Api(status))
                if status.message.contains("may delete only the CSI snapshots") =>
            {
                break status.message;
            }
            Ok(_) => {}
            Err(error) => panic!("an unexpected refusal: {error}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller's token still deletes an application's VolumeSnapshot"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(refusal.contains("ferry.dev/backup-uid"), "{refusal}");
    for label in ["ferry.dev/backup-uid", "ferry.dev/restore-uid"] {
        let name = ferry_tests::unique_name("ferrys");
        as_admin
            .create(
                &PostParams::default(),
                &snapshot(&name, serde_json::json!({label: "some-uid"})),
            )
            .await
            .unwrap();
        as_controller
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap_or_else(|error| {
                panic!("the controller may not delete its own ({label}): {error}")
            });
    }
    // Pods: only the data mover's, which Ferry labels. (The policy's rule for pods may come into
    // force after its rule for snapshots did: each try uses a new pod.)
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client_with_token(&token).await, &ns);
    let pod = |name: &str, labels: Value| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "ferry.invalid/none"}]}})
    };
    loop {
        let name = ferry_tests::unique_name("application");
        ferry_tests::create_object(&client, &ns, pod(&name, serde_json::json!({}))).await;
        match pods.delete(&name, &DeleteParams::default()).await {
            Err(kube::Error::Api(status)) if status.message.contains("may delete only") => break,
            Ok(_) => {}
            Err(error) => panic!("an unexpected refusal: {error}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller's token still deletes an application's pod"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    ferry_tests::create_object(
        &client,
        &ns,
        pod(
            "data-mover",
            serde_json::json!({"ferry.dev/backup-uid": "some-uid"}),
        ),
    )
    .await;
    pods.delete("data-mover", &DeleteParams::default())
        .await
        .unwrap_or_else(|error| {
            panic!("the controller may not delete a data mover's pod: {error}")
        });
    namespace.delete_and_wait().await;
}
