//! `ExecStart=` of gateway@.service and gateway-nodemanager.service; see `gateway_systemd::launch`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: gateway-launch [--nodemanager]\n       gateway-launch --ask-passphrase   (ExecStartPre=+ of a unit with ask_passphrase = true)\n\n\
             Runs one API Gateway instance (or, with --nodemanager, the Node Manager) under systemd:\n\
             started by gateway@<group>-<instance>.service with the environment its generated drop-in sets.\n\
             Reports READY=1 once the health check answers 200, feeds the watchdog while it does,\n\
             serves the load balancer health endpoint and the control socket of `gatewayctl drain`."
        );
        return;
    }
    if args.iter().any(|a| a == "--ask-passphrase") {
        std::process::exit(gateway_systemd::launch::ask_passphrase());
    }
    let node_manager = args.iter().any(|a| a == "--nodemanager");
    std::process::exit(gateway_systemd::launch::main(node_manager));
}
