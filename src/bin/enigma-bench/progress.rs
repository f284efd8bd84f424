//! What the generator shows while it runs: a progress bar on a terminal, per-step lines on
//! stderr otherwise, nothing with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress bar on a terminal, per-step lines on stderr otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    pub fn new(show_bar: bool, quiet: bool) -> Progress {
        let bar = show_bar.then(|| {
            // Hidden until the first phase starts, so no empty bar is drawn.
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
            let style = ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
                .expect("valid template");
            bar.set_style(style);
            bar
        });
        Progress { bar, quiet }
    }

    pub fn start(&self, prefix: &str, len: u64) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_prefix(prefix.to_string());
            bar.set_length(len);
            bar.set_position(0);
            if bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        }
    }

    pub fn set(&self, pos: u64, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(message.to_string());
        }
    }

    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
