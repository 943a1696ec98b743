//! Reading TOML configuration files (coordinator and worker) with errors that name the file
//! and, through the TOML parser, the offending field and position.

use std::path::{Path, PathBuf};

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Reads and deserialises a TOML file.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Invalid { path: path.into(), message: toml_message(&e) })
}

/// A TOML parser error as shown to users: the parser's text (position, the offending line with
/// a caret, what is wrong) with each line capped, so a file with a megabyte-long line gives a
/// readable error rather than repeating the line.
pub fn toml_message(e: &toml::de::Error) -> String {
    e.to_string().trim_end().lines().map(crate::text::cap_quote).collect::<Vec<_>>().join("\n")
}
