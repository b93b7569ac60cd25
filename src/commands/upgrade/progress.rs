//! The command line's view of an upgrade: a progress bar, and the summary.

use std::ops::ControlFlow;
use std::path::Path;

use super::{UpgradeEvent, UpgradeReport, UpgradeStatus};

/// The command line's view of a run: an indicatif bar (files, bytes, rate, ETA) on a
/// terminal, nothing while it runs otherwise; [`summary`] is printed either way.
pub struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    files: u64,
    done: u64,
}

impl ProgressView {
    pub fn new(terminal: bool) -> Self {
        ProgressView {
            bar: terminal.then(indicatif::ProgressBar::hidden),
            files: 0,
            done: 0,
        }
    }

    pub fn event(&mut self, event: UpgradeEvent<'_>) -> ControlFlow<()> {
        let Some(bar) = &self.bar else {
            return ControlFlow::Continue(());
        };
        match event {
            UpgradeEvent::Planned(plan) => {
                self.files = plan.files;
                bar.set_length(plan.bytes);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                         {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_message(format!("files 0/{}", self.files));
            }
            UpgradeEvent::Bytes { bytes, .. } => bar.inc(bytes),
            UpgradeEvent::Named { .. } => {}
            UpgradeEvent::File { .. } => {
                self.done += 1;
                bar.set_message(format!("files {}/{}", self.done, self.files));
            }
        }
        ControlFlow::Continue(())
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One line saying what a run did.
pub fn summary(report: &UpgradeReport, backing: &Path) -> String {
    let what = match report.status {
        UpgradeStatus::AlreadyFormat2 => {
            return format!(
                "volume {} in {} is already format 2; nothing to do",
                report.volume_id,
                backing.display()
            )
        }
        UpgradeStatus::Upgraded => "upgraded to format 2",
        UpgradeStatus::Stopped => "stopped before the end; still format 1 (run upgrade again)",
    };
    format!(
        "volume {} in {}: {what}: {} files converted ({}), {} already format 2, {} empty, in {}",
        report.volume_id,
        backing.display(),
        report.converted,
        indicatif::BinaryBytes(report.bytes),
        report.already,
        report.empty,
        format_args!("{:.2?}", report.elapsed),
    )
}
