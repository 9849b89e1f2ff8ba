//! Ferry's controller.
//!
//! Reconciles Backup, Restore, Schedule, BackupStorageLocation and VolumeSnapshotLocation
//! resources: backs up the objects of an application and its volumes' snapshots, and restores them.
