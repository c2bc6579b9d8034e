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
