//! xtsfs: an AES-256-XTS encrypted FUSE filesystem whose volume data key is wrapped by a
//! platform-managed or customer-managed key.

// No panic on an unexpected value outside tests: errors are returned, and what cannot fail
// is built so that no panic path exists. Tests may unwrap (clippy.toml); set here rather
// than in Cargo.toml's [lints], which would reach the integration tests' helpers too.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod error;
pub mod fs;
pub mod io_error;
pub mod keycheck;
pub mod keys;
pub mod live;
pub mod lock_file;
pub mod mount;
pub mod process;
pub mod volume;

pub use error::{Error, ExitCode};
