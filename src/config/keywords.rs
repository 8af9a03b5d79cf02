//! rampart's own connection-string keywords (libpq's TLS keywords tokio-postgres does not read), taken
//! out of a URL or key=value string before tokio-postgres parses the rest; and the checks of what the
//! server would refuse every time.

use percent_encoding::percent_decode_str;

use crate::ConfigError;

use super::*;

/// The keywords rampart reads itself, because tokio-postgres knows none of them (`sslrootcert`,
/// `sslcert`, `sslkey`) or not all of their values (`sslmode`), and the environment variable of each.
pub(super) const OWN_KEYWORDS: [(&str, &str); 6] = [
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("channel_binding", "PGCHANNELBINDING"),
];

/// The values of [`OWN_KEYWORDS`] a connection string gave, in that order.
pub(super) type Keywords = [Option<String>; 6];

pub(super) fn keyword_index(key: &str) -> Option<usize> {
    OWN_KEYWORDS.iter().position(|(k, _)| *k == key)
}

/// What the server would refuse at every connect, or what would fail the same way every time: refused
/// here, named, instead of being retried as if the network were at fault.
pub(super) fn check_startup(pg: &tokio_postgres::Config) -> Result<(), ConfigError> {
    let ports = pg.get_ports();
    if ports.contains(&0) {
        return Err(ConfigError::new("port", "must not be 0"));
    }
    let hosts = pg.get_hosts().len();
    if ports.len() > 1 && ports.len() != hosts {
        return Err(ConfigError::new(
            "port",
            format!(
                "names {} ports for {hosts} hosts: give one, or one per host",
                ports.len()
            ),
        ));
    }
    // Postgres truncates names past 63 bytes and refuses a startup packet past 10,000: a name longer
    // than an identifier can be is a mistake, not a transient failure.
    let fields = [
        ("user", pg.get_user()),
        ("dbname", pg.get_dbname()),
        ("application_name", pg.get_application_name()),
        ("options", pg.get_options()),
    ];
    for (field, value) in fields {
        let Some(value) = value else { continue };
        if value.contains('\0') {
            return Err(ConfigError::new(field, "must not contain a NUL byte"));
        }
        let most = if field == "options" { 4_096 } else { 63 };
        if value.len() > most {
            return Err(ConfigError::new(
                field,
                format!(
                    "is {} bytes long; Postgres takes at most {most}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Takes rampart's own keywords out of a connection string, URL or key=value, and returns the rest for
/// tokio-postgres. It parses the string into its parameters: a keyword inside another value (a password,
/// an `application_name`) is part of that value and is left alone.
pub(super) fn split_keywords(conn: &str) -> Result<(String, Keywords), ConfigError> {
    match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| conn.starts_with(**p))
    {
        Some(prefix) => split_url_keywords(conn, prefix.len()),
        None => split_key_value_keywords(conn),
    }
}

/// URL form: the query starts at the first `?` after the user info (tokio-postgres reads the user info
/// up to the first `@`), and its parameters are `&`-separated, percent-encoded `key=value` pairs.
pub(super) fn split_url_keywords(
    url: &str,
    prefix: usize,
) -> Result<(String, Keywords), ConfigError> {
    let mut found = Keywords::default();
    let rest = &url[prefix..];
    // An unescaped `@` in the password: the user info would end at the first one (as libpq and
    // tokio-postgres read it) and the rest of the password would pass for the host, shown in every error,
    // log line and health document. Refused, with nothing of the user info shown.
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if authority.matches('@').count() > 1 {
        return Err(ConfigError::new(
            "url",
            "its user info holds an unescaped '@' (percent-encode it as %40 in the password)",
        ));
    }
    let after_user = rest.find('@').map_or(0, |at| at + 1);
    let Some(query_at) = rest[after_user..]
        .find('?')
        .map(|q| prefix + after_user + q)
    else {
        return Ok((url.to_owned(), found));
    };
    let mut kept = Vec::new();
    for pair in url[query_at + 1..].split('&') {
        let own = pair.split_once('=').and_then(|(key, value)| {
            let key = percent_decode_str(key).decode_utf8().ok()?;
            Some((keyword_index(&key)?, value))
        });
        match own {
            Some((i, value)) => {
                let value = percent_decode_str(value).decode_utf8().map_err(|_| {
                    ConfigError::new(OWN_KEYWORDS[i].0, "is not valid percent-encoded UTF-8")
                })?;
                found[i] = Some(value.into_owned());
            }
            None => kept.push(pair),
        }
    }
    let mut out = url[..query_at].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, found))
}

/// key=value form, as libpq reads it: `key = value` pairs separated by white space, a value either
/// bare or in single quotes, `\` escaping the next character in both.
pub(super) fn split_key_value_keywords(conn: &str) -> Result<(String, Keywords), ConfigError> {
    let mut found = Keywords::default();
    let mut kept = Vec::new();
    let mut chars = conn.chars().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next() != Some('=') {
            return Err(ConfigError::new(
                "url",
                "not a valid connection string: a key without `=`",
            ));
        }
        skip_space(&mut chars);
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConfigError::new(
                            "url",
                            "not a valid connection string: a quoted value is not closed",
                        ));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        match keyword_index(&key) {
            Some(i) => found[i] = Some(value),
            None => kept.push((key, value)),
        }
    }
    let out = kept
        .iter()
        .map(|(key, value)| {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            format!("{key}='{escaped}'")
        })
        .collect::<Vec<_>>()
        .join(" ");
    Ok((out, found))
}

pub(super) fn parse_keyword<T: Copy>(
    key: &'static str,
    value: &str,
    from_env: Option<&str>,
    table: &[(&str, T)],
) -> Result<T, ConfigError> {
    table
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            let place = from_env.map_or(String::new(), |var| format!(" (from {var})"));
            ConfigError::new(
                key,
                format!("unknown value{place}; expected one of {}", names.join(", ")),
            )
        })
}

impl PgConfig {
    pub(super) fn parse(
        url: &str,
        preset: Preset,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (parsable, mut keywords) = split_keywords(url.trim())?;
        let mut from_env = [None; 6];
        for (i, (_, var)) in OWN_KEYWORDS.iter().enumerate() {
            if keywords[i].is_none() {
                keywords[i] = env(var).filter(|v| !v.is_empty());
                from_env[i] = keywords[i].as_ref().map(|_| *var);
            }
        }
        let [
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            sslnegotiation,
            channel_binding,
        ] = keywords;
        let mut pg: tokio_postgres::Config =
            parsable.parse().map_err(|e: tokio_postgres::Error| {
                // tokio-postgres's parse errors name the bad option, not the value, so they are safe to show.
                ConfigError::new("url", format!("not a valid Postgres connection URL: {e}"))
            })?;
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::new("url", "names no host"));
        }
        if pg.get_user().is_none() {
            return Err(ConfigError::new("url", "names no user"));
        }
        check_startup(&pg)?;
        let mode = sslmode
            .as_deref()
            .map(|v| {
                parse_keyword(
                    "sslmode",
                    v,
                    from_env[0],
                    &[
                        ("disable", TlsMode::Disable),
                        ("allow", TlsMode::Allow),
                        ("prefer", TlsMode::Prefer),
                        ("require", TlsMode::Require),
                        ("verify-ca", TlsMode::VerifyCa),
                        ("verify-full", TlsMode::VerifyFull),
                    ],
                )
            })
            .transpose()?;
        let negotiation = sslnegotiation
            .as_deref()
            .map(|v| {
                parse_keyword(
                    "sslnegotiation",
                    v,
                    from_env[4],
                    &[
                        ("postgres", TlsNegotiation::Postgres),
                        ("direct", TlsNegotiation::Direct),
                    ],
                )
            })
            .transpose()?
            .unwrap_or_default();
        let channel_binding = channel_binding
            .as_deref()
            .map(|v| {
                parse_keyword(
                    "channel_binding",
                    v,
                    from_env[5],
                    &[
                        ("disable", ChannelBinding::Disable),
                        ("prefer", ChannelBinding::Prefer),
                        ("require", ChannelBinding::Require),
                    ],
                )
            })
            .transpose()?
            .unwrap_or_default();
        let root_cert = sslrootcert.map(|v| match v.as_str() {
            "system" => RootCert::System,
            _ => RootCert::File(PathBuf::from(v)),
        });
        let (connect, idle, interval, retries, user_timeout) = match preset {
            // tcp_user_timeout in milliseconds: under the stacks' attempt timeouts (3 s, 15 s), so real
            // packet loss fails the link before the attempt is cut.
            Preset::Server => (5, 30, 10, 3, 2_500),
            Preset::Serverless => (15, 60, 15, 4, 10_000),
        };
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(connect));
        }
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(idle))
            .keepalives_interval(Duration::from_secs(interval))
            .keepalives_retries(retries);
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(Duration::from_millis(user_timeout));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("rampart");
        }
        let mut config = PgConfig {
            pg,
            tls: TlsOptions {
                mode: TlsMode::Prefer,
                mode_explicit: false,
                root_cert: None,
                client_cert: sslcert.map(PathBuf::from),
                client_key: sslkey.map(PathBuf::from),
                negotiation,
                channel_binding,
                root_store: None,
                client_config: None,
            },
            preset,
            pooler: PoolerMode::Session,
        };
        config.tls.mode = config.default_tls_mode();
        if let Some(root) = root_cert {
            config = config.ssl_root_cert(root);
        }
        if let Some(mode) = mode {
            config.tls.mode = mode;
            config.tls.mode_explicit = true;
        }
        config.sync_tls();
        // Bad combinations and unreadable files are reported now, naming the keyword.
        crate::tls::client_config(&config.tls)?;
        Ok(config)
    }
}
