// As in src/lib.rs: no panic on an unexpected value.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let result = xtsfs::cli::args(std::env::args_os().collect())
        .and_then(|args| xtsfs::cli::Opts::parse_from(args).into_config())
        .and_then(xtsfs::commands::run);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtsfs: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("xtsfs: hint: {hint}");
            }
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}
