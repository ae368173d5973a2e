//! Connecting to PostgreSQL as libpq would: `sslmode` (`disable`,
//! `prefer`, the default, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert` honoured, in a URL's query or a key=value string; a URL
//! without a password takes it from `PGPASSWORD`, or from a password file
//! (`passfile`, `PGPASSFILE`, `~/.pgpass`), so that no password need be
//! written in a config file.

use std::str::FromStr;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, the server's certificate verified against `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the host name must match the certificate.
    VerifyFull,
}

/// A connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL or one of its TLS settings is wrong.
    #[error("PostgreSQL URL: {0}")]
    Url(String),
    /// TLS could not be set up (the CA file).
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
    /// PostgreSQL refused, or the TLS handshake failed (with the causes:
    /// the client's own message is only "error performing TLS handshake").
    #[error("{}", with_causes(.0))]
    Connect(#[from] postgres::Error),
}

fn with_causes(e: &postgres::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// `url` without libpq's TLS settings that the Rust client does not
/// parse, and those settings.
fn split(url: &str) -> Result<(String, SslMode, Option<String>, Option<String>), PgError> {
    let mut mode = None;
    let mut root = None;
    let mut passfile = None;
    let mut take = |k: &str, v: &str| -> Result<bool, PgError> {
        match k {
            "sslmode" => {
                mode = Some(match v {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(PgError::Url(format!(
                            "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        )))
                    }
                });
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(v.to_string());
                Ok(true)
            }
            "passfile" => {
                passfile = Some(v.to_string());
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &govbus_http::percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for part in url.split_whitespace() {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if !take(k, v)? {
                kept.push(part);
            }
        }
        kept.join(" ")
    };
    let mode = mode.unwrap_or(SslMode::Prefer);
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root.is_none() {
        return Err(PgError::Url(
            "sslmode verify-ca and verify-full need `sslrootcert` (the CA that signed the server's certificate)".into(),
        ));
    }
    Ok((rest, mode, root, passfile))
}

/// The password a `.pgpass`-format file gives `cfg`'s first host, port,
/// database and user (`*` matches anything; `\:` is a colon).
fn from_passfile(text: &str, cfg: &postgres::Config) -> Option<String> {
    let host = match cfg.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg.get_user().unwrap_or_default().to_string();
    let db = cfg.get_dbname().unwrap_or(&user).to_string();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let hit = |f: &str, v: &str| f == "*" || f == v;
        if hit(&fields[0], &host)
            && hit(&fields[1], &port)
            && hit(&fields[2], &db)
            && hit(&fields[3], &user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Connects to `url` as libpq would with its `sslmode` and `sslrootcert`.
pub fn connect(url: &str) -> Result<postgres::Client, PgError> {
    let (rest, mode, root, passfile) = split(url)?;
    let mut cfg = postgres::Config::from_str(&rest).map_err(PgError::Connect)?;
    if cfg.get_password().is_none() {
        let file = passfile
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("PGPASSFILE").map(Into::into))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".pgpass"))
            });
        let password = std::env::var("PGPASSWORD").ok().or_else(|| {
            let text = std::fs::read_to_string(file?).ok()?;
            from_passfile(&text, &cfg)
        });
        if let Some(p) = password {
            cfg.password(p);
        }
    }
    if mode == SslMode::Disable {
        cfg.ssl_mode(postgres::config::SslMode::Disable);
        return Ok(cfg.connect(postgres::NoTls)?);
    }
    cfg.ssl_mode(if mode == SslMode::Prefer {
        postgres::config::SslMode::Prefer
    } else {
        postgres::config::SslMode::Require
    });
    let tls_err = |e: openssl::error::ErrorStack| PgError::Tls(e.to_string());
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(tls_err)?;
    match &root {
        Some(ca) if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            b.set_ca_file(ca)
                .map_err(|e| PgError::Tls(format!("sslrootcert {ca}: {e}")))?;
            b.set_verify(SslVerifyMode::PEER);
        }
        _ => b.set_verify(SslVerifyMode::NONE),
    }
    let mut tls = MakeTlsConnector::new(b.build());
    if mode != SslMode::VerifyFull {
        // verify-ca checks the chain only; the others check nothing.
        tls.set_callback(|c, _| {
            c.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(cfg.connect(tls)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_read_from_a_url_and_from_key_values() {
        let (rest, mode, root, _) =
            split("postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(
            (mode, root.as_deref()),
            (SslMode::VerifyFull, Some("/etc/ca.pem"))
        );
        let (rest, mode, _, _) = split("postgres://u:p@h/db").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("postgres://u:p@h/db", SslMode::Prefer)
        );
        let (rest, mode, _, _) = split("host=h user=u sslmode=require dbname=d").unwrap();
        assert_eq!(
            (rest.as_str(), mode),
            ("host=h user=u dbname=d", SslMode::Require)
        );
        assert!(split("postgres://h/db?sslmode=verify-full")
            .unwrap_err()
            .to_string()
            .contains("sslrootcert"));
        assert!(split("postgres://h/db?sslmode=sometimes")
            .unwrap_err()
            .to_string()
            .contains("sometimes"));
        let (_, _, _, pf) = split("postgres://u@h/db?passfile=/run/secrets/pgpass").unwrap();
        assert_eq!(pf.as_deref(), Some("/run/secrets/pgpass"));
    }

    #[test]
    fn a_password_file_is_read_as_libpq_reads_it() {
        let cfg = postgres::Config::from_str("postgres://govbus@db.p52:5433/p52").unwrap();
        let text =
            "# comment\nother:5433:p52:govbus:no\ndb.p52:*:p52:govbus:s\\:cret\n*:*:*:*:fallback\n";
        assert_eq!(from_passfile(text, &cfg).as_deref(), Some("s:cret"));
        let other = postgres::Config::from_str("postgres://x@h/d").unwrap();
        assert_eq!(from_passfile(text, &other).as_deref(), Some("fallback"));
        assert_eq!(from_passfile("h:1:d:u:p\n", &other), None);
    }
}
