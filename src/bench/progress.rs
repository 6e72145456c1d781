//! Owns the progress display on stderr (indicatif): a bar while
//! connecting, one while publishing, a spinner while probing and draining.
//! Off with `--quiet` or when stderr is not a terminal, so logs and CI
//! output stay clean; stdout (the report) is never touched.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The current bar, if any.
#[derive(Debug)]
pub struct Bars {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Bars {
    pub fn new(quiet: bool) -> Bars {
        Bars {
            enabled: !quiet && std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    fn replace(&mut self, bar: ProgressBar) {
        self.finish();
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }

    fn bar(&self, len: Option<u64>, template: &str) -> Option<ProgressBar> {
        if !self.enabled {
            return None;
        }
        let style =
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        Some(
            ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr())
                .with_style(style.progress_chars("=> ")),
        )
    }

    /// A bar of `len` steps with a label.
    pub fn start(&mut self, label: &str, len: u64) {
        let template =
            format!("{label:>10} [{{elapsed_precise}}] [{{bar:30}}] {{pos}}/{{len}} {{msg}}");
        if let Some(b) = self.bar(Some(len), &template) {
            self.replace(b);
        }
    }

    /// A spinner with a label.
    pub fn spin(&mut self, label: &str) {
        let template = format!("{label:>10} {{spinner}} [{{elapsed_precise}}] {{msg}}");
        if let Some(b) = self.bar(None, &template) {
            self.replace(b);
        }
    }

    pub fn set(&self, pos: u64, msg: String) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(msg);
        }
    }

    pub fn message(&self, msg: String) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
