//! libpq `key=value` connection strings, split the way postgres_fdw wants them: credentials
//! go to the user mapping, everything else to the foreign server.

use crate::pg::error::SqlError;
use pgrx::prelude::PgSqlErrorCode;

/// Errors name an option only when it is one libpq or postgres_fdw knows: any other word of
/// a connection string may be a piece of a password (one with a space, say), and messages
/// end up in server logs. Other words are named by their position.
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum ConninfoError {
    #[error("invalid connection string: {0}")]
    Syntax(String),
    #[error("invalid connection string: word {0} is not a connection option")]
    UnknownOption(usize),
    #[error("connection string option \"{0}\" is not supported by synclink")]
    Unsupported(String),
    #[error("connection string option \"{0}\" is given twice")]
    Duplicate(String),
}

impl SqlError for ConninfoError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
    }
    fn hint(&self) -> Option<String> {
        Some(match self {
            ConninfoError::Syntax(_) => "Write it as libpq key=value pairs, e.g. 'host=db2 port=5432 dbname=shop user=sync password=secret'; quote values with spaces in single quotes: password='two words'.".into(),
            ConninfoError::UnknownOption(_) => "Use libpq's connection options (host, port, dbname, user, password, passfile, sslmode, …); quote values with spaces in single quotes: password='two words'.".into(),
            ConninfoError::Unsupported(_) => "synclink sets client_encoding, fallback_application_name and replication itself; leave them out.".into(),
            ConninfoError::Duplicate(_) => "Give each option once.".into(),
        })
    }
}

crate::pg::error::reported_as_sql_error!(ConninfoError);

/// Options that belong to the user mapping (postgres_fdw refuses them on a server).
const MAPPING_KEYS: &[&str] = &["user", "password", "sslcert", "sslkey", "sslpassword"];
const SECRET_KEYS: &[&str] = &["password", "sslpassword"];
/// libpq's connection options (PostgreSQL 15) and postgres_fdw's server options.
const KNOWN_KEYS: &[&str] = &[
    "service",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "replication",
    "target_session_attrs",
    "use_remote_estimate",
    "fdw_startup_cost",
    "fdw_tuple_cost",
    "extensions",
    "updatable",
    "truncatable",
    "fetch_size",
    "batch_size",
    "async_capable",
    "parallel_commit",
    "keep_connections",
];
const REFUSED_KEYS: &[&str] = &[
    "client_encoding",
    "fallback_application_name",
    "replication",
];

/// Defaults that keep a dead peer from hanging a writer: libpq has no connect timeout by
/// default, and statement_timeout cannot interrupt a blocking connect.
const SERVER_DEFAULTS: &[(&str, &str)] = &[
    ("connect_timeout", "5"),
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
];

#[derive(Debug, Default, PartialEq)]
pub struct Conninfo {
    pub server: Vec<(String, String)>,
    pub mapping: Vec<(String, String)>,
}

impl Conninfo {
    pub fn parse(input: &str) -> Result<Conninfo, ConninfoError> {
        let trimmed = input.trim_start();
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            return Err(ConninfoError::Syntax("URIs are not accepted".into()));
        }
        let mut out = Conninfo::default();
        for (key, value) in pairs(input)? {
            if REFUSED_KEYS.contains(&key.as_str()) {
                return Err(ConninfoError::Unsupported(key));
            }
            let seen = out
                .server
                .iter()
                .chain(out.mapping.iter())
                .any(|(k, _)| *k == key);
            if seen {
                return Err(ConninfoError::Duplicate(key));
            }
            if MAPPING_KEYS.contains(&key.as_str()) {
                out.mapping.push((key, value));
            } else {
                out.server.push((key, value));
            }
        }
        for (key, value) in SERVER_DEFAULTS {
            if !out.server.iter().any(|(k, _)| k == key) {
                out.server.push((key.to_string(), value.to_string()));
            }
        }
        Ok(out)
    }

    /// The connection string as it may be shown anywhere: secrets left out.
    pub fn display(&self) -> String {
        self.server
            .iter()
            .chain(self.mapping.iter())
            .filter(|(k, _)| !SECRET_KEYS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", quote_value(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Tokenise `key = value` pairs the way libpq's conninfo_parse does.
fn pairs(input: &str) -> Result<Vec<(String, String)>, ConninfoError> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut word = 0;
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        word += 1;
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        if !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(ConninfoError::UnknownOption(word));
        }
        skip_ws(&mut i);
        if i >= chars.len() || chars[i] != '=' {
            return Err(ConninfoError::Syntax(format!(
                "missing \"=\" after \"{key}\""
            )));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ConninfoError::Syntax(format!(
                            "unterminated quoted value for \"{key}\""
                        )))
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(v: &'a [(String, String)], k: &str) -> Option<&'a str> {
        v.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn splits_credentials_from_server_options() {
        let c = Conninfo::parse("host=127.0.0.1 port=5434 dbname=shop user=sync password=s3cret")
            .unwrap();
        assert_eq!(get(&c.server, "host"), Some("127.0.0.1"));
        assert_eq!(get(&c.server, "dbname"), Some("shop"));
        assert_eq!(get(&c.mapping, "user"), Some("sync"));
        assert_eq!(get(&c.mapping, "password"), Some("s3cret"));
        assert_eq!(get(&c.server, "password"), None);
        assert_eq!(get(&c.server, "connect_timeout"), Some("5"));
    }

    #[test]
    fn keeps_a_given_connect_timeout() {
        let c = Conninfo::parse("host=h connect_timeout=2").unwrap();
        assert_eq!(get(&c.server, "connect_timeout"), Some("2"));
        assert_eq!(
            c.server
                .iter()
                .filter(|(k, _)| k == "connect_timeout")
                .count(),
            1
        );
    }

    #[test]
    fn quoted_values_and_escapes() {
        let c = Conninfo::parse("host = 'my host' password='it\\'s a \\\\ secret' dbname=a\\ b")
            .unwrap();
        assert_eq!(get(&c.server, "host"), Some("my host"));
        assert_eq!(get(&c.mapping, "password"), Some("it's a \\ secret"));
        assert_eq!(get(&c.server, "dbname"), Some("a b"));
    }

    #[test]
    fn display_never_shows_secrets() {
        let c = Conninfo::parse("host=h user=u password='p w' sslpassword=x").unwrap();
        let shown = c.display();
        assert!(
            !shown.contains("p w") && !shown.contains("password"),
            "{shown}"
        );
        assert!(shown.contains("host=h") && shown.contains("user=u"));
    }

    macro_rules! rejects {
        ($($name:ident: $input:expr => $pat:pat),* $(,)?) => {
            $(#[test] fn $name() {
                let err = Conninfo::parse($input).unwrap_err();
                assert!(matches!(err, $pat), "{err:?}");
                assert!(!err.to_string().contains("hunter2"), "secret leaked: {err}");
            })*
        };
    }

    rejects! {
        rejects_missing_equals: "host localhost" => ConninfoError::Syntax(_),
        rejects_unterminated_quote: "password='hunter2" => ConninfoError::Syntax(_),
        rejects_uri: "postgresql://u:hunter2@h/db" => ConninfoError::Syntax(_),
        rejects_client_encoding: "client_encoding=latin1" => ConninfoError::Unsupported(_),
        rejects_duplicate: "host=a host=b" => ConninfoError::Duplicate(_),
        rejects_bad_key: "ho;st=a" => ConninfoError::UnknownOption(1),
        rejects_unknown_key: "host=a hunter2=x" => ConninfoError::UnknownOption(2),
        password_with_a_space_is_not_echoed: "host=h password=my hunter2 dbname=d" => ConninfoError::UnknownOption(3),
    }
}
