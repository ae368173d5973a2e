//! The words every deploy file shares, below the catalog and the reports
//! that both read them: a dataset's id, what went wrong in which file (and
//! on which line), and a directory's TOML files in name order.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A problem with a deploy file. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for its kind (the message carries the line).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What is wrong, with the line and column when known.
        message: String,
    },
    /// The file is well formed but says something wrong.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: String,
        /// The line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// `<owner>.<name>`, e.g. `bca.residents`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DatasetId {
    /// The owning agency, e.g. `bca`.
    pub owner: String,
    /// The dataset's name, e.g. `residents`.
    pub name: String,
}

impl DatasetId {
    /// `owner.name`.
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.owner, self.name)
    }
}

impl std::str::FromStr for DatasetId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        match s.split_once('.') {
            Some((o, n)) if valid(o) && valid(n) => Ok(Self::new(o, n)),
            _ => Err(format!(
                "dataset `{s}` is not of the form <owner>.<name> (lowercase letters, digits, _)"
            )),
        }
    }
}

impl TryFrom<String> for DatasetId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DatasetId> for String {
    fn from(d: DatasetId) -> Self {
        d.to_string()
    }
}

/// The `*.toml` files of `dir`, in name order.
pub(crate) fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CatalogError::Io {
        file: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The 1-based line on which `key = ...` stands, if any.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}
