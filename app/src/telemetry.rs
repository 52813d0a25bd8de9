//! Where log lines go and how they look.
//!
//! - **Format** (`--log-format text|json`, `RIDES_LOG_FORMAT`, every command): `text` is
//!   tracing's human format; `json` is one JSON object per line with the event's fields at the
//!   top level (`timestamp`, `level`, `target`, `message`, and e.g. `fault`).
//! - **Level**: `info`, `debug` with `-vv`; `RUST_LOG` overrides both (tracing's `EnvFilter`).
//! - **Destination**: standard error, except for `rides demo`: its terminal shows a progress
//!   display and the verdict, and its service logs go to `demo.log` in its data directory
//!   ([`log_to_file`]); `-v` also shows them on the terminal. Until the demo knows its
//!   directory, lines are kept in memory and written to the file when it opens.
//!
//! A live progress display and log lines on the same terminal would garble each other:
//! [`set_progress`] registers the display, and terminal lines are then printed above it.
//! Warnings and errors are counted ([`counts`]) so that the demo can say how many the file
//! holds.

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::{Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// tracing's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What [`init`] sets up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The format.
    pub format: LogFormat,
    /// `-v` count: 1 shows the demo's logs on the terminal too, 2 and more log at debug.
    pub verbose: u8,
    /// The demo: logs go to a file ([`log_to_file`]); on the terminal only with `-v`.
    pub to_file: bool,
}

/// The most bytes kept in memory before the demo's log file is open (older lines are kept,
/// later ones dropped).
const MAX_BUFFERED: usize = 4 << 20;

enum FileState {
    /// No file yet: lines wait here.
    Buffer(Vec<u8>),
    /// Lines go to this file.
    File(std::fs::File),
}

/// The file destination of this process's log lines, once [`init`] made one.
static FILE: OnceLock<Mutex<FileState>> = OnceLock::new();
/// The live progress display that terminal lines must be printed above.
static PROGRESS: Mutex<Option<indicatif::MultiProgress>> = Mutex::new(None);
static WARNINGS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Installs the process's subscriber; call once, before anything logs.
pub fn init(opts: LogOptions) {
    let level = if opts.verbose >= 2 { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if opts.to_file {
        let _ = FILE.set(Mutex::new(FileState::Buffer(Vec::new())));
    }
    let to = Destinations {
        file: opts.to_file,
        terminal: !opts.to_file || opts.verbose >= 1,
    };
    // One layer for every destination: two formatting layers would share (and repeat) the
    // spans' recorded fields. Colours only where every line goes to a terminal.
    let ansi = !opts.to_file && std::io::stderr().is_terminal();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer(opts.format, move || to, ansi))
        .with(Counter)
        .try_init();
}

fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    }
}

/// Sends the log lines to the file at `path` (created, or truncated), starting with the lines
/// logged so far. Returns `None` when this process logs to no file (only `rides demo` does;
/// tests that run the demo in process do not).
///
/// # Errors
/// When the file cannot be created or written.
pub fn log_to_file(path: &Path) -> std::io::Result<Option<PathBuf>> {
    let Some(state) = FILE.get() else {
        return Ok(None);
    };
    let mut file = std::fs::File::create(path)?;
    let mut state = lock(state);
    if let FileState::Buffer(buffered) = &*state {
        file.write_all(buffered)?;
    }
    *state = FileState::File(file);
    Ok(Some(path.to_owned()))
}

/// Whether this process's log lines go to a file ([`log_to_file`]).
pub fn logs_to_file() -> bool {
    FILE.get().is_some()
}

/// Registers (or with `None` removes) the live progress display that terminal lines must be
/// printed above.
pub fn set_progress(display: Option<indicatif::MultiProgress>) {
    *lock(&PROGRESS) = display;
}

/// Warnings and errors logged so far by this process.
pub fn counts() -> (u64, u64) {
    (
        WARNINGS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed),
    )
}

/// Where each line goes: the demo's file (or the buffer before it opens), standard error
/// (above the progress display when one is registered), or both.
#[derive(Debug, Clone, Copy)]
struct Destinations {
    file: bool,
    terminal: bool,
}

impl Write for Destinations {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file
            && let Some(state) = FILE.get()
        {
            match &mut *lock(state) {
                FileState::Buffer(b) => {
                    if b.len() + buf.len() <= MAX_BUFFERED {
                        b.extend_from_slice(buf);
                    }
                }
                FileState::File(f) => f.write_all(buf)?,
            }
        }
        if self.terminal {
            let progress = lock(&PROGRESS).clone();
            match progress {
                Some(p) => p.suspend(|| std::io::stderr().write_all(buf))?,
                None => std::io::stderr().write_all(buf)?,
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.file
            && let Some(state) = FILE.get()
            && let FileState::File(f) = &mut *lock(state)
        {
            f.flush()?;
        }
        if self.terminal {
            std::io::stderr().flush()?;
        }
        Ok(())
    }
}

/// Counts warnings and errors that pass the filter.
struct Counter;

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        match *event.metadata().level() {
            Level::WARN => WARNINGS.fetch_add(1, Ordering::Relaxed),
            Level::ERROR => ERRORS.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}
