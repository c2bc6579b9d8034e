//! The vendor's `nodemanager`, mapped onto gateway-nodemanager.service; see
//! `gateway_systemd::ctl::compat`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(gateway_systemd::ctl::compat::nodemanager_main(&args));
}
