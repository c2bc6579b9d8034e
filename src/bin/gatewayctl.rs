//! gatewayctl: see `gateway_systemd::ctl`.

fn main() {
    use clap::Parser;
    let cli = gateway_systemd::ctl::Cli::parse();
    std::process::exit(gateway_systemd::ctl::main(cli));
}
