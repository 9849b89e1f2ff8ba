//! Finding a storage or snapshot location and connecting to it: the bucket of a
//! BackupStorageLocation, the EC2 API of a VolumeSnapshotLocation, with the credentials their
//! Secrets hold. The reconcilers reach it through their `Context`; the CLI uses it alone.

use ferry_protocol::crd::{BackupStorageLocation, SecretKeyRef, VolumeSnapshotLocation};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::ebs::{Ebs, EbsConfig};
use crate::error::{Error, Result};
use crate::storage::{ObjectStore, StoreConfig};

/// The locations of one Ferry namespace.
#[derive(Clone)]
pub struct Locations {
    client: Client,
    namespace: String,
}

impl Locations {
    pub fn new(client: Client, namespace: &str) -> Locations {
        Locations {
            client,
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace the locations and their Secrets live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The client the locations are read with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The storage location `name`, or the default one when `name` is None.
    pub async fn storage_location(&self, name: Option<&str>) -> Result<BackupStorageLocation> {
        let locations: Api<BackupStorageLocation> =
            Api::namespaced(self.client.clone(), &self.namespace);
        match name {
            Some(name) => locations
                .get_opt(name)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: format!("BackupStorageLocation {}/{name}", self.namespace),
                }),
            None => {
                let all = locations.list(&ListParams::default()).await?;
                default_location(all.items, &self.namespace)
            }
        }
    }

    /// Connects to a storage location's bucket, sealing what it writes and opening what it reads
    /// with the installation's key ([`crate::seal`]). Where no key exists yet and the location
    /// holds no backup and no repository, the key is made (see
    /// [`crate::agents::repository_password`]).
    pub async fn object_store(&self, location: &BackupStorageLocation) -> Result<ObjectStore> {
        let key = crate::agents::repository_password(self, location).await?;
        let store = self.bucket(location).await?;
        Ok(store.sealed(crate::seal::SealKey::derive(key.as_bytes())))
    }

    /// Connects to a storage location's bucket with the credentials its Secret names, moving
    /// bytes as they are: for listing, deleting and validating.
    pub async fn bucket(&self, location: &BackupStorageLocation) -> Result<ObjectStore> {
        let credentials = self
            .credentials_of(location.spec.credential.as_ref())
            .await?;
        let spec = &location.spec;
        let server_side_encryption = spec
            .object_storage
            .encryption()
            .map_err(|error| Error::Validation(vec![error]))?;
        ObjectStore::connect(StoreConfig {
            bucket: spec.object_storage.bucket.clone(),
            prefix: spec.object_storage.prefix.clone(),
            region: spec.region.clone(),
            endpoint: spec.endpoint.clone(),
            force_path_style: spec.force_path_style.unwrap_or(false),
            credentials,
            ca_bundle: spec.object_storage.ca_bundle.clone(),
            server_side_encryption,
        })
        .await
    }

    /// The VolumeSnapshotLocations named, or every one in Ferry's namespace when `names` is
    /// empty. A name that does not exist is an error naming it.
    pub async fn snapshot_locations(
        &self,
        names: &[String],
    ) -> Result<Vec<VolumeSnapshotLocation>> {
        let api: Api<VolumeSnapshotLocation> =
            Api::namespaced(self.client.clone(), &self.namespace);
        if names.is_empty() {
            return Ok(api.list(&ListParams::default()).await?.items);
        }
        let mut locations = Vec::with_capacity(names.len());
        for name in names {
            let location = api.get_opt(name).await?.ok_or_else(|| Error::NotFound {
                what: format!("VolumeSnapshotLocation {}/{name}", self.namespace),
            })?;
            locations.push(location);
        }
        Ok(locations)
    }

    /// Connects to the EC2 API of a VolumeSnapshotLocation with the credentials its Secret names.
    pub async fn ebs(&self, location: &VolumeSnapshotLocation) -> Result<Ebs> {
        let spec = &location.spec;
        if spec.provider != "aws" {
            return Err(Error::Validation(vec![format!(
                "VolumeSnapshotLocation {}: provider {:?} is not supported; use \"aws\" (EBS snapshots)",
                location.name_any(),
                spec.provider
            )]));
        }
        let region = spec
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::Validation(vec![format!(
                    "VolumeSnapshotLocation {} names no region; set spec.region, e.g. eu-west-1",
                    location.name_any()
                )])
            })?;
        let credentials = self.credentials_of(spec.credential.as_ref()).await?;
        Ok(Ebs::connect(EbsConfig {
            location: location.name_any(),
            region,
            endpoint: spec.endpoint.clone(),
            credentials,
        })
        .await)
    }

    /// The credentials a location names, if it names any (else the controller's own are used).
    async fn credentials_of(
        &self,
        reference: Option<&SecretKeyRef>,
    ) -> Result<Option<aws_credential_types::Credentials>> {
        match reference {
            Some(reference) => Ok(Some(self.aws_credentials(reference).await?)),
            None => Ok(None),
        }
    }

    /// Reads an AWS credentials file (`[default]` profile) from a Secret key, as Velero's
    /// `cloud-credentials` Secret holds it.
    pub(crate) async fn aws_credentials(
        &self,
        reference: &SecretKeyRef,
    ) -> Result<aws_credential_types::Credentials> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!(
            "Secret {}/{} key {}",
            self.namespace, reference.name, reference.key
        );
        let secret = secrets
            .get_opt(&reference.name)
            .await?
            .ok_or_else(|| Error::NotFound { what: what.clone() })?;
        let data = secret
            .data
            .and_then(|mut data| data.remove(&reference.key))
            .ok_or_else(|| Error::NotFound { what: what.clone() })?;
        let text = String::from_utf8(data.0)
            .map_err(|_| Error::Validation(vec![format!("{what} is not UTF-8 text")]))?;
        parse_credentials_file(&text).ok_or_else(|| {
            Error::Validation(vec![format!(
                "{what} holds no aws_access_key_id and aws_secret_access_key under [default]"
            )])
        })
    }
}

/// How long the node agents' scoped credentials last unless the location says.
pub const AGENT_CREDENTIALS_DURATION: std::time::Duration =
    std::time::Duration::from_secs(12 * 3600);

impl Locations {
    /// The credentials the node agents get for the repository of `namespace`'s volumes in
    /// `location`: with `agentCredentials`, short-lived ones from the store's STS that allow only
    /// that repository's objects ([`repository_policy`]); else the location's own.
    pub async fn agent_credentials(
        &self,
        location: &BackupStorageLocation,
        namespace: &str,
    ) -> Result<Option<aws_credential_types::Credentials>> {
        let spec = &location.spec;
        let own = self.credentials_of(spec.credential.as_ref()).await?;
        let Some(scoped) = &spec.agent_credentials else {
            return Ok(own);
        };
        let duration =
            agent_credentials_duration(scoped).map_err(|error| Error::Validation(vec![error]))?;
        let region = spec.region.as_deref().unwrap_or("us-east-1");
        let shared = ferry_mover::s3::shared_config(region, own).await;
        let mut config = aws_sdk_sts::config::Builder::from(&shared);
        if let Some(endpoint) = &spec.endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some(bundle) = &spec.object_storage.ca_bundle {
            config =
                config.http_client(ferry_mover::s3::trusting_only(bundle).map_err(|error| {
                    Error::Validation(vec![format!("objectStorage.caBundle: {error}")])
                })?);
        }
        let key_prefix = format!(
            "{}{namespace}",
            ferry_protocol::layout::repositories_prefix(spec.object_storage.prefix.as_deref())
        );
        let policy = repository_policy(&spec.object_storage.bucket, &key_prefix);
        let session: String = format!("ferry-agent-{namespace}")
            .chars()
            .take(64)
            .collect();
        let assumed = aws_sdk_sts::Client::from_conf(config.build())
            .assume_role()
            // MinIO ignores the role; AWS requires one, and the location names it.
            .role_arn(
                scoped
                    .role_arn
                    .clone()
                    .unwrap_or_else(|| "arn:aws:iam::000000000000:role/ferry-agent".to_owned()),
            )
            .role_session_name(session)
            .policy(policy)
            .duration_seconds(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|error| Error::Storage {
                message: format!(
                    "scoped credentials for the node agents (agentCredentials of location {}): AssumeRole failed: {}",
                    location.name_any(),
                    aws_smithy_types::error::display::DisplayErrorContext(&error)
                ),
                retryable: matches!(
                    error,
                    aws_sdk_sts::error::SdkError::DispatchFailure(_)
                        | aws_sdk_sts::error::SdkError::TimeoutError(_)
                ),
            })?;
        let credentials = assumed.credentials().ok_or_else(|| Error::Storage {
            message: "AssumeRole answered without credentials".to_owned(),
            retryable: true,
        })?;
        Ok(Some(aws_credential_types::Credentials::new(
            credentials.access_key_id(),
            credentials.secret_access_key(),
            Some(credentials.session_token().to_owned()),
            std::time::SystemTime::try_from(*credentials.expiration()).ok(),
            "ferry-agent-assume-role",
        )))
    }
}

/// The duration of a location's agent credentials: 15 minutes to 12 hours, as STS allows.
pub fn agent_credentials_duration(
    scoped: &ferry_protocol::crd::AgentCredentials,
) -> std::result::Result<std::time::Duration, String> {
    let Some(text) = &scoped.duration else {
        return Ok(AGENT_CREDENTIALS_DURATION);
    };
    let duration = crate::parse_duration(text)
        .map_err(|error| format!("agentCredentials.duration: {error}"))?;
    if !(std::time::Duration::from_secs(900)..=AGENT_CREDENTIALS_DURATION).contains(&duration) {
        return Err(format!(
            "agentCredentials.duration {text} is not within 15m and 12h, which STS allows"
        ));
    }
    Ok(duration)
}

/// The session policy of a node agent's credentials: the objects under `key_prefix/` of `bucket`
/// (read, write, delete, multipart uploads), listing only under it, and nothing else.
pub fn repository_policy(bucket: &str, key_prefix: &str) -> String {
    let key_prefix = key_prefix.trim_end_matches('/');
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                           "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": [format!("arn:aws:s3:::{bucket}/{key_prefix}/*")],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [format!("arn:aws:s3:::{bucket}")],
                "Condition": {"StringLike": {"s3:prefix": [format!("{key_prefix}/*")]}},
            },
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucketMultipartUploads"],
                "Resource": [format!("arn:aws:s3:::{bucket}")],
            },
        ],
    })
    .to_string()
}

/// Reads the `[default]` profile of an AWS credentials file.
fn parse_credentials_file(text: &str) -> Option<aws_credential_types::Credentials> {
    let mut in_default = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_default = line == "[default]";
        } else if in_default && let Some((name, value)) = line.split_once('=') {
            let value = Some(value.trim().to_owned());
            match name.trim() {
                "aws_access_key_id" => key = value,
                "aws_secret_access_key" => secret = value,
                "aws_session_token" => token = value,
                _ => {}
            }
        }
    }
    Some(aws_credential_types::Credentials::new(
        key?,
        secret?,
        token,
        None,
        "ferry-location-secret",
    ))
}

/// The one location of `namespace` marked `default: true`. Several are an error naming them all,
/// never whichever the API server happens to list first: backups would land in one bucket today
/// and another tomorrow.
pub fn default_location(
    locations: Vec<BackupStorageLocation>,
    namespace: &str,
) -> Result<BackupStorageLocation> {
    let mut defaults: Vec<BackupStorageLocation> =
        locations.into_iter().filter(|l| l.spec.default).collect();
    match defaults.len() {
        0 => Err(Error::NotFound {
            what: format!(
                "a default BackupStorageLocation in namespace {namespace} (name one in the spec, or mark one default: `ferry location set-default NAME`)"
            ),
        }),
        1 => Ok(defaults.remove(0)),
        _ => {
            let mut names: Vec<String> = defaults.iter().map(ResourceExt::name_any).collect();
            names.sort();
            Err(Error::Validation(vec![format!(
                "{} BackupStorageLocations in namespace {namespace} are marked default ({}); keep one: `ferry location set-default NAME`, or name the location in the spec",
                names.len(),
                names.join(", ")
            )]))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_agents_session_policy_allows_only_its_repository() {
        let policy: serde_json::Value =
            serde_json::from_str(&repository_policy("backups", "site/repositories/shop/")).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(
            statements[0]["Resource"],
            serde_json::json!(["arn:aws:s3:::backups/site/repositories/shop/*"])
        );
        assert_eq!(
            statements[1]["Condition"]["StringLike"]["s3:prefix"],
            serde_json::json!(["site/repositories/shop/*"])
        );
        // Nothing allows a bucket-wide object action or a listing outside the prefix.
        for statement in statements {
            for resource in statement["Resource"].as_array().unwrap() {
                let resource = resource.as_str().unwrap();
                assert!(
                    resource == "arn:aws:s3:::backups"
                        || resource.starts_with("arn:aws:s3:::backups/site/repositories/shop/"),
                    "{resource}"
                );
            }
            let actions = statement["Action"].as_array().unwrap();
            assert!(
                !actions
                    .iter()
                    .any(|a| a == "s3:*" || a == "s3:PutBucketPolicy")
            );
        }
    }

    #[test]
    fn agent_credentials_last_between_15_minutes_and_12_hours() {
        let with = |duration: Option<&str>| {
            agent_credentials_duration(&ferry_protocol::crd::AgentCredentials {
                role_arn: None,
                duration: duration.map(str::to_owned),
            })
        };
        assert_eq!(with(None), Ok(AGENT_CREDENTIALS_DURATION));
        assert_eq!(with(Some("2h")), Ok(std::time::Duration::from_secs(7200)));
        assert!(with(Some("5m")).unwrap_err().contains("15m and 12h"));
        assert!(with(Some("24h")).unwrap_err().contains("15m and 12h"));
        assert!(
            with(Some("soon"))
                .unwrap_err()
                .contains("agentCredentials.duration")
        );
    }

    use super::*;
    use ferry_protocol::crd::{BackupStorageLocationSpec, ObjectStorage};

    fn location(name: &str, default: bool) -> BackupStorageLocation {
        BackupStorageLocation::new(
            name,
            BackupStorageLocationSpec {
                provider: "aws".to_owned(),
                object_storage: ObjectStorage {
                    bucket: "b".to_owned(),
                    ..Default::default()
                },
                region: None,
                endpoint: None,
                force_path_style: None,
                credential: None,
                default,
                access_mode: None,
                validation_frequency: None,
                backup_sync_period: None,
                repository_maintenance_frequency: None,
                agent_credentials: None,
            },
        )
    }

    #[test]
    fn exactly_one_default_location_is_used() {
        let picked = default_location(
            vec![
                location("a", false),
                location("b", true),
                location("c", false),
            ],
            "ferry-system",
        )
        .unwrap();
        assert_eq!(picked.name_any(), "b");

        let none = default_location(vec![location("a", false)], "ferry-system").unwrap_err();
        assert!(none.to_string().contains("set-default"), "{none}");

        // Seen beside Velero: seven locations all marked default, and whichever was listed first
        // taken. Now an error naming them.
        let several = default_location(
            vec![
                location("z", true),
                location("a", false),
                location("m", true),
            ],
            "ferry-system",
        )
        .unwrap_err()
        .to_string();
        assert!(
            several.contains(
                "2 BackupStorageLocations in namespace ferry-system are marked default (m, z)"
            ),
            "{several}"
        );
        assert!(
            !several.contains(" a,") && !several.contains("(a"),
            "{several}"
        );
    }

    #[test]
    fn credentials_come_from_the_default_profile() {
        let text = "[other]\naws_access_key_id = wrong\n[default]\naws_access_key_id = AKID\naws_secret_access_key=SECRET\n";
        let credentials = parse_credentials_file(text).unwrap();
        assert_eq!(credentials.access_key_id(), "AKID");
        assert_eq!(credentials.secret_access_key(), "SECRET");
        assert!(parse_credentials_file("[default]\naws_access_key_id = x\n").is_none());
    }
}
