//! What the S3 and EC2 clients share: the SDK configuration of a region and its credentials.

use aws_credential_types::Credentials;

/// The SDK configuration for `region` (default `us-east-1`), with `credentials` when given, else
/// the controller's own (environment, web identity, profile).
pub async fn shared_config(
    region: Option<&str>,
    credentials: Option<Credentials>,
) -> aws_config::SdkConfig {
    let region = aws_config::Region::new(region.unwrap_or("us-east-1").to_owned());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(region);
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    loader.load().await
}
