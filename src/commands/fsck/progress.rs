//! The command line's progress bar for a run of fsck.

use std::time::Duration;

use super::FsckEvent;

/// The command line's view of a run: an indicatif bar (files and bytes checked, rate,
/// ETA) on a terminal, nothing otherwise.
pub struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    contents: bool,
    files: u64,
    done: u64,
    bytes: u64,
    scanned: u64,
}

impl ProgressView {
    pub fn new(terminal: bool, contents: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        ProgressView {
            bar,
            contents,
            files: 0,
            done: 0,
            bytes: 0,
            scanned: 0,
        }
    }

    pub fn event(&mut self, event: FsckEvent) {
        let Some(bar) = &self.bar else {
            return;
        };
        match event {
            FsckEvent::Scanned { entries } => {
                self.scanned += entries;
                bar.set_message(format!("scanning the tree: {} entries", self.scanned));
            }
            FsckEvent::Planned { files, bytes } => {
                self.files = files;
                bar.disable_steady_tick();
                let template = match bytes {
                    Some(bytes) => {
                        bar.set_length(bytes);
                        "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                         {binary_bytes_per_sec} ETA {eta}"
                    }
                    None => {
                        bar.set_length(files);
                        "files {pos}/{len}, {msg} [{wide_bar}] {per_sec} ETA {eta}"
                    }
                };
                bar.set_style(
                    indicatif::ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.reset_elapsed();
                bar.set_position(0);
                self.update_message();
            }
            FsckEvent::Bytes { bytes } => {
                self.bytes += bytes;
                bar.inc(bytes);
            }
            FsckEvent::File { bytes } => {
                self.done += 1;
                if !self.contents {
                    self.bytes += bytes;
                    bar.inc(1);
                }
                if self.done.is_multiple_of(256) || self.done == self.files {
                    self.update_message();
                }
            }
        }
    }

    fn update_message(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(match self.contents {
                true => format!("files {}/{}", self.done, self.files),
                false => format!("{}", indicatif::BinaryBytes(self.bytes)),
            });
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
