//! The VolumeSnapshotLocation reconciler: checks on a period that the location's EC2 region
//! answers with its credentials, and says in the status what is wrong when it does not.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::crd::{LocationPhase, VolumeSnapshotLocation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::context::Context;
use crate::error::Result;

const PERIOD: Duration = Duration::from_secs(60);

pub async fn reconcile(location: Arc<VolumeSnapshotLocation>, ctx: Arc<Context>) -> Result<Action> {
    let checked = check(&location, &ctx).await;
    let previous = location.status.as_ref().and_then(|s| s.phase);
    let mut status = location.status.clone().unwrap_or_default();
    status.last_validation_time = Some(Time(jiff::Timestamp::now()));
    match checked {
        Ok(()) => {
            status.phase = Some(LocationPhase::Available);
            status.message = None;
        }
        Err(message) => {
            if previous != Some(LocationPhase::Unavailable) {
                ctx.event(
                    location.as_ref(),
                    EventType::Warning,
                    "LocationUnavailable",
                    message.clone(),
                )
                .await;
            }
            status.phase = Some(LocationPhase::Unavailable);
            status.message = Some(message);
        }
    }
    ctx.apply_status(location.as_ref(), &status).await?;
    Ok(Action::requeue(PERIOD))
}

/// Ok when the region answers with these credentials; otherwise what is wrong, in words a user
/// can act on.
async fn check(location: &VolumeSnapshotLocation, ctx: &Context) -> Result<(), String> {
    let ebs = ctx.ebs(location).await.map_err(|error| error.to_string())?;
    ebs.validate().await.map_err(|error| error.to_string())
}
