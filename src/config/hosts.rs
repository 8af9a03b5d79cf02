//! One host at a time: a configuration naming several hosts (a primary and its standbys) split into one
//! per host, so a connection knows the host it was made to and a failed connect names the host that
//! answered, where tokio-postgres, trying them in turn itself, keeps only the last host's error and no
//! host.

use rampart_layers::rng::{Rng, SplitMix64};
use tokio_postgres::config::{Host, LoadBalanceHosts};

/// One host of a configuration: `host:port` for messages, and the configuration naming it alone.
#[derive(Clone)]
pub(crate) struct OneHost {
    pub(crate) label: String,
    pub(crate) config: tokio_postgres::Config,
}

/// `pg`'s hosts in the order to try them (shuffled for `load_balance_hosts=random`), each with the whole
/// of `pg`'s settings and that host alone (its `hostaddr` and port, as tokio-postgres pairs them: one
/// port for every host, or one each).
pub(crate) fn one_by_one(pg: &tokio_postgres::Config) -> Vec<OneHost> {
    let hosts = pg.get_hosts();
    let ports = pg.get_ports();
    let mut each: Vec<OneHost> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = if ports.len() > 1 {
                ports.get(i).copied()
            } else {
                ports.first().copied()
            }
            .unwrap_or(5432);
            let mut config = settings_of(pg);
            match host {
                Host::Tcp(name) => config.host(name),
                Host::Unix(path) => config.host_path(path),
            };
            if let Some(addr) = pg.get_hostaddrs().get(i) {
                config.hostaddr(*addr);
            }
            config.port(port);
            OneHost {
                label: label(host, port),
                config,
            }
        })
        .collect();
    if pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
        let mut rng = SplitMix64::from_entropy();
        for i in (1..each.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            each.swap(i, j);
        }
    }
    each
}

/// `host:port`, bracketed for an IPv6 address.
pub(crate) fn label(host: &Host, port: u16) -> String {
    match host {
        Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
        Host::Tcp(h) => format!("{h}:{port}"),
        Host::Unix(path) => format!("{}:{port}", path.display()),
    }
}

/// Every setting of `pg` but its hosts, host addresses and ports. tokio-postgres's `Config` has a
/// getter for each of its fields; the test below fails if one is left behind.
fn settings_of(pg: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    if let Some(user) = pg.get_user() {
        c.user(user);
    }
    if let Some(password) = pg.get_password() {
        c.password(password);
    }
    if let Some(dbname) = pg.get_dbname() {
        c.dbname(dbname);
    }
    if let Some(options) = pg.get_options() {
        c.options(options);
    }
    if let Some(name) = pg.get_application_name() {
        c.application_name(name);
    }
    c.ssl_mode(pg.get_ssl_mode())
        .ssl_negotiation(pg.get_ssl_negotiation())
        .keepalives(pg.get_keepalives())
        .keepalives_idle(pg.get_keepalives_idle())
        .target_session_attrs(pg.get_target_session_attrs())
        .channel_binding(pg.get_channel_binding())
        .load_balance_hosts(LoadBalanceHosts::Disable);
    if let Some(t) = pg.get_connect_timeout() {
        c.connect_timeout(*t);
    }
    if let Some(t) = pg.get_tcp_user_timeout() {
        c.tcp_user_timeout(*t);
    }
    if let Some(t) = pg.get_keepalives_interval() {
        c.keepalives_interval(t);
    }
    if let Some(n) = pg.get_keepalives_retries() {
        c.keepalives_retries(n);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = "user=app password=secret dbname=db options='-c work_mem=4MB' \
        application_name=svc sslmode=require connect_timeout=7 tcp_user_timeout=9 keepalives=1 \
        keepalives_idle=11 keepalives_interval=3 keepalives_retries=4 target_session_attrs=read-write \
        channel_binding=disable";

    #[test]
    fn each_host_keeps_every_other_setting() {
        let many: tokio_postgres::Config =
            format!("host=a,b,c port=1,2,3 {SETTINGS}").parse().unwrap();
        let each = one_by_one(&many);
        assert_eq!(
            each.iter().map(|h| h.label.as_str()).collect::<Vec<_>>(),
            ["a:1", "b:2", "c:3"]
        );
        let alone: tokio_postgres::Config = format!("host=b port=2 {SETTINGS}").parse().unwrap();
        // Debug shows every field (the password redacted): a setting left behind shows here.
        assert_eq!(format!("{:?}", each[1].config), format!("{alone:?}"));
        assert_eq!(each[1].config.get_password(), Some(&b"secret"[..]));
    }

    #[test]
    fn one_port_serves_every_host_and_hostaddrs_pair_up() {
        let pg: tokio_postgres::Config = "host=a,b hostaddr=127.0.0.1,127.0.0.2 port=6543 user=u"
            .parse()
            .unwrap();
        let each = one_by_one(&pg);
        assert_eq!(each[1].label, "b:6543");
        assert_eq!(
            each[1].config.get_hostaddrs(),
            &["127.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        let pg: tokio_postgres::Config = "host=a user=u".parse().unwrap();
        assert_eq!(one_by_one(&pg)[0].label, "a:5432");
    }

    #[test]
    fn random_load_balancing_shuffles_but_keeps_every_host() {
        let pg: tokio_postgres::Config = "host=a,b,c,d user=u load_balance_hosts=random"
            .parse()
            .unwrap();
        let mut labels: Vec<String> = one_by_one(&pg).into_iter().map(|h| h.label).collect();
        labels.sort();
        assert_eq!(labels, ["a:5432", "b:5432", "c:5432", "d:5432"]);
    }
}
