//! Migrating and cloning (issue 17) against the test environment: production cloned into a test
//! namespace with another StorageClass and fewer replicas through a resource-modifier file in
//! Velero's format, a dry run first whose plan is what the restore then does, object for object;
//! then changes in the clone, a dry run with the update policy, and the restore after it. Also:
//! objects labelled to stay out of backups, running Jobs, or-selectors, preserved node ports.

use std::collections::BTreeMap;

use ferry_protocol::crd::Phase;
use ferry_tests::{HasPhase, RunningController, TestNamespace, create_object as create, summary};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// A small production: a Deployment of two containers at 3 replicas, a StatefulSet with a claim
/// template and a claim of StorageClass `fast`, a NodePort Service, ConfigMaps (one labelled to
/// stay out of backups), a Secret and a Job that is still running.
async fn production(client: &Client, namespace: &str, node_port: i32) {
    let container = |name: &str, image: &str| json!({"name": name, "image": image});
    create(client, namespace, json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"tier": "web"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [container("nginx", "nginx:1.27"), container("sidecar", "busybox:1")]}}}
    })).await;
    create(client, namespace, json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "labels": {"tier": "db"}},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [container("postgres", "postgres:16")]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}
    })).await;
    create(client, namespace, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "uploads", "labels": {"tier": "web"}},
        "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    })).await;
    create(client, namespace, json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": node_port}]}
    })).await;
    create(client, namespace, json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "labels": {"tier": "web"}},
        "data": {"mode": "production"}
    })).await;
    create(
        client,
        namespace,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "scratch", "labels": {"ferry.dev/exclude-from-backup": "true"}},
            "data": {"tmp": "1"}
        }),
    )
    .await;
    create(client, namespace, json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "broken"}, "stringData": {"k": "v"}
    })).await;
    // No node runs its pod here: it stays active.
    create(client, namespace, json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container("migrate", "busybox:1")]}}}
    })).await;
}

/// The rules, exactly as a Velero user writes them: one replica, a new image for one container
/// (strategic merge: the other container stays), an annotation on every ConfigMap (merge patch),
/// and a rule that cannot apply to the Secret `broken`.
const VELERO_RULES: &str = r#"version: v1
resourceModifierRules:
- conditions:
    groupResource: deployments.apps
    resourceNameRegex: "^web$"
  patches:
  - operation: replace
    path: "/spec/replicas"
    value: "1"
- conditions:
    groupResource: deployments.apps
  strategicPatches:
  - patchData: |
      {"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27-test"}]}}}}
- conditions:
    groupResource: configmaps
    matches:
    - path: /data/mode
      value: production
  mergePatches:
  - patchData: |
      metadata:
        annotations:
          cloned-from: production
      data:
        mode: test
- conditions:
    groupResource: secrets
    resourceNameRegex: broken
  patches:
  - operation: replace
    path: /spec/missing
    value: x
"#;

/// The results of a restore: `resource namespace/name` to (outcome, reason, notes).
async fn outcomes(
    ferry: &RunningController,
    restore: &str,
) -> BTreeMap<String, (String, String, Vec<String>)> {
    let results = ferry.restore_results(restore).await;
    let text = |r: &Value, f: &str| {
        r.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    results
        .as_array()
        .unwrap_or_else(|| panic!("no results for {restore}: {results}"))
        .iter()
        .map(|r| {
            let notes = r
                .get("notes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            (
                format!(
                    "{} {}/{}",
                    text(r, "resource"),
                    text(r, "namespace"),
                    text(r, "name")
                ),
                (
                    text(r, "outcome"),
                    text(r, "reason"),
                    notes.filter_map(Value::as_str).map(str::to_owned).collect(),
                ),
            )
        })
        .collect()
}

/// What a real restore does where the plan says `outcome`.
fn as_done(outcome: &str) -> &str {
    match outcome {
        "would-create" => "created",
        "would-update" => "updated",
        other => other,
    }
}

/// The plan's outcomes, as a restore reports them, against the restore's.
fn assert_plan_was_followed(
    plan: &BTreeMap<String, (String, String, Vec<String>)>,
    done: &BTreeMap<String, (String, String, Vec<String>)>,
) {
    let planned: BTreeMap<&String, &str> = plan.iter().map(|(k, v)| (k, as_done(&v.0))).collect();
    let happened: BTreeMap<&String, &str> = done.iter().map(|(k, v)| (k, v.0.as_str())).collect();
    assert_eq!(
        planned, happened,
        "the dry run's plan and the restore differ"
    );
}

#[tokio::test]
async fn production_is_cloned_with_rules_after_a_dry_run_that_it_follows() {
    let ferry = RunningController::start_with_location("migration-clone").await;
    let client = ferry.client.clone();
    let prod = TestNamespace::create(&client, "prod").await;
    production(&client, prod.name(), 30417).await;
    let backup = ferry
        .backup("prod", json!({"includedNamespaces": [prod.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let listed = ferry
        .read_json(&ferry_protocol::layout::BackupKeys::new(None, "prod").resource_list())
        .await
        .unwrap();
    assert!(
        !listed.to_string().contains("scratch"),
        "a ConfigMap labelled ferry.dev/exclude-from-backup=true was backed up: {listed}"
    );

    ferry
        .create(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "clone-rules"},
                       "data": {"rules.yaml": VELERO_RULES}}),
        )
        .await;
    let test = TestNamespace::create(&client, "test").await;
    let spec = |dry_run: bool, policy: &str| {
        json!({
            "backupName": "prod",
            "namespaceMapping": {prod.name(): test.name()},
            "storageClassMapping": {"fast": "cheap"},
            "resourceModifier": {"kind": "configmap", "name": "clone-rules"},
            "existingResourcePolicy": policy,
            "dryRun": dry_run,
            // What the clone's controllers make again: between the plan and the restore, they
            // would delete or adopt the archived ones, and the two could not be compared.
            "excludedResources": ["pods", "replicasets.apps", "controllerrevisions.apps"],
        })
    };

    // The dry run: every object planned, nothing created.
    let dry = ferry.restore("plan", spec(true, "none")).await;
    let plan = outcomes(&ferry, "plan").await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), test.name());
    assert!(
        deployments.get_opt("web").await.unwrap().is_none(),
        "the dry run created the Deployment"
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), test.name())
            .get_opt("settings")
            .await
            .unwrap()
            .is_none(),
        "the dry run created a ConfigMap"
    );
    let in_test = |what: &str| format!("{what}/");
    let outcome_of = |plan: &BTreeMap<String, (String, String, Vec<String>)>, key: &str| {
        plan.get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} is not in {plan:#?}"))
    };
    for kind in [
        "deployments.apps",
        "statefulsets.apps",
        "persistentvolumeclaims",
        "services",
        "configmaps",
        "jobs.batch",
    ] {
        let entries: Vec<_> = plan
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{kind} {}", in_test(test.name()))))
            // The cluster gives every namespace its own.
            .filter(|(k, _)| !k.ends_with("/kube-root-ca.crt"))
            .collect();
        assert!(!entries.is_empty(), "no {kind} in the plan: {plan:#?}");
        for (key, (outcome, reason, _)) in entries {
            assert_eq!(outcome, "would-create", "{key}: {reason}");
        }
    }
    let (outcome, reason, _) = outcome_of(&plan, &format!("secrets {}/broken", test.name()));
    assert_eq!(outcome, "failed");
    assert!(
        reason.contains("resource modifier rule 4 (groupResource secrets)"),
        "{reason}"
    );
    assert_eq!(
        dry.phase(),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&dry)
    );

    // The restore does what the plan said.
    let restored = ferry.restore("clone", spec(false, "none")).await;
    assert_eq!(
        restored.phase(),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&restored)
    );
    assert_plan_was_followed(&plan, &outcomes(&ferry, "clone").await);

    let web = deployments.get("web").await.unwrap().spec.unwrap();
    assert_eq!(web.replicas, Some(1));
    let containers = web.template.spec.unwrap().containers;
    let images: Vec<(String, String)> = containers
        .into_iter()
        .map(|c| (c.name, c.image.unwrap_or_default()))
        .collect();
    assert_eq!(
        images,
        [
            ("nginx".to_owned(), "nginx:1.27-test".to_owned()),
            ("sidecar".to_owned(), "busybox:1".to_owned())
        ]
    );
    let templates = Api::<StatefulSet>::namespaced(client.clone(), test.name())
        .get("db")
        .await
        .unwrap()
        .spec
        .unwrap()
        .volume_claim_templates
        .unwrap();
    assert_eq!(
        templates[0]
            .spec
            .as_ref()
            .unwrap()
            .storage_class_name
            .as_deref(),
        Some("cheap")
    );
    let uploads = Api::<PersistentVolumeClaim>::namespaced(client.clone(), test.name())
        .get("uploads")
        .await
        .unwrap();
    assert_eq!(
        uploads.spec.unwrap().storage_class_name.as_deref(),
        Some("cheap")
    );
    let settings = Api::<ConfigMap>::namespaced(client.clone(), test.name())
        .get("settings")
        .await
        .unwrap();
    assert_eq!(settings.data.unwrap()["mode"], "test");
    assert_eq!(
        settings.metadata.annotations.unwrap()["cloned-from"],
        "production"
    );
    assert!(
        Api::<Job>::namespaced(client.clone(), test.name())
            .get_opt("migrate")
            .await
            .unwrap()
            .is_some(),
        "the running Job was not restored"
    );
    // The node port is the production Service's: the clone's is assigned anew.
    let port = Api::<Service>::namespaced(client.clone(), test.name())
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .ports
        .unwrap()[0]
        .node_port;
    assert!(port.is_some_and(|p| p != 30417), "{port:?}");

    // The clone drifts: a ConfigMap changed, the Service deleted. A dry run with the update
    // policy plans to change the one back (and says how) and create the other, and does
    // neither; the restore then does exactly that.
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), test.name());
    configmaps
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"mode": "drifted"}})),
        )
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), test.name())
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    ferry.restore("plan-update", spec(true, "update")).await;
    let plan = outcomes(&ferry, "plan-update").await;
    let (outcome, reason, _) = outcome_of(&plan, &format!("configmaps {}/settings", test.name()));
    assert_eq!(outcome, "would-update");
    assert!(
        reason.contains("/data/mode: \"drifted\" -> \"test\""),
        "{reason}"
    );
    assert_eq!(
        outcome_of(&plan, &format!("services {}/web", test.name())).0,
        "would-create"
    );
    assert_eq!(
        outcome_of(&plan, &format!("deployments.apps {}/web", test.name())).0,
        "exists-unchanged"
    );
    assert_eq!(
        configmaps.get("settings").await.unwrap().data.unwrap()["mode"],
        "drifted"
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), test.name())
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
    );
    ferry.restore("update", spec(false, "update")).await;
    assert_plan_was_followed(&plan, &outcomes(&ferry, "update").await);
    assert_eq!(
        configmaps.get("settings").await.unwrap().data.unwrap()["mode"],
        "test"
    );

    // Or-selectors: the web tier or the db tier, nothing else.
    ferry
        .restore(
            "tiers",
            json!({"backupName": "prod", "namespaceMapping": {prod.name(): test.name()}, "dryRun": true,
                   "orLabelSelectors": [{"matchLabels": {"tier": "web"}}, {"matchLabels": {"tier": "db"}}]}),
        )
        .await;
    let names: Vec<String> = outcomes(&ferry, "tiers").await.into_keys().collect();
    assert_eq!(
        names,
        [
            format!("configmaps {}/settings", test.name()),
            format!("deployments.apps {}/web", test.name()),
            format!("persistentvolumeclaims {}/uploads", test.name()),
            format!("statefulsets.apps {}/db", test.name()),
        ]
    );

    // Back in production after the namespace is lost, the Service keeps its node port when asked.
    let prod_name = prod.name().to_owned();
    prod.delete_and_wait().await;
    let back = ferry
        .restore("back", json!({"backupName": "prod", "preserveNodePorts": true, "includedResources": ["services"]}))
        .await;
    assert_eq!(back.phase(), Some(Phase::Completed), "{}", summary(&back));
    let port = Api::<Service>::namespaced(client.clone(), &prod_name)
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .ports
        .unwrap()[0]
        .node_port;
    assert_eq!(port, Some(30417));
    ferry_tests::delete_namespace_and_wait(&client, &prod_name).await;
    test.delete_and_wait().await;
    ferry.stop().await;
}

#[tokio::test]
async fn bad_resource_modifiers_and_mappings_fail_validation_with_reasons() {
    let ferry = RunningController::start_with_location("migration-mistakes").await;
    let app = TestNamespace::create(&ferry.client, "app").await;
    create(
        &ferry.client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
    )
    .await;
    let backup = ferry
        .backup("app", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    ferry
        .create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typo"},
                       "data": {"rules.yaml": "version: v1\nresourceModifierRules:\n- conditions: {groupResource: pods, namespace: [a]}\n  patches: [{operation: remove, path: /x}]\n"}}))
        .await;
    for (name, spec, expected) in [
        (
            "missing",
            json!({"resourceModifier": {"name": "nothing"}}),
            "ConfigMap nothing not found",
        ),
        (
            "typo",
            json!({"resourceModifier": {"name": "typo"}}),
            "unknown field `namespace`",
        ),
        (
            "both",
            json!({"labelSelector": {"matchLabels": {"a": "b"}}, "orLabelSelectors": [{"matchLabels": {"a": "c"}}]}),
            "exclude each other",
        ),
    ] {
        let mut spec = spec;
        spec["backupName"] = json!("app");
        let restore = ferry.restore(name, spec).await;
        assert_eq!(
            restore.phase(),
            Some(Phase::FailedValidation),
            "{name}: {}",
            summary(&restore)
        );
        let errors = restore.status.unwrap().validation_errors.join("; ");
        assert!(errors.contains(expected), "{name}: {errors}");
    }
    app.delete_and_wait().await;
    ferry.stop().await;
}

/// A CRD served at v1 (where its objects are stored) and v2, which the API server prefers.
fn gizmo_crd(group: &str, v2_served: bool) -> Value {
    let version = |name: &str, served: bool, storage: bool| {
        json!({"name": name, "served": served, "storage": storage,
               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("gizmos.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
                 "versions": [version("v1", true, true), version("v2", v2_served, false)]}
    })
}

#[tokio::test]
async fn objects_come_back_at_a_version_the_cluster_still_serves() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, PostParams};
    use kube::discovery::ApiResource;

    let ferry = RunningController::start_with_location("migration-versions").await;
    let client = ferry.client.clone();
    let group = format!("{}.example.com", ferry_tests::unique_name("v"));
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(gizmo_crd(&group, true)).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let gizmos_at = |version: &str, namespace: &str| {
        let resource = ApiResource {
            group: group.clone(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: "Gizmo".into(),
            plural: "gizmos".into(),
        };
        Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
    };
    let app = TestNamespace::create(&client, "versions").await;
    let gizmo: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Gizmo",
        "metadata": {"name": "g"}, "spec": {"size": 3}
    }))
    .unwrap();
    // The CRD is established when its objects can be created.
    let mut created = false;
    for _ in 0..100 {
        if gizmos_at("v1", app.name())
            .create(&PostParams::default(), &gizmo)
            .await
            .is_ok()
        {
            created = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(created, "the CRD gizmos.{group} was not established");

    let backup = ferry
        .backup("versions", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    // The archive holds the gizmo at the preferred v2, and at v1 too.
    let archive = ferry
        .read_bytes(&ferry_protocol::layout::BackupKeys::new(None, "versions").archive())
        .await;
    let tarred = ferry_controller::gunzip(&archive).unwrap();
    let mut paths = Vec::new();
    for entry in tar::Archive::new(tarred.as_slice()).entries().unwrap() {
        paths.push(
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let at = |version: &str| match version {
        "" => format!("resources/gizmos.{group}/namespaces/{}/g.json", app.name()),
        v => format!(
            "resources/gizmos.{group}/{v}/namespaces/{}/g.json",
            app.name()
        ),
    };
    assert!(paths.contains(&at("")), "{paths:#?}");
    assert!(paths.contains(&at("v1")), "{paths:#?}");

    // The cluster drops v2; the gizmo comes back at v1, from its v1 copy.
    let namespace = app.name().to_owned();
    app.delete_and_wait().await;
    let only_v1: CustomResourceDefinition =
        serde_json::from_value(gizmo_crd(&group, false)).unwrap();
    crds.patch(
        &format!("gizmos.{group}"),
        &PatchParams::apply("migration-test").force(),
        &Patch::Apply(&only_v1),
    )
    .await
    .unwrap();
    let mut dropped = false;
    for _ in 0..100 {
        if gizmos_at("v2", "default")
            .list(&Default::default())
            .await
            .is_err()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(dropped, "the API server still serves gizmos at v2");
    let restored = ferry
        .restore(
            "versions",
            json!({"backupName": "versions",
                   "excludedResources": ["customresourcedefinitions.apiextensions.k8s.io"]}),
        )
        .await;
    assert_eq!(
        restored.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restored)
    );
    let back = gizmos_at("v1", &namespace).get("g").await.unwrap();
    assert_eq!(back.data["spec"]["size"], 3);

    ferry_tests::delete_namespace_and_wait(&client, &namespace).await;
    crds.delete(&format!("gizmos.{group}"), &DeleteParams::default())
        .await
        .unwrap();
    ferry.stop().await;
}

#[tokio::test]
async fn scoped_resource_lists_choose_what_a_backup_takes() {
    let ferry = RunningController::start_with_location("migration-scoped").await;
    let app = TestNamespace::create(&ferry.client, "scoped").await;
    for object in [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key"}, "stringData": {"k": "v"}}),
    ] {
        create(&ferry.client, app.name(), object).await;
    }
    let backup = ferry
        .backup(
            "configmaps-only",
            json!({"includedNamespaces": [app.name()],
                   "includedNamespaceScopedResources": ["configmaps"],
                   "excludedClusterScopedResources": ["*"]}),
        )
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let listed = ferry
        .read_json(
            &ferry_protocol::layout::BackupKeys::new(None, "configmaps-only").resource_list(),
        )
        .await
        .unwrap();
    let resources: Vec<&String> = listed.as_object().unwrap().keys().collect();
    assert_eq!(resources, ["configmaps"], "{listed}");

    let mixed = ferry
        .backup(
            "mixed",
            json!({"includedResources": ["secrets"], "includedNamespaceScopedResources": ["configmaps"]}),
        )
        .await;
    assert_eq!(
        mixed.phase(),
        Some(Phase::FailedValidation),
        "{}",
        summary(&mixed)
    );
    let errors = mixed.status.unwrap().validation_errors.join("; ");
    assert!(errors.contains("use one kind"), "{errors}");
    let typo = ferry
        .backup(
            "typo",
            json!({"includedClusterScopedResources": ["configmaps"]}),
        )
        .await;
    let errors = typo.status.unwrap().validation_errors.join("; ");
    assert!(
        errors.contains("includedClusterScopedResources: unknown resource \"configmaps\""),
        "{errors}"
    );
    app.delete_and_wait().await;
    ferry.stop().await;
}
