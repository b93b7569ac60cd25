//! `xtsfs fsck`: the offline check, its report on stdout and its exit code.

use crate::config::{FsckConfig, Settings};
use crate::error::Error;
use crate::volume;

/// `xtsfs fsck`: the report on stdout; exits with its code (docs in fsck::HELP).
pub fn run(c: &FsckConfig, settings: &Settings) -> Result<(), Error> {
    use std::io::{IsTerminal, Write};
    use volume::fsck;
    let mut view = fsck::ProgressView::new(std::io::stderr().is_terminal(), c.options.contents);
    let report = fsck::fsck(
        &c.backing,
        &settings.keys,
        c.key.as_ref(),
        c.options,
        &mut |event| view.event(event),
    );
    view.finish();
    let report = report?;
    let text = match c.json {
        true => serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
        false => fsck::render(&report),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(Error::io("cannot write the report", "stdout"))?;
    match report.exit_code {
        0 => Ok(()),
        code => std::process::exit(code.into()),
    }
}
