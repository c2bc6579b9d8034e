//! The load balancer's health endpoint: 200 while the instance serves, 503 while it starts,
//! is unhealthy or drains, with a small JSON body saying which.

use super::state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;

/// Serve the endpoint on `addr` in a background thread.
pub fn serve(
    addr: SocketAddr,
    path: String,
    name: String,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("{addr}: {e}")))?;
    std::thread::Builder::new()
        .name("lb-health".into())
        .spawn(move || {
            let json =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                    .expect("static header");
            for request in server.incoming_requests() {
                let url_path = request.url().split('?').next().unwrap_or("");
                let response = if url_path == path {
                    let phase = shared.phase();
                    let code = if phase.takes_traffic() { 200 } else { 503 };
                    if let Some(peer) = request.remote_addr() {
                        let agent = request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv("User-Agent"))
                            .map(|h| h.value.as_str())
                            .unwrap_or("");
                        shared.record_poll(peer.ip(), agent, code);
                    }
                    let body = serde_json::json!({"state": phase.word(), "instance": name})
                        .to_string()
                        + "\n";
                    tiny_http::Response::from_string(body)
                        .with_status_code(code)
                        .with_header(json.clone())
                } else {
                    tiny_http::Response::from_string("not found\n").with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })?;
    Ok(())
}
