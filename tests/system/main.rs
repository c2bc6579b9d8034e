//! System tests against a real systemd booted in a container (see `harness.rs`).
//!
//! Without root or systemd-nspawn they are skipped on a workstation, but with `CI=true` a
//! missing prerequisite fails the run: a green CI means these ran.

mod backup;
mod boot;
#[path = "../common/mod.rs"]
mod common;
mod ctl;
mod drill;
mod harness;
mod launcher;
mod load;
mod migrate;
mod packages;

use common::install_package;
use harness::{install_domain, Container};
use libtest_mimic::{Arguments, Failed, Trial};
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub(crate) const SERVER1: &str = "gateway@group1-server1.service";
pub(crate) const SERVER2: &str = "gateway@group1-server2.service";
pub(crate) const EDGE: &str = r"gateway@payments\x2deu-edge\x20node\x201.service";
pub(crate) const NODE_MANAGER: &str = "gateway-nodemanager.service";

/// A legacy script that maps to nothing: it must be left to systemd-sysv-generator.
const UNRELATED_SCRIPT: &str =
    "#!/bin/sh\n### BEGIN INIT INFO\n# Provides: vshell-unrelated\n# Default-Start: 2 3 4 5\n\
# Default-Stop: 0 1 6\n### END INIT INFO\necho \"not an API Gateway\"\n";

pub(crate) fn setup_host(root: &Path, domain: &Path) -> Result<(), String> {
    install_package(root)?;
    install_domain(root, domain)?;
    fs::write(root.join("etc/hostname"), "gw1.example.com\n").map_err(|e| e.to_string())?;
    let script = root.join("etc/init.d/vshell-unrelated");
    fs::write(&script, UNRELATED_SCRIPT).map_err(|e| e.to_string())?;
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    // Compile the journal catalog as the package's postinst does.
    harness::run(
        std::process::Command::new("journalctl")
            .arg(format!("--root={}", root.display()))
            .arg("--update-catalog"),
    )
    .map(|_| ())
}

/// The demo domain's container, booted on first use and shared by the tests that only read.
struct Shared(Mutex<Option<Result<Arc<Container>, String>>>);

impl Shared {
    fn get(&self) -> Result<Arc<Container>, Failed> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let booted = slot.get_or_insert_with(|| {
            Container::boot(|root| {
                setup_host(root, &common::repo().join("demo/domain"))?;
                // The shared container starts with nothing running: each test starts what it
                // needs (the boot test proves the preset's autostart).
                harness::run(
                    std::process::Command::new("systemctl")
                        .arg(format!("--root={}", root.display()))
                        .args(["disable", "gateway.target"]),
                )
                .map(|_| ())
            })
            .map(Arc::new)
        });
        booted
            .clone()
            .map_err(|e| Failed::from(format!("booting the container failed: {e}")))
    }
}

/// A list-valued property (`Wants=`): systemctl quotes names that hold backslashes.
pub(crate) fn units(list: &str) -> Vec<String> {
    list.split_whitespace()
        .map(|u| u.trim_matches('"').replace("\\\\", "\\"))
        .collect()
}

pub(crate) fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn instance_unit_is_loaded_with_its_drop_in(c: &Container) -> Result<(), Failed> {
    check(c.property(SERVER1, "LoadState")? == "loaded", || {
        format!("{SERVER1} is not loaded")
    })?;
    let fragment = c.property(SERVER1, "FragmentPath")?;
    // Debian's merged /usr shows /lib for /usr/lib.
    check(
        [
            "/usr/lib/systemd/system/gateway@.service",
            "/lib/systemd/system/gateway@.service",
        ]
        .contains(&fragment.as_str()),
        || format!("FragmentPath is {fragment}"),
    )?;
    let dropins = c.property(SERVER1, "DropInPaths")?;
    check(
        dropins
            .contains("/run/systemd/generator/gateway@group1-server1.service.d/50-generated.conf"),
        || format!("DropInPaths of {SERVER1}: {dropins}"),
    )?;
    let env = c.property(SERVER1, "Environment")?;
    for want in [
        "VDISTDIR=/opt/apigateway",
        "VINSTDIR=/opt/apigateway/groups/group-2/instance-1",
        "GATEWAY_HEALTH_URL=http://127.0.0.1:{traffic_port}/healthcheck",
        "GATEWAY_MANAGEMENT_PORT=8085",
    ] {
        check(env.contains(want), || {
            format!("Environment of {SERVER1} lacks {want}: {env}")
        })?;
    }
    let stop = c.property(SERVER1, "TimeoutStopUSec")?;
    check(stop == "1min 3s", || {
        format!("TimeoutStopUSec of {SERVER1} is {stop}, expected the demo's drain 3s + drain_timeout 30s + grace 30s")
    })?;
    let user = c.property(SERVER1, "User")?;
    check(user == "gateway", || {
        format!("User of {SERVER1} is {user:?}")
    })?;
    Ok(())
}

fn escaped_names_resolve_to_the_operators_names(c: &Container) -> Result<(), Failed> {
    check(c.property(EDGE, "LoadState")? == "loaded", || {
        format!("{EDGE} is not loaded")
    })?;
    let env = c.property(EDGE, "Environment")?;
    check(
        env.contains("GATEWAY_GROUP=payments-eu")
            && env.contains("\"GATEWAY_INSTANCE=edge node 1\""),
        || format!("Environment of {EDGE}: {env}"),
    )?;
    let desc = c.property(EDGE, "Description")?;
    check(
        desc == "API Gateway instance edge node 1 in group payments-eu",
        || format!("Description: {desc}"),
    )?;
    // systemd's own unescaping of the instance string gives group/instance back.
    let escaped = c.ok(&["systemd-escape", "--unescape", "--instance", EDGE])?;
    check(escaped.trim() == "payments-eu/edge node 1", || {
        format!("systemd-escape --unescape: {escaped}")
    })
}

fn gateway_target_wants_the_autostart_instances(c: &Container) -> Result<(), Failed> {
    let wants = c.property("gateway.target", "Wants")?;
    let listed = units(&wants);
    for unit in [SERVER1, EDGE, NODE_MANAGER] {
        check(listed.iter().any(|u| u == unit), || {
            format!("gateway.target does not want {unit}: {wants}")
        })?;
    }
    check(!listed.iter().any(|u| u == SERVER2), || {
        format!("gateway.target wants {SERVER2}, which has autostart = false: {wants}")
    })?;
    check(!wants.contains("other"), || {
        format!("gateway.target wants an instance of another host: {wants}")
    })?;
    let part_of = c.property(SERVER2, "PartOf")?;
    check(part_of == "gateway.target", || {
        format!("PartOf of {SERVER2}: {part_of}")
    })
}

fn legacy_init_scripts_are_masked_while_they_still_exist(c: &Container) -> Result<(), Failed> {
    for (script, unit) in [
        (
            "/etc/init.d/vshell-group1-server1",
            "vshell-group1-server1.service",
        ),
        (
            "/etc/init.d/vshell-payments-eu-edge-node-1",
            "vshell-payments-eu-edge-node-1.service",
        ),
        (
            "/etc/init.d/vshell-Node-Manager-on-gw1",
            "vshell-Node-Manager-on-gw1.service",
        ),
    ] {
        c.ok(&["test", "-x", script])?;
        let state = c.property(unit, "LoadState")?;
        check(state == "masked", || {
            format!("{unit} is {state}, not masked")
        })?;
        let start = c.exec(&["systemctl", "start", unit]);
        let err = String::from_utf8_lossy(&start.stderr).to_string();
        check(!start.status.success() && err.contains("masked"), || {
            format!("starting {unit} was not refused as masked: {err}")
        })?;
        let active = c.property(unit, "ActiveState")?;
        check(active == "inactive", || format!("{unit} is {active}"))?;
    }
    // A script that maps to no instance stays a working sysv unit.
    let state = c.property("vshell-unrelated.service", "LoadState")?;
    check(state == "loaded", || {
        format!("vshell-unrelated.service is {state}; an unmapped script must be left alone")
    })?;
    let source = c.property("vshell-unrelated.service", "SourcePath")?;
    check(source == "/etc/init.d/vshell-unrelated", || {
        format!("vshell-unrelated.service comes from {source}")
    })
}

fn daemon_reload_applies_config_changes(c: &Container) -> Result<(), Failed> {
    c.with_config(
        "50-system-test.toml",
        "[instances.\"group1/server2\"]\nautostart = true\ndrain_delay = \"45s\"\n",
        || {
            let wants = c.property("gateway.target", "Wants")?;
            check(units(&wants).iter().any(|u| u == SERVER2), || {
                format!("after reload gateway.target does not want {SERVER2}: {wants}")
            })?;
            let stop = c.property(SERVER2, "TimeoutStopUSec")?;
            check(stop == "1min 45s", || {
                format!("TimeoutStopUSec of {SERVER2} is {stop}, expected 45s + 30s + 30s")
            })
        },
    )
}

fn broken_topology_still_boots_to_running_with_the_good_instances() -> Result<(), Failed> {
    let c = Container::boot(|root| {
        setup_host(root, &common::repo().join("demo/domain"))?;
        let topology = root.join("opt/apigateway/groups/topology.json");
        let text = fs::read_to_string(&topology).map_err(|e| e.to_string())?;
        // server2 loses its hostID; a new entry names a directory outside the installation.
        let broken = text
            .replacen("\"hostID\": \"host-1\", \"managementPort\": 8086", "\"managementPort\": 8086", 1)
            .replacen("\"services\": [", "\"services\": [ {\"id\": \"..\", \"name\": \"escape\", \"type\": \"gateway\", \"hostID\": \"host-1\"},", 1);
        if broken == text {
            return Err("the demo topology changed; this test's edits no longer apply".into());
        }
        fs::write(&topology, broken).map_err(|e| e.to_string())
    })?;
    c.wait_until_running(
        std::time::Duration::from_secs(60),
        "a boot with a broken topology",
    )?;
    for unit in [SERVER1, EDGE] {
        let dropins = c.property(unit, "DropInPaths")?;
        check(dropins.contains("50-generated.conf"), || {
            format!("{unit} has no generated drop-in: {dropins}")
        })?;
    }
    let dropins = c.property(SERVER2, "DropInPaths")?;
    check(dropins.is_empty(), || {
        format!("{SERVER2} has a broken topology entry but got a drop-in: {dropins}")
    })?;
    let wants = c.property("gateway.target", "Wants")?;
    let listed = units(&wants);
    check(
        listed.iter().any(|u| u == SERVER1) && !listed.iter().any(|u| u == SERVER2),
        || format!("gateway.target wants: {wants}"),
    )?;
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // One container is shared; the tests run one at a time against it.
    args.test_threads = Some(1);
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let missing = harness::missing_prerequisite();
    if let Some(why) = &missing {
        if ci {
            eprintln!("system tests cannot run: {why}; with CI=true that is a failure");
            std::process::exit(1);
        }
    }
    let shared = Arc::new(Shared(Mutex::new(None)));
    type Check = fn(&Container) -> Result<(), Failed>;
    let shared_tests: Vec<(&str, Check)> = vec![
        (
            "generator::instance_unit_is_loaded_with_its_drop_in",
            instance_unit_is_loaded_with_its_drop_in,
        ),
        (
            "generator::escaped_names_resolve_to_the_operators_names",
            escaped_names_resolve_to_the_operators_names,
        ),
        (
            "generator::gateway_target_wants_the_autostart_instances",
            gateway_target_wants_the_autostart_instances,
        ),
        (
            "generator::legacy_init_scripts_are_masked_while_they_still_exist",
            legacy_init_scripts_are_masked_while_they_still_exist,
        ),
        (
            "generator::daemon_reload_applies_config_changes",
            daemon_reload_applies_config_changes,
        ),
        (
            "launcher::start_waits_for_the_health_check",
            launcher::start_waits_for_the_health_check,
        ),
        (
            "launcher::hung_gateway_is_restarted_by_the_watchdog",
            launcher::hung_gateway_is_restarted_by_the_watchdog,
        ),
        (
            "launcher::crashed_gateway_is_restarted",
            launcher::crashed_gateway_is_restarted,
        ),
        (
            "launcher::stop_drains_then_stops",
            launcher::stop_drains_then_stops,
        ),
        ("launcher::restart_drains", launcher::restart_drains),
        (
            "launcher::passphrase_is_delivered_and_never_exposed",
            launcher::passphrase_is_delivered_and_never_exposed,
        ),
        (
            "launcher::never_two_copies_even_at_the_same_moment",
            launcher::never_two_copies_even_at_the_same_moment,
        ),
        (
            "launcher::journal_fields_and_catalog",
            launcher::journal_fields_and_catalog,
        ),
        (
            "launcher::slow_start_is_extended_but_bounded",
            launcher::slow_start_is_extended_but_bounded,
        ),
        (
            "launcher::node_manager_starts_and_stops",
            launcher::node_manager_starts_and_stops,
        ),
        (
            "launcher::asked_passphrase_reaches_the_gateway",
            launcher::asked_passphrase_reaches_the_gateway,
        ),
        ("gatewayctl::start_status_stop", ctl::start_status_stop),
        (
            "gatewayctl::failed_start_is_explained",
            ctl::failed_start_is_explained,
        ),
        (
            "gatewayctl::exit_codes_and_messages",
            ctl::exit_codes_and_messages,
        ),
        (
            "gatewayctl::node_manager_commands",
            ctl::node_manager_commands,
        ),
        (
            "gatewayctl::rolling_restart_takes_one_out_at_a_time",
            ctl::rolling_restart_takes_one_out_at_a_time,
        ),
        (
            "gatewayctl::restarting_gateway_target_rolls_each_group",
            ctl::restarting_gateway_target_rolls_each_group,
        ),
        (
            "gatewayctl::rolling_restart_waits_for_the_load_balancer",
            ctl::rolling_restart_waits_for_the_load_balancer,
        ),
        (
            "launcher::adaptive_drain_ends_when_the_balancer_took_it_out",
            ctl::adaptive_drain_ends_when_the_balancer_took_it_out,
        ),
        (
            "drain::requests_in_flight_finish_before_the_gateway_stops",
            ctl::requests_in_flight_finish_before_the_gateway_stops,
        ),
        (
            "drain::adaptive_drain_waits_for_a_long_request_through_haproxy",
            ctl::adaptive_drain_waits_for_a_long_request_through_haproxy,
        ),
        (
            "drain::zero_downtime_under_load",
            load::zero_downtime_under_load,
        ),
        (
            "gatewayctl::rolling_restart_watches_the_balancers_traffic",
            ctl::rolling_restart_watches_the_balancers_traffic,
        ),
        (
            "gatewayctl::status_shows_a_restart_pending",
            ctl::status_shows_a_restart_pending,
        ),
        (
            "backup::timer_backs_up_when_changed_and_keeps_what_the_policy_says",
            backup::timer_backs_up_when_changed_and_keeps_what_the_policy_says,
        ),
        (
            "backup::quiesce_takes_one_instance_out_at_a_time",
            backup::quiesce_takes_one_instance_out_at_a_time,
        ),
        ("compat::startinstance", ctl::startinstance_compatible),
        ("compat::nodemanager", ctl::nodemanager_compatible),
        ("gatewayctl::migrate_initd_plan", ctl::migrate_initd_plan),
        (
            "gatewayctl::remote_host_over_ssh",
            ctl::remote_host_over_ssh,
        ),
    ];
    let mut trials: Vec<Trial> = shared_tests
        .into_iter()
        .map(|(name, f)| {
            let shared = shared.clone();
            Trial::test(name, move || {
                let c = shared.get()?;
                f(&c)
            })
            .with_ignored_flag(missing.is_some())
        })
        .collect();
    trials.push(
        Trial::test(
            "generator::broken_topology_still_boots_to_running_with_the_good_instances",
            broken_topology_still_boots_to_running_with_the_good_instances,
        )
        .with_ignored_flag(missing.is_some()),
    );
    trials.push(
        Trial::test(
            "generator::messages_all_reach_the_kernel_log",
            boot::generator_messages_all_reach_the_kernel_log,
        )
        .with_ignored_flag(missing.is_some()),
    );
    trials.push(
        Trial::test(
            "boot::autostart_separate_mount_enable_disable_reboot",
            boot::boot_autostart_separate_mount_enable_disable_reboot,
        )
        .with_ignored_flag(missing.is_some()),
    );
    trials.push(
        Trial::test(
            "migrate_initd::apply_and_rollback_never_run_two_copies",
            migrate::apply_and_rollback_never_run_two_copies,
        )
        .with_ignored_flag(missing.is_some()),
    );
    trials.push(
        Trial::test(
            "backup::restore_onto_a_cold_standby_of_another_name",
            backup::restore_onto_a_cold_standby_of_another_name,
        )
        .with_ignored_flag(missing.is_some()),
    );
    trials.push(
        Trial::test(
            "backup::hooks_dump_a_database_into_the_archive",
            backup::hooks_dump_a_database_into_the_archive,
        )
        .with_ignored_flag(missing.is_some()),
    );
    // The packages are built by .ci/run (packaging/build-deb, packaging/build-rpm); without
    // them the tests are skipped on a workstation, and fail under CI.
    let no_packages = packages::packages().err();
    if let (Some(why), true) = (&no_packages, ci) {
        eprintln!("system tests cannot run: {why}; with CI=true that is a failure");
        std::process::exit(1);
    }
    trials.push(
        Trial::test(
            "packages::deb_install_upgrade_remove_purge",
            packages::deb_install_upgrade_remove_purge,
        )
        .with_ignored_flag(missing.is_some() || no_packages.is_some()),
    );
    trials.push(
        Trial::test(
            "packages::rpm_install_upgrade_erase",
            packages::rpm_install_upgrade_erase,
        )
        .with_ignored_flag(missing.is_some() || no_packages.is_some()),
    );
    trials.push(
        Trial::test(
            "drill::measures_recovery_time_and_point",
            drill::drill_measures_recovery_time_and_point,
        )
        .with_ignored_flag(missing.is_some()),
    );
    if let Some(why) = &missing {
        eprintln!("skipping system tests: {why}");
    } else {
        eprintln!(
            "system tests boot {} (systemd {})",
            harness::lower_root().display(),
            harness::systemd_version(&harness::lower_root())
        );
    }
    let conclusion = libtest_mimic::run(&args, trials);
    // Power the shared container off before exiting (process::exit runs no destructors).
    drop(shared.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    conclusion.exit();
}
