//! Log set-up. Started by systemd with stderr connected to the journal (`JOURNAL_STREAM`
//! names that stream's device and inode), vscsid logs through journald's native protocol:
//! the level becomes the PRIORITY, each field its own journal field (`LUN=`, `TARGET_ID=`,
//! `PORTAL=` ...) and `VM=` names the VM on every line. Otherwise it logs plain text to
//! stderr. A write that fails (stderr a closed pipe) drops the line: logging never panics
//! and never takes a thread down with it.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where the log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDestination {
    Journal,
    Stderr,
}

/// Installs the process's logger; `vm_name` tags every journal entry (`VM=`). The level
/// comes from `VSCSID_LOG` (default `info`).
pub fn init_logging(vm_name: &str) -> LogDestination {
    let filter =
        || EnvFilter::try_from_env("VSCSID_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_the_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("vscsid".into())
                .with_priority_mappings(tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                })
                .with_custom_fields([("VM", vm_name)]);
            tracing_subscriber::registry()
                .with(filter())
                .with(layer)
                .init();
            return LogDestination::Journal;
        }
        // No journald to talk to: stderr still reaches the journal as plain text.
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // The default reports a failed write with eprintln!, which panics when stderr is
        // a closed pipe: the logging thread (the signal thread, a worker) would die.
        .log_internal_errors(false)
        .init();
    LogDestination::Stderr
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds
/// its `device:inode`, which must match stderr itself (a child whose stderr was redirected
/// inherits the variable, not the stream).
fn stderr_is_the_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat into `st`, which lives across the call.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return false;
    }
    journal_stream_is(&value, st.st_dev, st.st_ino)
}

/// Whether `JOURNAL_STREAM`'s value `device:inode` names the given file.
fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_stream_must_be_stderr_itself() {
        assert!(journal_stream_is("8:1234", 8, 1234));
        assert!(!journal_stream_is("8:1234", 8, 1235));
        assert!(!journal_stream_is("9:1234", 8, 1234));
        assert!(!journal_stream_is("8", 8, 1234));
        assert!(!journal_stream_is("x:1234", 8, 1234));
        assert!(!journal_stream_is("", 0, 0));
    }
}
