//! The demo gateway; see `gateway_systemd::demo`.

fn main() {
    use clap::Parser;
    let opts = gateway_systemd::demo::Options::parse();
    std::process::exit(gateway_systemd::demo::main(opts));
}
