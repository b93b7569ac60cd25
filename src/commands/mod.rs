//! What each subcommand does, given the validated [`Config`]: one module per command;
//! `mount` and `unmount` are [`crate::mount`]'s.

pub mod fsck;
mod init;
mod offline;
mod platform_key;
mod rewrap;
mod status;
pub mod upgrade;

use std::path::Path;

use crate::config::{Command, Config, Settings};
use crate::error::{printable, Error};
use crate::live::{self, LiveStatus};
use crate::mount;
use crate::process;

pub fn run(config: Config) -> Result<(), Error> {
    process::init_logging(config.verbosity);
    process::harden();
    let settings = &config.settings;
    // Errors quote header fields and KMS answers, which whoever wrote them controls: no
    // control characters reach the terminal.
    dispatch(config.command, settings).map_err(|e| Error::Rendered {
        code: e.exit_code(),
        message: printable(&e.to_string()),
        hint: e.hint().map(|h| printable(&h)),
    })
}

fn dispatch(command: Command, settings: &Settings) -> Result<(), Error> {
    match command {
        Command::Init(c) => init::run(&c, settings),
        Command::Status(c) => status::run(&c, settings),
        Command::Rewrap(c) => rewrap::run(&c, settings),
        Command::Upgrade(c) => upgrade::run(&c, settings),
        Command::Fsck(c) => fsck::run(&c, settings),
        Command::PlatformKey(action) => platform_key::run(action, &settings.keys),
        Command::Mount(c) => mount::mount(&c, settings),
        Command::Unmount(c) => mount::unmount(&c),
        Command::Print(bytes) => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&bytes)
                .map_err(Error::io("cannot write", "standard output"))
        }
    }
}

/// The live status of the daemon serving `backing`, if one is running.
fn live_status(backing: &Path, settings: &Settings) -> Option<LiveStatus> {
    let backing = backing.canonicalize().ok()?;
    LiveStatus::read(&live::status_path(&settings.run_dir, &backing))
}
