//! Human-readable sizes and the progress bar.

use std::sync::Arc;

use ferry_mover::{ProgressEvent, ProgressSink};
use indicatif::{ProgressBar, ProgressStyle};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A progress bar on stderr fed by the data mover's events.
pub fn progress_bar(verb: &'static str) -> (ProgressBar, Arc<dyn ProgressSink>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(verb);
    let sink_bar = bar.clone();
    let sink = move |event: ProgressEvent| match event {
        ProgressEvent::Totals { bytes, .. } => sink_bar.set_length(bytes),
        ProgressEvent::Update(snapshot) | ProgressEvent::Done(snapshot) => {
            if snapshot.total_bytes > 0 {
                sink_bar.set_length(snapshot.total_bytes);
            }
            sink_bar.set_position(snapshot.bytes_done);
            sink_bar.set_message(format!("{verb} {} files", snapshot.files_done));
        }
        ProgressEvent::Error { path, message } => {
            sink_bar.println(format!("warning: {path}: {message}"))
        }
    };
    (bar, Arc::new(sink))
}
