//! `ferry schedule`: create, get, pause, unpause and delete Schedules.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use ferry_protocol::crd::{Backup, SCHEDULE_LABEL, Schedule, ScheduleSpec};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use super::{
    BackupTemplate, ClusterArgs, Columns, Shown, block_on, create, describe, enum_name, get,
    print_objects, show, time,
};
use crate::{GlobalArgs, OutputFormat};

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Take backups on a cron schedule; each is named SCHEDULE-YYYYMMDDHHMMSS (its time, UTC).
    Create {
        name: String,
        /// When: a cron expression of five fields, minute hour day-of-month month day-of-week,
        /// e.g. "0 1 * * *" for 01:00 every day.
        #[arg(long)]
        schedule: String,
        /// The IANA time zone the schedule is read in, e.g. Europe/Paris (default UTC).
        #[arg(long)]
        time_zone: Option<String>,
        /// Create it paused: no backups until `ferry schedule unpause`.
        #[arg(long)]
        paused: bool,
        /// Wait for the first cron time instead of backing up at once; after an unpause, wait for
        /// the next cron time instead of catching up on one missed while paused.
        #[arg(long)]
        skip_immediately: bool,
        #[command(flatten)]
        template: BackupTemplate,
    },
    /// List schedules, or show one.
    Get { name: Option<String> },
    /// Show a schedule's spec and status, and the backups it took.
    Describe { name: String },
    /// Stop taking backups until unpaused.
    Pause { name: String },
    /// Take backups again.
    Unpause { name: String },
    /// Delete a schedule. The backups it took stay.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        confirm: bool,
    },
}

pub fn run_schedule(
    global: &GlobalArgs,
    cluster: &ClusterArgs,
    command: ScheduleCommand,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let client = cluster.client().await?;
        let schedules: Api<Schedule> = Api::namespaced(client.clone(), &cluster.namespace);
        match command {
            ScheduleCommand::Create {
                name,
                schedule,
                time_zone,
                paused,
                skip_immediately,
                template,
            } => {
                if let Err(problems) =
                    ferry_controller::schedule::CronSchedule::parse(&schedule, time_zone.as_deref())
                {
                    bail!("{}", problems.join("; "));
                }
                let spec = ScheduleSpec {
                    schedule,
                    time_zone,
                    template: template.spec()?,
                    paused,
                    skip_immediately,
                };
                create(&schedules, &Schedule::new(&name, spec)).await?;
                let first = match (paused, skip_immediately) {
                    (true, _) => "it is paused until `ferry schedule unpause`",
                    (false, true) => "its first backup is taken at the first cron time",
                    (false, false) => "its first backup is taken now",
                };
                eprintln!(
                    "schedule {name} created; {first}. `ferry schedule describe {name}` shows its backups"
                );
                Ok(ExitCode::SUCCESS)
            }
            ScheduleCommand::Get { name } => show(global, &schedules, name.as_deref()).await,
            ScheduleCommand::Describe { name } => {
                let schedule = get(&schedules, &name).await?;
                describe(global, &schedule)?;
                if global.format() == OutputFormat::Text {
                    let backups: Api<Backup> = Api::namespaced(client.clone(), &cluster.namespace);
                    let selector = format!("{SCHEDULE_LABEL}={name}");
                    let mut taken = backups
                        .list(&ListParams::default().labels(&selector))
                        .await?
                        .items;
                    taken.sort_by_key(|backup| backup.meta().creation_timestamp.clone());
                    println!("\nBackups:");
                    print_objects(global, &taken)?;
                }
                Ok(ExitCode::SUCCESS)
            }
            ScheduleCommand::Pause { name } => set_paused(&schedules, &name, true).await,
            ScheduleCommand::Unpause { name } => set_paused(&schedules, &name, false).await,
            ScheduleCommand::Delete { name, confirm } => {
                get(&schedules, &name).await?;
                if !confirm {
                    bail!(
                        "deleting schedule {name} stops its backups (the backups it took stay); pass --confirm to go on"
                    );
                }
                schedules.delete(&name, &Default::default()).await?;
                eprintln!(
                    "deleted schedule {name}; the backups it took stay (`ferry backup get` lists them, `ferry backup delete` removes one)"
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn set_paused(
    schedules: &Api<Schedule>,
    name: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let schedule = get(schedules, name).await?;
    let patch = serde_json::json!({"spec": {"paused": paused}});
    schedules
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    match (paused, schedule.spec.skip_immediately) {
        (true, _) => eprintln!(
            "schedule {name} paused; no backups are taken until `ferry schedule unpause {name}`"
        ),
        (false, true) => {
            eprintln!("schedule {name} unpaused; its next backup is taken at the next cron time")
        }
        (false, false) => eprintln!(
            "schedule {name} unpaused; if cron times went by while it was paused, one backup catches up on them now"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

impl Shown for Schedule {
    const NOUN: &str = "schedule";
    const COLUMNS: Columns<Schedule> = Columns {
        header: &[
            "NAME",
            "STATUS",
            "SCHEDULE",
            "TIME ZONE",
            "LAST BACKUP",
            "LAST SUCCESSFUL",
            "NEXT RUN",
        ],
        row: schedule_row,
    };
}

fn schedule_row(schedule: &Schedule) -> Vec<String> {
    let status = schedule.status.clone().unwrap_or_default();
    vec![
        schedule.name_any(),
        status
            .phase
            .map(|phase| enum_name(&phase))
            .unwrap_or_else(|| "New".into()),
        schedule.spec.schedule.clone(),
        schedule
            .spec
            .time_zone
            .clone()
            .unwrap_or_else(|| "UTC".into()),
        time(status.last_backup.as_ref()),
        time(status.last_successful_backup.as_ref()),
        time(status.next_run.as_ref()),
    ]
}
