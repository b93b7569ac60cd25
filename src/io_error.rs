//! An I/O error with what was being done and to which path: the one I/O error of the
//! crate, inside [`crate::error::Error::Io`] and [`crate::keys::KeyError::Io`] alike. A
//! leaf module, so that the key providers and the crate error can both use it.

use std::path::PathBuf;

/// An I/O error with what was being done, and to which path: the one I/O error of the
/// crate, inside `Error::Io` and `KeyError::Io` alike.
#[derive(Debug, thiserror::Error)]
#[error("{context} '{path}': {source}")]
pub struct IoError {
    pub context: String,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The one way to give an I/O error its context: `.map_err(io_error("cannot open", path))?`
/// in a function that returns `Error` or `KeyError`. It takes any error that converts to
/// an I/O error: a serde_json error, for a record that could not be encoded on its way to
/// `path`, is invalid data.
pub fn io_error<E: Into<std::io::Error>>(
    context: impl Into<String>,
    path: impl Into<PathBuf>,
) -> impl FnOnce(E) -> IoError {
    let (context, path) = (context.into(), path.into());
    move |source| IoError {
        context,
        path,
        source: source.into(),
    }
}
