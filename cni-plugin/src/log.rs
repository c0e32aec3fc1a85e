//! Log lines for one invocation, never on stdout (stdout is the CNI protocol). With `logFile`
//! every line is appended there; without, warnings and errors go to stderr, which the runtime
//! passes to its own log. A few plain `key=value` lines per pod do not warrant a tracing stack.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug)]
enum Sink {
    Stderr,
    File(File),
}

/// Where this invocation logs, and the fields every line carries.
#[derive(Debug)]
pub struct Log {
    sink: Sink,
    fields: String,
}

impl Log {
    /// Warnings and errors to stderr.
    pub fn stderr() -> Self {
        Self {
            sink: Sink::Stderr,
            fields: String::new(),
        }
    }

    /// Appends to `path`; when it cannot be opened, logs to stderr and says so there (a log file
    /// that cannot be written must not fail the pod).
    pub fn open(path: Option<&Path>) -> Self {
        let Some(path) = path else { return Self::stderr() };
        match OpenOptions::new().create(true).append(true).mode(0o640).open(path) {
            Ok(file) => Self {
                sink: Sink::File(file),
                fields: String::new(),
            },
            Err(error) => {
                let log = Self::stderr();
                log.warn(format_args!(
                    "cannot open logFile {}: {error}; logging to stderr",
                    path.display()
                ));
                log
            }
        }
    }

    /// Adds `key=value` to every later line; `value` must already be quoted if it needs it.
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> Self {
        use fmt::Write as _;
        let _ = write!(self.fields, " {key}={value}");
        self
    }

    pub fn info(&self, message: fmt::Arguments<'_>) {
        self.line(Level::Info, message);
    }

    pub fn warn(&self, message: fmt::Arguments<'_>) {
        self.line(Level::Warn, message);
    }

    pub fn error(&self, message: fmt::Arguments<'_>) {
        self.line(Level::Error, message);
    }

    fn line(&self, level: Level, message: fmt::Arguments<'_>) {
        if matches!(self.sink, Sink::Stderr) && level < Level::Warn {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // One write per line: appends from concurrent invocations do not interleave.
        let line = format!(
            "ts={}.{:03} level={} pid={}{} msg={:?}\n",
            now.as_secs(),
            now.subsec_millis(),
            level.as_str(),
            std::process::id(),
            self.fields,
            message.to_string(),
        );
        // Nowhere left to report a failed log write.
        let _ = match &self.sink {
            Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            Sink::File(file) => (&*file).write_all(line.as_bytes()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_gets_every_level_with_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cni.log");
        let log = Log::open(Some(&path)).with("cmd", "ADD").with("container", "\"abc\"");
        log.info(format_args!("first"));
        log.warn(format_args!("second \"quoted\"\nline"));
        let text = std::fs::read_to_string(&path).expect("log written");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains(" level=info pid="), "{text}");
        assert!(lines[0].ends_with(r#" cmd=ADD container="abc" msg="first""#), "{text}");
        assert!(lines[1].ends_with(r#"msg="second \"quoted\"\nline""#), "{text}");
    }

    #[test]
    fn unwritable_log_file_falls_back_to_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(Some(&dir.path().join("missing-dir/cni.log")));
        assert!(matches!(log.sink, Sink::Stderr));
    }
}
