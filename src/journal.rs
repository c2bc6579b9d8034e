//! Logging: to the journal with structured fields when its socket exists, to stderr otherwise.
//! The MESSAGE_IDs below have catalog entries in `packaging/catalog/gateway-systemd.catalog`,
//! so `journalctl -x` explains them.

use tracing_subscriber::layer::SubscriberExt;

/// The gateway process was started.
pub const MSG_STARTED: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f01";
/// The gateway answered its health check: READY=1 was sent.
pub const MSG_READY: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f02";
/// The gateway stopped answering its health check; the watchdog is no longer fed.
pub const MSG_UNHEALTHY: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f03";
/// Draining began: the LB health endpoint answers 503.
pub const MSG_DRAIN_BEGIN: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f04";
/// Draining ended: the gateway may be stopped.
pub const MSG_DRAIN_END: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f05";
/// The gateway process exited.
pub const MSG_STOPPED: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f06";
/// Not started: another copy of the instance already holds its health check address.
pub const MSG_ALREADY_RUNNING: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f07";

/// A disaster-recovery drill ended: its recovery time and point, pass or fail.
pub const MSG_DRILL_DONE: &str = "5f0c6a1e2b7d4c0f9a8e3d2c1b0a9f08";

/// Record a drill's outcome in the journal (when there is one), so that `journalctl -x
/// MESSAGE_ID=...` shows recovery times and points over weeks of scheduled drills.
pub fn drill_done(r: &crate::backup::drill::DrillReport) {
    let Ok(layer) = tracing_journald::layer() else {
        return;
    };
    let layer = layer
        .with_field_prefix(None)
        .with_syslog_identifier("gatewayctl".to_string());
    let subscriber = tracing_subscriber::registry().with(layer);
    let rpo = r.rpo.as_ref();
    let failed: Vec<String> = r
        .instances
        .iter()
        .filter(|i| !i.passed)
        .map(|i| format!("{}: {}", i.name, i.reason.as_deref().unwrap_or("")))
        .chain(r.failure.clone())
        .collect();
    tracing::subscriber::with_default(subscriber, || {
        let text = match (r.passed, r.rto_seconds) {
            (true, Some(rto)) => format!(
                "drill of {} passed: {} instances serving after {rto:.1}s",
                r.archive.display(),
                r.instances.len()
            ),
            _ => format!(
                "drill of {} FAILED: {}",
                r.archive.display(),
                failed.join("; ")
            ),
        };
        macro_rules! entry {
            ($level:ident) => {
                tracing::$level!(
                    message_id = MSG_DRILL_DONE,
                    drill_archive = %r.archive.display(),
                    drill_host = %r.host,
                    drill_result = if r.passed { "passed" } else { "failed" },
                    drill_rto_seconds = r.rto_seconds.unwrap_or(-1.0),
                    drill_archive_age_seconds = rpo.map_or(-1, |p| p.archive_age_seconds),
                    drill_newest_file_age_seconds = rpo
                        .and_then(|p| p.newest_file.as_ref())
                        .map_or(-1, |f| f.age_seconds),
                    drill_largest_gap_seconds = rpo
                        .and_then(|p| p.largest_gap.as_ref())
                        .map_or(-1, |g| g.seconds),
                    drill_instances = r.instances.len(),
                    drill_failed = %failed.join("; "),
                    "{text}"
                )
            };
        }
        match r.passed {
            true => entry!(info),
            false => entry!(error),
        }
    });
}

/// Install the global subscriber: journald with `fields` on every entry (names as journald
/// wants them, e.g. `GATEWAY_INSTANCE`), or plain stderr lines when there is no journal.
pub fn init(identifier: &str, fields: &[(&str, String)]) {
    let journald = tracing_journald::layer().ok().map(|l| {
        l.with_field_prefix(None)
            .with_syslog_identifier(identifier.to_string())
            .with_custom_fields(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
            )
    });
    let result = match journald {
        Some(layer) => {
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        }
        None => tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_target(false)
                .without_time()
                .finish(),
        ),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
