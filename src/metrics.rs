//! Metrics in Prometheus's text format, labelled by destination: served
//! over HTTP while `watch` runs (`--metrics-addr`), or written to a file
//! for node_exporter's textfile collector (`--metrics-file`, `sync` too).
//! Every metric is documented in docs/configuration.md.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::report::{get, Reporter};

/// One destination whose reporter the metrics are read from.
#[derive(Clone)]
pub struct Source {
    pub dest: String,
    pub rep: Arc<Reporter>,
}

type Labels = Vec<(String, String)>;

/// A counter family, registered.
fn counters(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

/// A gauge family of whole numbers, registered.
fn gauges(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// A gauge family of real numbers, registered.
fn real_gauges(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

/// The kernel's limit on inotify watches per user.
fn inotify_limit() -> Option<i64> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The metrics of `sources` now, as Prometheus text.
pub fn render(sources: &[Source]) -> String {
    let mut reg = Registry::with_prefix("s3ma");
    let uploads = counters(&mut reg, "uploads", "Objects uploaded");
    let copies = counters(&mut reg, "copies", "Objects copied on the server");
    let deletes = counters(&mut reg, "deletes", "Objects deleted");
    let bytes = counters(&mut reg, "uploaded_bytes", "Bytes uploaded");
    let failures = counters(&mut reg, "failures", "Files and keys that failed");
    let by_class = counters(
        &mut reg,
        "transfer_failures",
        "Transfers that failed, by class: request (this object or file), server, config",
    );
    let failing = gauges(&mut reg, "failing_paths", "Paths whose last attempt failed");
    let pending = gauges(
        &mut reg,
        "pending_paths",
        "Changed paths waiting to be mirrored",
    );
    let in_flight = gauges(&mut reg, "in_flight_paths", "Paths being mirrored now");
    let held = gauges(&mut reg, "held_deletions", "Deletions held by --max-delete");
    let last_at = real_gauges(
        &mut reg,
        "last_reconcile_timestamp_seconds",
        "When the last full reconcile completed (Unix time)",
    );
    let last_secs = real_gauges(
        &mut reg,
        "last_reconcile_duration_seconds",
        "How long the last full reconcile took",
    );
    let watches = gauges(
        &mut reg,
        "inotify_watches",
        "Directories watched (one inotify watch each)",
    );
    for s in sources {
        let l: Labels = vec![("dest".into(), s.dest.clone())];
        let c = &s.rep.counts;
        uploads.get_or_create(&l).inc_by(get(&c.uploaded));
        copies.get_or_create(&l).inc_by(get(&c.copied));
        deletes.get_or_create(&l).inc_by(get(&c.deleted));
        bytes.get_or_create(&l).inc_by(get(&c.bytes));
        failures.get_or_create(&l).inc_by(get(&c.failed));
        for (class, n) in s.rep.pulse.failures_by_class() {
            let lc: Labels = vec![
                ("dest".into(), s.dest.clone()),
                ("class".into(), class.into()),
            ];
            by_class.get_or_create(&lc).inc_by(n);
        }
        failing
            .get_or_create(&l)
            .set(s.rep.pulse.failing().len() as i64);
        let Some(r) = s.rep.pulse.record() else {
            continue;
        };
        pending.get_or_create(&l).set(r.pending as i64);
        in_flight.get_or_create(&l).set(r.in_flight as i64);
        held.get_or_create(&l).set(r.held as i64);
        if let Some(rec) = &r.last_reconcile {
            last_at.get_or_create(&l).set(rec.at as f64);
            last_secs.get_or_create(&l).set(rec.seconds);
        }
        if let Some(n) = r.watched_dirs {
            watches.get_or_create(&l).set(n as i64);
        }
    }
    if let Some(limit) = inotify_limit() {
        let g = Gauge::<i64>::default();
        g.set(limit);
        reg.register(
            "inotify_max_user_watches",
            "The kernel's limit on inotify watches per user (fs.inotify.max_user_watches)",
            g,
        );
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// OpenMetrics text as Prometheus's classic text format (0.0.4), which
/// node_exporter's textfile collector and older scrapers read: a counter
/// family is named as its samples (`…_total`), and there is no `# EOF`.
pub fn classic(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Writes the metrics to `path` atomically (a temporary file in the same
/// directory, renamed over it), readable by the textfile collector.
pub fn write_file(path: &Path, sources: &[Source]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let text = classic(&render(sources));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write the metrics file {}", path.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Binds the metrics address; a port in use is a configuration error,
/// found before the daemon starts.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))
}

/// Serves `GET /metrics` (anything else is a 404) until the process ends.
pub fn serve(listener: tokio::net::TcpListener, sources: Vec<Source>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    let sources = Arc::new(sources);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let sources = sources.clone();
                    async move {
                        // OpenMetrics to a scraper that asks for it,
                        // the classic text format to anything else.
                        let open = req
                            .headers()
                            .get("accept")
                            .and_then(|a| a.to_str().ok())
                            .is_some_and(|a| a.contains("application/openmetrics-text"));
                        let resp = if req.uri().path() != "/metrics" {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from("see /metrics\n")))
                        } else if open {
                            Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(render(&sources))))
                        } else {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(classic(&render(&sources)))))
                        };
                        resp.map_err(std::io::Error::other)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Level;

    #[test]
    fn metrics_are_labelled_by_destination() {
        let rep = Arc::new(Reporter::new(Level::Quiet, false, false));
        rep.uploaded(
            "site/a",
            "/t/a",
            10,
            std::time::Duration::ZERO,
            false,
            "new",
        );
        let text = render(&[Source {
            dest: "s3://b/site/".into(),
            rep,
        }]);
        assert!(
            text.contains(r#"s3ma_uploads_total{dest="s3://b/site/"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"s3ma_uploaded_bytes_total{dest="s3://b/site/"} 10"#),
            "{text}"
        );
        assert!(
            text.contains("# HELP s3ma_deletes Objects deleted"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let old = classic(&text);
        assert!(old.contains("# TYPE s3ma_uploads_total counter\n"), "{old}");
        assert!(
            old.contains("# HELP s3ma_uploads_total Objects uploaded"),
            "{old}"
        );
        assert!(old.contains("# TYPE s3ma_failing_paths gauge\n"), "{old}");
        assert!(!old.contains("# EOF"), "{old}");
    }
}
