//! xtsfs: an AES-256-XTS encrypted FUSE filesystem whose volume data key is wrapped by a
//! platform-managed or customer-managed key.

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
pub mod mount;
pub mod process;
pub mod volume;

pub use error::{Error, ExitCode};
