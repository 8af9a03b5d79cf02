use super::*;

#[test]
fn server_defaults_are_filled_in() {
    let c = PgConfig::from_url("postgres://u@localhost/db").unwrap();
    assert_eq!(c.preset(), Preset::Server);
    assert_eq!(
        c.pg_config().get_connect_timeout(),
        Some(&Duration::from_secs(5))
    );
    assert!(c.pg_config().get_keepalives());
    assert_eq!(c.pg_config().get_keepalives_idle(), Duration::from_secs(30));
    assert_eq!(
        c.pg_config().get_tcp_user_timeout(),
        Some(&Duration::from_millis(2_500))
    );
    assert_eq!(c.pg_config().get_application_name(), Some("rampart"));
    assert_eq!(c.tls_mode(), TlsMode::Prefer);
}

#[test]
fn serverless_verifies_the_host_unless_the_url_says_otherwise() {
    let c = PgConfig::serverless("postgres://u@ep-cool-1.neon.tech/db").unwrap();
    assert_eq!(c.tls_mode(), TlsMode::VerifyFull);
    assert_eq!(
        c.pg_config().get_connect_timeout(),
        Some(&Duration::from_secs(15))
    );
    let local = PgConfig::serverless("postgres://u@127.0.0.1/db?sslmode=disable").unwrap();
    assert_eq!(local.tls_mode(), TlsMode::Disable);
}

#[test]
fn sslmode_is_honoured_including_verify_modes() {
    for (mode, want) in [
        ("disable", TlsMode::Disable),
        ("prefer", TlsMode::Prefer),
        ("allow", TlsMode::Allow),
        ("require", TlsMode::Require),
        ("verify-ca", TlsMode::VerifyCa),
        ("verify-full", TlsMode::VerifyFull),
    ] {
        let url = format!("postgres://u@h/db?application_name=x&sslmode={mode}");
        let c = PgConfig::from_url(&url).unwrap();
        assert_eq!(c.tls_mode(), want, "{mode}");
        assert_eq!(
            c.pg_config().get_application_name(),
            Some("x"),
            "{mode}: other options kept"
        );
    }
    assert!(PgConfig::from_url("postgres://u@h/db?sslmode=bogus").is_err());
}

#[test]
fn the_pooler_preset_is_the_server_preset_in_transaction_mode() {
    let c = PgConfig::pooler("postgres://u@pgbouncer.internal:6432/db").unwrap();
    assert_eq!(c.pooler_mode(), PoolerMode::Transaction);
    assert_eq!(c.preset(), Preset::Server);
    assert_eq!(
        PgConfig::server("postgres://u@h/db").unwrap().pooler_mode(),
        PoolerMode::Session
    );
    let neon = PgConfig::serverless("postgres://u@ep-cool-1-pooler.neon.tech/db")
        .unwrap()
        .pooling(PoolerMode::Transaction);
    assert_eq!(neon.preset(), Preset::Serverless);
    assert_eq!(neon.pooler_mode(), PoolerMode::Transaction);
}

#[test]
fn url_settings_win_over_preset_defaults() {
    let c = PgConfig::serverless("postgres://u@h/db?connect_timeout=3").unwrap();
    assert_eq!(
        c.pg_config().get_connect_timeout(),
        Some(&Duration::from_secs(3))
    );
}

#[test]
fn passwords_never_show() {
    let c = PgConfig::from_url("postgres://app:pa%24%24word-123@db.internal:6543/app").unwrap();
    assert_eq!(
        c.redacted_url(),
        "postgres://app:***@db.internal:6543/app?sslmode=prefer"
    );
    for shown in [format!("{c}"), format!("{c:?}"), format!("{c:#?}")] {
        assert!(!shown.contains("word-123"), "{shown}");
        assert!(!shown.contains("pa$$"), "{shown}");
    }
}

#[test]
fn bad_urls_are_typed_errors_that_do_not_echo_the_url() {
    for bad in ["mysql://u:secretpw@h/db", "", "postgres:///db"] {
        let err = PgConfig::from_url(bad).unwrap_err();
        assert_eq!(err.field(), "url", "{bad}");
        assert!(!err.to_string().contains("secretpw"), "{err}");
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn with_env(url: &str, vars: &[(&str, &str)]) -> Result<PgConfig, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    PgConfig::with_env(url, Preset::Server, move |name| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

#[test]
fn sslmode_inside_another_value_changes_nothing() {
    let urls = [
        // URL: in application_name, encoded and not, and in the password, encoded and not.
        "postgres://u@h/db?application_name=sslmode%3Ddisable",
        "postgres://u@h/db?application_name=x&sslmode=disable",
        "postgres://u@h/db?application_name=sslmode=disable",
        "postgres://u:pw%26sslmode%3Ddisable@h/db",
        "postgres://u:pw?sslmode=disable@h/db",
        // key=value: quoted values holding the keyword.
        "host=h user=u application_name='sslmode=disable'",
        "host=h user=u password='x sslmode=disable'",
    ];
    for url in urls {
        let c = PgConfig::with_env(url, Preset::Serverless, no_env).unwrap();
        let want = if url.contains("&sslmode=disable") {
            TlsMode::Disable
        } else {
            TlsMode::VerifyFull
        };
        assert_eq!(c.tls_mode(), want, "{url}");
    }
    let c = PgConfig::with_env(
        "postgres://u:pw%26sslmode%3Ddisable@h/db?application_name=sslmode%3Ddisable",
        Preset::Server,
        no_env,
    )
    .unwrap();
    assert_eq!(
        c.pg_config().get_password(),
        Some(&b"pw&sslmode=disable"[..])
    );
    assert_eq!(
        c.pg_config().get_application_name(),
        Some("sslmode=disable")
    );
    let c = PgConfig::from_url("host=h user=u password='it\\'s sslmode=require'").unwrap();
    assert_eq!(
        c.pg_config().get_password(),
        Some(&b"it's sslmode=require"[..])
    );
    assert_eq!(c.tls_mode(), TlsMode::Prefer);
}

#[test]
fn key_value_strings_take_every_keyword() {
    let c = PgConfig::from_url(
            "host=db.internal port=6543 user=app dbname=app sslmode = verify-ca channel_binding=require \
             sslnegotiation=direct application_name='my app'",
        )
        .unwrap();
    assert_eq!(c.tls_mode(), TlsMode::VerifyCa);
    assert_eq!(c.channel_binding_mode(), ChannelBinding::Require);
    assert_eq!(c.negotiation(), TlsNegotiation::Direct);
    assert_eq!(c.pg_config().get_application_name(), Some("my app"));
    assert_eq!(c.pg_config().get_ports(), &[6543]);
    assert!(PgConfig::from_url("host=h user=u application_name='open").is_err());
}

#[test]
fn unknown_values_name_the_keyword() {
    for (url, field) in [
        ("postgres://u:secretpw@h/db?sslmode=nope", "sslmode"),
        ("postgres://u:secretpw@h/db?sslmode=Require", "sslmode"),
        (
            "postgres://u:secretpw@h/db?sslnegotiation=fast",
            "sslnegotiation",
        ),
        (
            "postgres://u:secretpw@h/db?channel_binding=yes",
            "channel_binding",
        ),
        (
            "host=h user=u password=secretpw sslmode=sometimes",
            "sslmode",
        ),
    ] {
        let err = PgConfig::with_env(url, Preset::Server, no_env).unwrap_err();
        assert_eq!(err.field(), field, "{url}");
        assert!(!err.to_string().contains("secretpw"), "{err}");
    }
}

#[test]
fn impossible_combinations_are_config_errors() {
    for (url, field) in [
        (
            "postgres://u@h/db?sslmode=disable&channel_binding=require",
            "channel_binding",
        ),
        (
            "postgres://u@h/db?sslmode=prefer&sslnegotiation=direct",
            "sslnegotiation",
        ),
        (
            "postgres://u@h/db?sslmode=allow&sslnegotiation=direct",
            "sslnegotiation",
        ),
        ("postgres://u@h/db?sslnegotiation=direct", "sslnegotiation"),
        (
            "postgres://u@h/db?sslrootcert=system&sslmode=require",
            "sslrootcert",
        ),
        (
            "postgres://u@h/db?sslrootcert=system&sslmode=verify-ca",
            "sslrootcert",
        ),
        (
            "postgres://u@h/db?sslrootcert=/nonexistent/root.crt",
            "sslrootcert",
        ),
        ("postgres://u@h/db?sslcert=/nonexistent/c.crt", "sslkey"),
        ("postgres://u@h/db?sslkey=/nonexistent/c.key", "sslcert"),
        (
            "postgres://u@h/db?sslcert=/nonexistent/c.crt&sslkey=/nonexistent/c.key",
            "sslcert",
        ),
    ] {
        let err = PgConfig::with_env(url, Preset::Server, no_env).unwrap_err();
        assert_eq!(err.field(), field, "{url}: {err}");
    }
    // What the builder sets is checked when the pool is built.
    let c = PgConfig::from_url("postgres://u@h/db?sslmode=disable")
        .unwrap()
        .channel_binding(ChannelBinding::Require);
    assert_eq!(
        crate::tls::client_config(c.tls_options())
            .unwrap_err()
            .field(),
        "channel_binding"
    );
    let c =
        PgConfig::from_url("postgres://u@h/db?sslmode=verify-full&sslnegotiation=direct").unwrap();
    assert_eq!(c.negotiation(), TlsNegotiation::Direct);
}

#[test]
#[cfg(feature = "testing")]
fn a_file_that_is_not_pem_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let url = format!("postgres://u@h/db?sslrootcert={}", junk.display());
    let err = PgConfig::from_url(&url).unwrap_err();
    assert_eq!(err.field(), "sslrootcert");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

#[test]
fn system_roots_imply_verify_full() {
    let c = with_env("postgres://u@h/db?sslrootcert=system", &[]);
    // A machine without a trust store cannot build this; it still names the keyword.
    match c {
        Ok(c) => {
            assert_eq!(c.tls_mode(), TlsMode::VerifyFull);
            assert_eq!(c.root_cert(), Some(&RootCert::System));
        }
        Err(e) => assert_eq!(e.field(), "sslrootcert"),
    }
}

#[test]
fn environment_variables_fill_in_what_the_url_does_not_say() {
    let c = with_env("postgres://u@h/db", &[("PGSSLMODE", "require")]).unwrap();
    assert_eq!(c.tls_mode(), TlsMode::Require);
    let c = with_env(
        "postgres://u@h/db?sslmode=disable",
        &[("PGSSLMODE", "require")],
    )
    .unwrap();
    assert_eq!(c.tls_mode(), TlsMode::Disable, "the URL wins");
    let c = with_env(
        "postgres://u@h/db",
        &[
            ("PGSSLMODE", "verify-full"),
            ("PGCHANNELBINDING", "require"),
        ],
    )
    .unwrap();
    assert_eq!(c.channel_binding_mode(), ChannelBinding::Require);
    let err = with_env("postgres://u@h/db", &[("PGSSLMODE", "always")]).unwrap_err();
    assert_eq!(err.field(), "sslmode");
    assert!(err.to_string().contains("PGSSLMODE"), "{err}");
    let err = with_env(
        "postgres://u@h/db",
        &[("PGSSLROOTCERT", "/nonexistent/root.crt")],
    )
    .unwrap_err();
    assert_eq!(err.field(), "sslrootcert");
    let err = with_env("postgres://u@h/db", &[("PGSSLCERT", "/nonexistent/c.crt")]).unwrap_err();
    assert_eq!(err.field(), "sslkey");
}

#[test]
fn libpq_keywords_leave_the_rest_of_the_url_intact() {
    let c = PgConfig::from_url(
            "postgres://app:pw@db.internal:6543/app?sslmode=require&application_name=a%20b&channel_binding=disable&connect_timeout=3",
        )
        .unwrap();
    assert_eq!(c.tls_mode(), TlsMode::Require);
    assert_eq!(c.channel_binding_mode(), ChannelBinding::Disable);
    assert_eq!(c.pg_config().get_application_name(), Some("a b"));
    assert_eq!(
        c.pg_config().get_connect_timeout(),
        Some(&Duration::from_secs(3))
    );
    assert_eq!(c.pg_config().get_dbname(), Some("app"));
    assert!(PgConfig::from_url("postgres://u@h/db?sslmode=require&bogus=1").is_err());
}

#[test]
#[cfg(feature = "testing")]
fn client_keys_are_read_but_never_shown() {
    let certs = crate::testing::TestCerts::generate().unwrap();
    let url = format!(
        "postgres://app:hunter2@h/db?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        certs.ca().display(),
        certs.client_cert().display(),
        certs.client_key().display()
    );
    let c = PgConfig::from_url(&url).unwrap();
    assert_eq!(
        c.client_cert(),
        Some((certs.client_cert().as_path(), certs.client_key().as_path()))
    );
    let key = std::fs::read_to_string(certs.client_key()).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    for shown in [format!("{c}"), format!("{c:?}"), format!("{c:#?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(key_line), "{shown}");
    }
    // A key that is not a key: the error names the keyword and the file, never the contents.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.key");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU1RVRkY=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!(
        "postgres://app:hunter2@h/db?sslcert={}&sslkey={}",
        certs.client_cert().display(),
        bad.display()
    );
    let err = PgConfig::from_url(&url).unwrap_err();
    assert_eq!(err.field(), "sslkey");
    assert!(!err.to_string().contains("U0VDUkVU"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // A key that is not the certificate's.
    let url = format!(
        "postgres://app@h/db?sslcert={}&sslkey={}",
        certs.client_cert().display(),
        certs.server_key().display()
    );
    let err = PgConfig::from_url(&url).unwrap_err();
    assert_eq!(err.field(), "sslkey", "{err}");
}

#[test]
fn an_unescaped_at_sign_in_the_password_is_refused_without_showing_it() {
    let err = PgConfig::from_url("postgres://app:hunter@2@db.example.com/app").unwrap_err();
    assert_eq!(err.field(), "url");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(
            !shown.contains("hunter") && !shown.contains("2@db"),
            "{shown}"
        );
    }
    let ok = PgConfig::from_url("postgres://app:hunter%402@db.example.com/app").unwrap();
    assert!(
        ok.redacted_url()
            .starts_with("postgres://app:***@db.example.com"),
        "{}",
        ok.redacted_url()
    );
    // An `@` in the query is not in the user info.
    PgConfig::from_url("postgres://app@db.example.com/app?application_name=a@b").unwrap();
}

#[test]
fn settings_the_server_would_refuse_every_time_are_config_errors() {
    for (url, field) in [
        ("postgres://u@h:0/db", "port"),
        ("host=h1,h2,h3 port=5432,5433 user=u dbname=db", "port"),
        (
            "postgres://u@h/db?application_name=a%00b",
            "application_name",
        ),
    ] {
        let got = PgConfig::from_url(url).map(|c| format!("{:?}", c.pg_config().get_ports()));
        assert_eq!(
            got.as_ref().map_err(|e| e.field()),
            Err(field),
            "{url}: {got:?}"
        );
    }
    let long = format!("postgres://u@h/{}", "d".repeat(1_000_000));
    assert_eq!(
        PgConfig::from_url(&long).map(drop).unwrap_err().field(),
        "dbname"
    );
    PgConfig::from_url("postgres://u@h1:5432,h2:5433/db").expect("a port per host");
    PgConfig::from_url("postgres://u@h1,h2/db").expect("one port for all");
}

#[test]
fn the_redacted_url_keeps_which_host_it_takes() {
    let c = PgConfig::server(
        "postgres://app:pw@db-a:5432,db-b:5433/app?target_session_attrs=read-write",
    )
    .unwrap();
    assert_eq!(
        c.redacted_url(),
        "postgres://app:***@db-a:5432,db-b:5433/app?sslmode=prefer&target_session_attrs=read-write"
    );
    let c = PgConfig::server("postgres://app@db-b/app?target_session_attrs=read-only").unwrap();
    assert!(
        c.redacted_url()
            .ends_with("&target_session_attrs=read-only")
    );
    let c = PgConfig::server("postgres://app@db/app").unwrap();
    assert!(!c.redacted_url().contains("target_session_attrs"));
    // libpq's `prefer-standby` is not one tokio-postgres knows: a typed error when the URL is read.
    let err =
        PgConfig::server("postgres://app@db/app?target_session_attrs=prefer-standby").unwrap_err();
    assert_eq!(err.field(), "url");
}
