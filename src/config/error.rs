//! The one home of a refused configuration: [`ConfigError`], always one line.

use std::path::PathBuf;

/// Why a configuration was refused. Its `Display` is always one line that starts
/// with `config: ` and names what is wrong: a dotted key, a line of the file, or
/// the file itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config: {}: {source}", one_line(&path.display().to_string()))]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config: {}{message}", line_prefix(*.line))]
    Syntax {
        /// The 1-based line of the error, when the parser gives one.
        line: Option<usize>,
        /// The parser's message, first line only.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type or out of range.
    #[error("config: {key}: {reason}")]
    Invalid {
        /// The dotted key (`proxy.upstream`), or the environment variable the
        /// value came from.
        key: String,
        /// Why its value was refused.
        reason: String,
    },
}

impl ConfigError {
    /// The dotted key an [`Invalid`](ConfigError::Invalid) error names.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

pub(super) fn line_prefix(line: Option<usize>) -> String {
    line.map(|n| format!("line {n}: ")).unwrap_or_default()
}

/// The one home of [`ConfigError::Invalid`]: the key and the reason are
/// echoed from the file (an unknown key, a TLS path), so their control
/// characters are escaped to keep the message on one line.
pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: one_line(&key.into()),
        reason: one_line(&reason.into()),
    }
}

/// `text` with each control character (`\n`, `\r`, NUL, ...) written as its
/// Rust escape, so that an echoed name cannot break a message into lines.
pub(super) fn one_line(text: &str) -> String {
    if !text.contains(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
