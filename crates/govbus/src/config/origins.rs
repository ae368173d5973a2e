//! Where each configuration value came from: a file and line, or an
//! environment variable.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A file, at a line (1-based).
    File {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
    },
    /// An environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Dotted key paths (`router.kafka.bootstrap`; tables too) → where they
/// were set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins(BTreeMap<String, Origin>);

/// `GOVBUS__ROUTER__KAFKA__BOOTSTRAP` → `router.kafka.bootstrap`.
pub(crate) fn env_path(name: &str) -> Option<String> {
    let rest = name.strip_prefix("GOVBUS__")?;
    let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
    (!parts.iter().any(String::is_empty)).then(|| parts.join("."))
}

impl Origins {
    /// Records every key (and table) of the TOML `text` read from `path`.
    pub(crate) fn add_file(&mut self, path: &Path, text: &str) -> anyhow::Result<()> {
        let doc = toml_edit::ImDocument::parse(text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut add = |key: String, span: Option<std::ops::Range<usize>>| {
            if let Some(s) = span {
                self.0.entry(key).or_insert(Origin::File {
                    path: path.to_path_buf(),
                    line: line_of(s.start),
                });
            }
        };
        walk_table(doc.as_table(), "", &mut add);
        Ok(())
    }

    /// Records that the variable `name` set `path` (and any table above it
    /// that nothing else set).
    pub(crate) fn add_env(&mut self, path: &str, name: &str) {
        self.0
            .insert(path.to_string(), Origin::Env(name.to_string()));
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('.') {
            self.0
                .entry(parent.to_string())
                .or_insert_with(|| Origin::Env(name.to_string()));
            at = parent;
        }
    }

    /// Where the value at `path` was set, if a file or a variable set it
    /// (None: a default).
    pub(crate) fn get(&self, path: &str) -> Option<&Origin> {
        self.0.get(path)
    }

    /// Where the value at `path` (as serde_path_to_error prints it) or its
    /// nearest enclosing table came from, in words; and every variable set
    /// under it, since any of them may be the culprit.
    pub(crate) fn describe(&self, path: &str, file: Option<&Path>) -> String {
        let mut at = path;
        let found = loop {
            if let Some(o) = self.0.get(at) {
                break Some(o);
            }
            match at.rsplit_once('.') {
                Some((parent, _)) => at = parent,
                None => break None,
            }
        };
        let vars: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k.as_str() == path || k.starts_with(&format!("{path}.")))
            .filter_map(|(_, o)| match o {
                Origin::Env(n) => Some(n.as_str()),
                Origin::File { .. } => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out = match found {
            Some(o) => format!("set by {o}"),
            None => match file {
                Some(f) => format!("in {} or its defaults", f.display()),
                None => "in the defaults".into(),
            },
        };
        let extra: Vec<&str> = vars
            .into_iter()
            .filter(|v| !matches!(found, Some(Origin::Env(n)) if n == v))
            .collect();
        if !extra.is_empty() {
            out.push_str(&format!("; variables under it: {}", extra.join(", ")));
        }
        out
    }
}

fn walk_table(
    t: &toml_edit::Table,
    prefix: &str,
    add: &mut dyn FnMut(String, Option<std::ops::Range<usize>>),
) {
    for (k, item) in t.iter() {
        let path = join(prefix, k);
        let span = t.key(k).and_then(|key| key.span());
        match item {
            toml_edit::Item::Table(inner) => {
                add(path.clone(), inner.span().or(span));
                walk_table(inner, &path, add);
            }
            toml_edit::Item::Value(toml_edit::Value::InlineTable(inner)) => {
                add(path.clone(), span);
                walk_inline(inner, &path, add);
            }
            _ => add(path, span),
        }
    }
}

fn walk_inline(
    t: &toml_edit::InlineTable,
    prefix: &str,
    add: &mut dyn FnMut(String, Option<std::ops::Range<usize>>),
) {
    for (k, v) in t.iter() {
        let path = join(prefix, k);
        let span = t.key(k).and_then(|key| key.span());
        add(path.clone(), span);
        if let toml_edit::Value::InlineTable(inner) = v {
            walk_inline(inner, &path, add);
        }
    }
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tables_and_inline_tables_get_their_lines() {
        let mut o = Origins::default();
        let text = "deploy = \"d\"\n\n[consumer]\nregistry = \"r\"\nsink = { type = \"sqlite\", path = \"p\" }\n\n[router.kafka.options]\n\"linger.ms\" = \"5\"\n";
        o.add_file(Path::new("f.toml"), text).unwrap();
        let line = |k: &str| match o.get(k) {
            Some(Origin::File { line, .. }) => *line,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(line("deploy"), 1);
        assert_eq!(line("consumer"), 3);
        assert_eq!(line("consumer.registry"), 4);
        assert_eq!(line("consumer.sink.path"), 5);
        assert_eq!(line("router.kafka.options"), 7);
        assert_eq!(line("router.kafka.options.linger.ms"), 8);
    }

    #[test]
    fn a_variable_owns_the_tables_it_creates() {
        let mut o = Origins::default();
        let path = env_path("GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG").unwrap();
        assert_eq!(path, "router.kafka.options.debug");
        o.add_env(&path, "GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG");
        assert_eq!(
            o.describe("router.kafka", None),
            "set by environment variable GOVBUS__ROUTER__KAFKA__OPTIONS__DEBUG"
        );
        assert_eq!(env_path("GOVBUS_KAFKA_BOOTSTRAP"), None);
    }
}
