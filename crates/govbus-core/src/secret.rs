//! Secrets read from a file or the environment, never from a config file
//! itself, and never printed.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a secret comes from: `{ file = "…" }` (its contents, without a
/// trailing newline) or `{ env = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// A file's contents (rotation: replace the file, restart the agent).
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "file {}", p.display()),
            Self::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// A password or token, read when its config is loaded. `Debug` and
/// `Display` show where it came from, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    source: SecretSource,
    value: String,
}

/// A secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file is missing or unreadable.
    #[error("cannot read the secret in {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The variable is unset or not UTF-8.
    #[error("the secret's environment variable {0} is not set")]
    Env(String),
    /// The value is empty.
    #[error("the secret in {0} is empty")]
    Empty(String),
}

impl Secret {
    /// Reads the secret from `source`.
    pub fn load(source: SecretSource) -> Result<Self, SecretError> {
        let value = match &source {
            SecretSource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| SecretError::File {
                    path: p.display().to_string(),
                    source: e,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            SecretSource::Env(v) => std::env::var(v).map_err(|_| SecretError::Env(v.clone()))?,
        };
        if value.is_empty() {
            return Err(SecretError::Empty(source.to_string()));
        }
        Ok(Self { source, value })
    }

    /// A secret held in memory (tests, generated credentials).
    pub fn literal(value: impl Into<String>) -> Self {
        Self {
            source: SecretSource::Env("(given in memory)".into()),
            value: value.into(),
        }
    }

    /// The value, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where it came from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, value hidden)", self.source)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(secret from {})", self.source)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

/// Reads `{ file = … }` or `{ env = … }`; refuses a secret written in the
/// config itself without repeating it in the error.
struct SecretVisitor;

const WRITE_IT: &str =
    "a secret is not written in a config file: write `{ file = \"…\" }` or `{ env = \"…\" }`";

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{ file = \"…\" } or { env = \"…\" }")
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Secret, E> {
        Err(E::custom(WRITE_IT))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
        use serde::de::Error;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(WRITE_IT));
        };
        let value: String = map.next_value()?;
        if map.next_key::<String>()?.is_some() {
            return Err(A::Error::custom("a secret has one source: `file` or `env`"));
        }
        let source = match key.as_str() {
            "file" => SecretSource::File(value.into()),
            "env" => SecretSource::Env(value),
            other => {
                return Err(A::Error::custom(format!(
                    "a secret comes from `file` or `env`, not `{other}`"
                )))
            }
        };
        Secret::load(source).map_err(A::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        password: Secret,
    }

    #[test]
    fn a_secret_is_read_from_its_file_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("govbus-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cr3t-value\n").unwrap();
        let text = format!("password = {{ file = {:?} }}", f.display().to_string());
        let c: Conf = toml::from_str(&text).unwrap();
        assert_eq!(c.password.expose(), "s3cr3t-value");
        let shown = format!("{c:?} {}", c.password);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains(&f.display().to_string()), "{shown}");
        // Written back as where it comes from, not its value.
        let back = toml::to_string(&c.password).unwrap_or_default()
            + &serde_json::to_string(&c.password).unwrap();
        assert!(!back.contains("s3cr3t"), "{back}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_secret_is_refused_naming_where_it_was_looked_for() {
        let e = toml::from_str::<Conf>("password = { env = \"GOVBUS_TEST_UNSET_SECRET_VAR\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("GOVBUS_TEST_UNSET_SECRET_VAR is not set"), "{e}");
        let e = toml::from_str::<Conf>("password = { file = \"/nonexistent/pw\" }")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read the secret in /nonexistent/pw"),
            "{e}"
        );
        // (A TOML parse error quotes the line; govbus reads its files
        // through `config`, whose errors do not.)
        let e = serde_json::from_str::<Conf>(r#"{"password": "plain-secret"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not written in a config file") && !e.contains("plain-secret"),
            "{e}"
        );
    }
}

/// Words that make a key a secret's (in a URL's query, a key=value
/// connection string, a configuration path).
const SECRET_WORDS: [&str; 6] = ["password", "secret", "token", "key", "sig", "credential"];

/// Whether a key (`password`, `sslpassword`, `api_key`, …) names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| k.contains(w))
}

/// `text` with every secret it may hold masked as `***`: the password of
/// a URL's user info (`postgres://u:pw@h` → `postgres://u:***@h`), the
/// value of a secret query parameter (`?token=…`), and the value of a
/// secret key in a key=value connection string (`password=… ` or
/// `password='…'`). For logs, errors and `govbus config show`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    // User info of a URL.
    if let (Some(s), Some(at)) = (out.find("://"), out.rfind('@')) {
        if at > s {
            let user = &out[s + 3..at];
            if let Some((name, _)) = user.split_once(':') {
                out = format!("{}{name}:***{}", &out[..s + 3], &out[at..]);
            }
        }
    }
    // key=value pairs, in a query (`&`-separated) or a connection string
    // (space-separated, values perhaps quoted).
    let mut masked = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(eq) = rest.find('=') {
        let before = &rest[..eq];
        // After the separator, which may be more than one byte (a
        // no-break space): found by the fuzzer.
        let key_start = before
            .char_indices()
            .rev()
            .find(|(_, c)| *c == '&' || *c == '?' || *c == ';' || c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let key = &before[key_start..];
        masked.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        if is_secret_key(key) && !key.is_empty() {
            let end = if let Some(q) = rest.strip_prefix('\'') {
                // A quoted value: up to the closing quote (backslash escapes).
                let mut escaped = false;
                let mut close = q.len();
                for (i, c) in q.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '\'' if !escaped => {
                            close = i + 1;
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                (1 + close).min(rest.len())
            } else {
                rest.find(|c: char| c == '&' || c == ';' || c.is_whitespace())
                    .unwrap_or(rest.len())
            };
            masked.push_str("***");
            rest = &rest[end..];
        }
    }
    masked.push_str(rest);
    masked
}

#[cfg(test)]
mod redact_tests {
    use super::redact;

    #[test]
    fn urls_queries_and_connection_strings_lose_their_secrets() {
        for (given, want) in [
            (
                "postgres://gov:s3cret@db:5432/x",
                "postgres://gov:***@db:5432/x",
            ),
            (
                "https://hook.example/in?token=abc&x=1",
                "https://hook.example/in?token=***&x=1",
            ),
            (
                "host=db user=gov password=s3cret dbname=x",
                "host=db user=gov password=*** dbname=x",
            ),
            (
                "host=db password='a b\\' c' sslmode=require",
                "host=db password=*** sslmode=require",
            ),
            ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
            ("a=1 b=2", "a=1 b=2"),
            // A separator of two bytes before the key (the fuzzer's find).
            (
                "host=h\u{a0}password='a b' x=1",
                "host=h\u{a0}password=*** x=1",
            ),
        ] {
            assert_eq!(redact(given), want, "{given}");
        }
    }
}

/// Writes a secret to `path`, readable by its owner only from the moment
/// the file exists (created with mode 0600; an existing file is made 0600
/// before it is truncated and written).
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
