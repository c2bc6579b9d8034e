//! The vendor's `startinstance`, mapped onto units; see `gateway_systemd::ctl::compat`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(gateway_systemd::ctl::compat::startinstance_main(&args));
}
