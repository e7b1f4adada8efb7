//! Progress bars for sampling and denoising.

use indicatif::{ProgressBar, ProgressStyle};
use itarflow::sample::Progress;

/// A bar over `total` network evaluations, drawn on stderr (hidden when it is not a terminal).
pub fn bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:32}] {pos}/{len} {msg} ({elapsed} < {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// Advances `bar` from a sampler progress report.
pub fn report(bar: &ProgressBar, p: Progress) {
    match p {
        Progress::Invert { layer, layers, .. } => bar.set_message(format!("invert layer {}/{}", layer + 1, layers)),
        Progress::Denoise { step, steps } => bar.set_message(format!("denoise {step}/{steps}")),
    }
    bar.inc(1);
}
