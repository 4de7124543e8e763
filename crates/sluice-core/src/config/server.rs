//! `[server]`: listeners, their limits and TLS.

use super::raw::RawServer;
use super::validate::{Collector, ms};
use super::{ServerConfig, TlsConfig};

pub(super) fn server(c: &mut Collector<'_>, s: &RawServer) -> ServerConfig {
    ServerConfig {
        listen: c.addr(s.listen.as_ref(), "127.0.0.1:8080", "listen"),
        admin_listen: c.addr(s.admin_listen.as_ref(), "127.0.0.1:9090", "admin_listen"),
        max_body_bytes: c.positive(
            s.max_body_bytes.as_ref(),
            4 << 20,
            1 << 30,
            "max_body_bytes",
        ) as usize,
        max_upload_bytes: c.positive(
            s.max_upload_bytes.as_ref(),
            25 << 20,
            1 << 34,
            "max_upload_bytes",
        ) as usize,
        header_read_timeout: ms(c.positive(
            s.header_read_timeout_ms.as_ref(),
            10_000,
            3_600_000,
            "header_read_timeout_ms",
        )),
        max_header_bytes: c.positive(
            s.max_header_bytes.as_ref(),
            64 << 10,
            16 << 20,
            "max_header_bytes",
        ) as usize,
        shutdown_grace: ms(c.positive(
            s.shutdown_grace_ms.as_ref(),
            10_000,
            3_600_000,
            "shutdown_grace_ms",
        )),
        body_read_timeout: ms(c.positive(
            s.body_read_timeout_ms.as_ref(),
            30_000,
            3_600_000,
            "body_read_timeout_ms",
        )),
        // Memory-bound defaults fit the cgroup's budget (crate::cgroup).
        max_connections: c.positive(
            s.max_connections.as_ref(),
            crate::cgroup::fit(65_536, 16 << 10, 4, 256),
            10_000_000,
            "max_connections",
        ) as usize,
        // Connection bursts (a replica's agents reconnecting at once) must
        // queue, not be dropped: a dropped SYN is retried after 1 s, 3 s, …
        listen_backlog: c.positive(s.listen_backlog.as_ref(), 4096, 65_535, "listen_backlog")
            as u32,
        max_connections_per_ip: match &s.max_connections_per_ip {
            // 0: no cap per address (the default: clients behind one NAT or
            // load balancer share an address).
            Some(n) if *n.get_ref() == 0 => 0,
            v => c.positive(v.as_ref(), 0, 10_000_000, "max_connections_per_ip") as usize,
        },
        http2_keepalive_interval: ms(c.positive(
            s.http2_keepalive_interval_ms.as_ref(),
            20_000,
            3_600_000,
            "http2_keepalive_interval_ms",
        )),
        memory_shed_percent: match &s.memory_shed_percent {
            Some(v) if *v.get_ref() == 0 => 0,
            v => c.positive(v.as_ref(), 90, 100, "memory_shed_percent") as u8,
        },
        memory_check: ms(c.positive(s.memory_check_ms.as_ref(), 250, 60_000, "memory_check_ms")),
        workers: match &s.workers {
            Some(v) if *v.get_ref() == 0 => 0,
            v => c.positive(v.as_ref(), 0, 1024, "workers") as usize,
        },
        tls: tls(c, s),
        upgrade_socket: upgrade_socket(c, s),
        cors_origins: cors_origins(c, s),
    }
}

/// `*`, or origins as browsers send them: `scheme://host[:port]`.
fn cors_origins(c: &mut Collector<'_>, s: &RawServer) -> Vec<String> {
    let Some(list) = &s.cors_origins else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(list.len());
    for o in list {
        let v = o.get_ref();
        let ok = v == "*"
            || v.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.contains(['/', ' ', '?', '#'])
            });
        if ok {
            out.push(v.trim_end_matches('/').to_owned());
        } else {
            c.at(
                o.span(),
                format!(
                    "cors_origins: '{v}' is not an origin (scheme://host[:port], e.g. \
                     https://app.example.com) or *"
                ),
            );
        }
    }
    out
}

/// The longest path a Unix socket address holds (`sun_path`, less its NUL).
const MAX_SOCKET_PATH: usize = 107;

fn upgrade_socket(c: &mut Collector<'_>, s: &RawServer) -> Option<std::path::PathBuf> {
    let v = s.upgrade_socket.as_ref()?;
    let path = v.get_ref();
    if path.is_empty() {
        c.at(v.span(), "upgrade_socket: a path is needed");
        return None;
    }
    if path.len() > MAX_SOCKET_PATH {
        c.at(
            v.span(),
            format!(
                "upgrade_socket: '{path}' is {} bytes; a Unix socket path holds at most \
                 {MAX_SOCKET_PATH}",
                path.len()
            ),
        );
        return None;
    }
    Some(path.into())
}

fn tls(c: &mut Collector<'_>, s: &RawServer) -> Option<TlsConfig> {
    let reload = ms(c.positive(
        s.tls_reload_ms.as_ref(),
        10_000,
        86_400_000,
        "tls_reload_ms",
    ));
    match (&s.tls_cert_file, &s.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            for f in [cert, key] {
                if std::fs::metadata(f.get_ref()).is_err() {
                    c.at(f.span(), format!("'{}' cannot be read", f.get_ref()));
                }
            }
            Some(TlsConfig {
                cert_file: cert.get_ref().into(),
                key_file: key.get_ref().into(),
                reload,
            })
        }
        (Some(one), None) | (None, Some(one)) => {
            c.at(one.span(), "tls_cert_file and tls_key_file go together");
            None
        }
    }
}
