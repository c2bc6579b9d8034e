//! `gatewayctl`: the operator's command line. So far: `drain`.

use crate::drain::{self, DrainError, DrainOutcome};
use crate::units::name;
use clap::{Parser, Subcommand};

/// Control API Gateway instances run by systemd.
#[derive(Debug, Parser)]
#[command(name = "gatewayctl", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// gatewayctl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take an instance out of its load balancers' pool: its LB health endpoint answers 503
    /// for the instance's drain delay while it keeps serving. `ExecStop=` runs
    /// `gatewayctl drain --wait %i`, so every stop, restart and shutdown drains first.
    #[command(
        after_help = "INSTANCE is group/instance as the topology names it (\"payments-eu/edge node 1\"),\n\
the unit's instance string (group1-server1, what %i gives) or the unit name.\n\n\
Exit status: 0 when drained (or when the instance is not running: nothing to drain), 1 on errors."
    )]
    Drain {
        /// Return only when the drain delay is over (what ExecStop= needs).
        #[arg(long)]
        wait: bool,
        /// The instance.
        instance: String,
    },
}

/// Turn what the operator typed into the unit's instance string.
pub fn instance_string(arg: &str) -> Result<String, String> {
    let arg = arg
        .strip_prefix("gateway@")
        .map(|a| a.strip_suffix(".service").unwrap_or(a))
        .unwrap_or(arg);
    if let Some((group, instance)) = arg.split_once('/') {
        return name::instance_string(group, instance).map_err(|e| format!("{arg:?}: {e}"));
    }
    name::parse_instance_string(arg)
        .map(|_| arg.to_string())
        .map_err(|_| {
            format!("{arg:?} is neither group/instance nor a unit instance like group1-server1")
        })
}

/// Run gatewayctl; returns the exit status.
pub fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Drain { wait, instance } => drain_command(&instance, wait),
    }
}

fn drain_command(arg: &str, wait: bool) -> i32 {
    let instance = match instance_string(arg) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("gatewayctl: {e}");
            return 1;
        }
    };
    let shown = name::parse_instance_string(&instance)
        .map(|(g, i)| format!("{g}/{i}"))
        .unwrap_or(instance.clone());
    // Under ExecStop=, systemd sets $MAINPID only while the main process lives.
    if std::env::var_os("INVOCATION_ID").is_some() && std::env::var_os("MAINPID").is_none() {
        eprintln!("{shown}: the gateway has already exited; nothing to drain");
        return 0;
    }
    let socket = drain::control_socket(&instance);
    let result = drain::request(&socket, wait, |delay| {
        eprintln!(
            "draining {shown}: its LB health endpoint answers 503 for {}s",
            delay.as_secs_f64()
        );
    });
    match result {
        Ok(DrainOutcome::Started(_)) => 0,
        Ok(DrainOutcome::Drained(delay)) => {
            eprintln!("drained {shown} after {}s", delay.as_secs_f64());
            0
        }
        Ok(DrainOutcome::GatewayGone) => {
            eprintln!("{shown}: the gateway exited while draining");
            0
        }
        Err(e @ DrainError::NotRunning { .. }) => {
            eprintln!("{shown}: {e}");
            0
        }
        Err(e) => {
            eprintln!("gatewayctl: drain {shown}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_named_three_ways() {
        assert_eq!(instance_string("group1/server1").unwrap(), "group1-server1");
        assert_eq!(
            instance_string("payments-eu/edge node 1").unwrap(),
            r"payments\x2deu-edge\x20node\x201"
        );
        assert_eq!(
            instance_string(r"payments\x2deu-edge\x20node\x201").unwrap(),
            r"payments\x2deu-edge\x20node\x201"
        );
        assert_eq!(
            instance_string("gateway@group1-server1.service").unwrap(),
            "group1-server1"
        );
        assert!(instance_string("payments-eu-edge").is_err());
    }
}
