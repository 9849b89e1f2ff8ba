//! Progress of a backup or restore as a stream of events: the CLI draws a progress bar from them,
//! the agent forwards them over gRPC.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// Totals are known (a scan finished); before this event they are zero.
    Totals {
        files: u64,
        bytes: u64,
    },
    Update(ProgressSnapshot),
    /// A file or directory could not be read or written; the operation goes on.
    Error {
        path: String,
        message: String,
    },
    Done(ProgressSnapshot),
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProgressSnapshot {
    pub files_done: u64,
    pub bytes_done: u64,
    pub total_files: u64,
    pub total_bytes: u64,
    pub bytes_per_second: f64,
    /// Unknown until totals are known and some bytes are done.
    pub eta: Option<Duration>,
    pub elapsed: Duration,
}

pub trait ProgressSink: Send + Sync {
    fn event(&self, event: ProgressEvent);
}

impl<F: Fn(ProgressEvent) + Send + Sync> ProgressSink for F {
    fn event(&self, event: ProgressEvent) {
        self(event)
    }
}

/// Counters the workers bump, and a ticker thread that turns them into `Update` events.
pub(crate) struct Tracker {
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
    started: Instant,
    sink: Option<Arc<dyn ProgressSink>>,
    stop: AtomicBool,
}

impl Tracker {
    pub fn new(sink: Option<Arc<dyn ProgressSink>>) -> Arc<Tracker> {
        Arc::new(Tracker {
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            started: Instant::now(),
            sink,
            stop: AtomicBool::new(false),
        })
    }

    pub fn wants_events(&self) -> bool {
        self.sink.is_some()
    }

    pub fn emit(&self, event: ProgressEvent) {
        if let Some(sink) = &self.sink {
            sink.event(event);
        }
    }

    pub fn file_done(&self, bytes: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let elapsed = self.started.elapsed();
        let bytes_done = self.bytes_done.load(Ordering::Relaxed);
        let total_bytes = self.total_bytes.load(Ordering::Relaxed);
        let rate = bytes_done as f64 / elapsed.as_secs_f64().max(1e-3);
        let eta = (total_bytes > 0 && bytes_done > 0 && rate > 0.0)
            .then(|| Duration::from_secs_f64(total_bytes.saturating_sub(bytes_done) as f64 / rate));
        ProgressSnapshot {
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done,
            total_files: self.total_files.load(Ordering::Relaxed),
            total_bytes,
            bytes_per_second: rate,
            eta,
            elapsed,
        }
    }

    /// Emits an update every `period` until [`Tracker::finish`].
    pub fn start_ticker(self: &Arc<Self>, period: Duration) -> Option<std::thread::JoinHandle<()>> {
        self.sink.as_ref()?;
        let tracker = self.clone();
        Some(std::thread::spawn(move || {
            while !tracker.stop.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                tracker.emit(ProgressEvent::Update(tracker.snapshot()));
            }
        }))
    }

    pub fn finish(&self, ticker: Option<std::thread::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = ticker {
            let _ = ticker.join();
        }
        self.emit(ProgressEvent::Done(self.snapshot()));
    }
}
