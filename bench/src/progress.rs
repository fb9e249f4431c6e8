//! Progress on stderr while a run goes, hidden for `--json` and when stderr is not a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a bar is redrawn at most.
const REDRAW_PER_SECOND: u8 = 10;

/// Makes progress bars, or hidden ones.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    visible: bool,
}

impl Progress {
    /// Bars on stderr unless `quiet` or stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        Self {
            visible: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// A bar counting to `total`.
    pub fn bar(&self, label: &str, total: u64) -> ProgressBar {
        self.styled(
            label,
            total,
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
    }

    /// A bar for a run of fixed length, counted in milliseconds; `msg` carries the requests.
    pub fn timer(&self, label: &str, length: Duration) -> ProgressBar {
        let total = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        self.styled(
            label,
            total,
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {msg}",
        )
    }

    /// A line with a message and no bar.
    pub fn message(&self, label: &str, text: &str) -> ProgressBar {
        let bar = self.styled(label, 0, "{prefix:>12} {spinner} {msg}");
        bar.set_message(text.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }

    fn styled(&self, label: &str, total: u64, template: &str) -> ProgressBar {
        if !self.visible {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(
            Some(total),
            ProgressDrawTarget::stderr_with_hz(REDRAW_PER_SECOND),
        );
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_owned());
        bar
    }
}
