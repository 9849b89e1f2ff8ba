//! The log of every `ferry` command, on stderr: text for people, or JSON lines for a log
//! pipeline (`--log-format json`, as the controller's and agents' manifests set it).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields};
use tracing_subscriber::fmt::{MakeWriter, SubscriberBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object a line, with the fields of the span it was logged in (a reconcile's
    /// backup or restore, an agent task's id) under `span`.
    Json,
}

/// Installs the log for the whole process; `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            // Colours for a terminal; escape codes in a file or `kubectl logs` are noise.
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => json(std::io::stderr).with_env_filter(filter).init(),
    }
}

/// JSON lines with the event's fields at the top level and the current span's (`backup`,
/// `restore`, `task`) under `span`, so that every line of a reconcile can be found by its name.
fn json<W>(
    writer: W,
) -> SubscriberBuilder<JsonFields, Format<Json>, tracing::level_filters::LevelFilter, W>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_backup_of_the_reconcile_they_are_logged_in() {
        let captured = Captured::default();
        let subscriber = json({
            let captured = captured.clone();
            move || captured.clone()
        })
        .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile", backup = %"nightly-20261126");
            let _in_reconcile = span.enter();
            tracing::info!(message = "backup started");
            tracing::warn!(message = "updating backup progress failed", error = %"timeout");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert_eq!(line["span"]["backup"], "nightly-20261126", "{line}");
            assert!(
                line["timestamp"].is_string() && line["level"].is_string(),
                "{line}"
            );
        }
        assert_eq!(lines[0]["message"], "backup started");
        assert_eq!(lines[1]["error"], "timeout");
    }
}
