//! `xtsfs upgrade`: a format 1 volume to format 2, with a progress bar on a terminal.

use crate::config::{Settings, UpgradeConfig};
use crate::error::Error;
use crate::volume::upgrade;

pub fn run(c: &UpgradeConfig, settings: &Settings) -> Result<(), Error> {
    use std::io::IsTerminal;
    let mut view = upgrade::ProgressView::new(std::io::stderr().is_terminal());
    let report = upgrade::upgrade(&c.backing, &settings.keys, c.key.as_ref(), &mut |event| {
        view.event(event)
    });
    view.finish();
    println!("{}", upgrade::summary(&report?, &c.backing));
    Ok(())
}
