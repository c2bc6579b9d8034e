//! systemd generator for API Gateway instances; see `gateway_systemd::generator`.

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let root = std::env::var_os(gateway_systemd::generator::ROOT_ENV);
    std::process::exit(gateway_systemd::generator::main(&args, root));
}
