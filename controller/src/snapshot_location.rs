//! The VolumeSnapshotLocation reconciler: checks on a period that the location's EC2 region
//! answers with its credentials, and says in the status what is wrong when it does not.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::crd::VolumeSnapshotLocation;
use kube::runtime::controller::Action;

use crate::context::Context;
use crate::error::Result;
use crate::location::checked_status;

const PERIOD: Duration = Duration::from_secs(60);

pub async fn reconcile(location: Arc<VolumeSnapshotLocation>, ctx: Arc<Context>) -> Result<Action> {
    let checked = check(&location, &ctx).await;
    let status = checked_status(&ctx, location.as_ref(), location.status.clone(), &checked).await;
    ctx.apply_status(location.as_ref(), &status).await?;
    Ok(Action::requeue(PERIOD))
}

/// Ok when the region answers with these credentials; otherwise what is wrong, in words a user
/// can act on.
async fn check(location: &VolumeSnapshotLocation, ctx: &Context) -> Result<(), String> {
    let ebs = ctx
        .locations
        .ebs(location)
        .await
        .map_err(|error| error.to_string())?;
    ebs.validate().await.map_err(|error| error.to_string())
}
