//! Golden tests of the generator: each `tests/generator/NN-name/input` tree is a host's files
//! (`opt/`, `etc/`, `proc/sys/kernel/hostname`); the generator's normal output directory must
//! equal `expected/` byte for byte (symlink targets included), its log must equal
//! `expected.stderr`, early/late dirs stay empty, it exits 0, and every unit it produced passes
//! `systemd-analyze verify`. `UPDATE_GOLDEN=1` rewrites the expectations from the output.
//! A property test feeds random topologies, configs and init scripts and asserts the same
//! invariants (no panic, exit 0, every output verifies).

mod common;

use common::{run_generator, verify_generated};
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(String),
    Link(PathBuf),
}

fn listing(dir: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&path).unwrap()));
            } else if ft.is_dir() {
                out.insert(rel, Node::Dir);
                walk(base, &path, out);
            } else {
                out.insert(rel, Node::File(fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn describe_diff(expected: &BTreeMap<PathBuf, Node>, actual: &BTreeMap<PathBuf, Node>) -> String {
    let mut msg = String::new();
    for (p, node) in expected {
        match actual.get(p) {
            None => msg += &format!("missing: {}\n", p.display()),
            Some(a) if a != node => match (node, a) {
                (Node::File(e), Node::File(a)) => {
                    msg += &format!("differs: {}\n", p.display());
                    for (i, (el, al)) in e.lines().zip(a.lines()).enumerate() {
                        if el != al {
                            msg += &format!(
                                "  line {}:\n    expected: {el}\n    actual:   {al}\n",
                                i + 1
                            );
                            break;
                        }
                    }
                    if e.lines().count() != a.lines().count() {
                        msg += &format!(
                            "  expected {} lines, got {}\n",
                            e.lines().count(),
                            a.lines().count()
                        );
                    }
                }
                _ => msg += &format!("differs: {}: expected {node:?}, got {a:?}\n", p.display()),
            },
            _ => {}
        }
    }
    for p in actual.keys().filter(|p| !expected.contains_key(*p)) {
        msg += &format!("unexpected: {}\n", p.display());
    }
    msg
}

fn golden_case(case: PathBuf) -> Result<(), Failed> {
    let scratch = tempfile::tempdir()?;
    let out = scratch.path().join("out");
    let result = run_generator(&case.join("input"), &out);
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    if result.status.code() != Some(0) {
        return Err(format!("generator exited with {}; stderr:\n{stderr}", result.status).into());
    }
    for d in ["early", "late"] {
        if fs::read_dir(out.join(d))?.next().is_some() {
            return Err(format!("the generator wrote into its {d} directory").into());
        }
    }
    let expected_dir = case.join("expected");
    let expected_log = case.join("expected.stderr");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = fs::remove_dir_all(&expected_dir);
        common::copy_tree(&out.join("normal"), &expected_dir)?;
        fs::write(&expected_log, &stderr)?;
    }
    // git keeps no empty directories: an absent expected/ is an empty output.
    let diff = describe_diff(&listing(&expected_dir), &listing(&out.join("normal")));
    if !diff.is_empty() {
        return Err(format!(
            "output differs from {}:\n{diff}(UPDATE_GOLDEN=1 rewrites the expectation)",
            expected_dir.display()
        )
        .into());
    }
    let want_log = fs::read_to_string(&expected_log).unwrap_or_default();
    if want_log != stderr {
        return Err(format!(
            "log differs from {}:\n--- expected\n{want_log}--- actual\n{stderr}",
            expected_log.display()
        )
        .into());
    }
    if common::have_systemd_analyze() || std::env::var_os("CI").is_some() {
        verify_generated(&out.join("normal"), scratch.path())?;
    }
    Ok(())
}

mod random {
    //! Random installations for the property test.
    use proptest::prelude::*;
    use std::fs;
    use std::path::Path;

    /// Names operators and tools have produced, plus hostile ones.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("group1".to_string()),
            Just("server1".to_string()),
            Just("payments-eu".to_string()),
            Just("edge node 1".to_string()),
            Just("zürich".to_string()),
            Just("100%".to_string()),
            Just("".to_string()),
            Just(".".to_string()),
            Just("a\nb".to_string()),
            "[a-z0-9 _.%\\\\\"/ü-]{1,12}",
            "[a-z]{200,260}",
        ]
    }

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("group-2".to_string()),
            Just("instance-1".to_string()),
            Just("..".to_string()),
            Just("".to_string()),
            Just("a/b".to_string()),
            "[a-z0-9-]{1,8}",
        ]
    }

    /// A JSON value that is usually, but not always, what the field should hold.
    fn field(
        good: impl Strategy<Value = serde_json::Value> + 'static,
    ) -> impl Strategy<Value = Option<serde_json::Value>> {
        prop_oneof![
            8 => good.prop_map(Some),
            1 => Just(None),
            1 => Just(Some(serde_json::json!([1, 2]))),
        ]
    }

    fn service() -> impl Strategy<Value = serde_json::Value> {
        (
            field(id().prop_map(serde_json::Value::from)),
            field(name().prop_map(serde_json::Value::from)),
            field(
                prop_oneof![Just("gateway"), Just("nodemanager"), Just("apimanager")]
                    .prop_map(serde_json::Value::from),
            ),
            field(prop_oneof![Just("host-1"), Just("host-2")].prop_map(serde_json::Value::from)),
            proptest::option::of(0u32..70000),
            any::<bool>(),
        )
            .prop_map(|(id, name, kind, host, port, enabled)| {
                let mut m = serde_json::Map::new();
                for (k, v) in [("id", id), ("name", name), ("type", kind), ("hostID", host)] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                if let Some(p) = port {
                    m.insert("managementPort".into(), p.into());
                }
                m.insert("enabled".into(), enabled.into());
                serde_json::Value::Object(m)
            })
    }

    fn group() -> impl Strategy<Value = serde_json::Value> {
        (
            field(id().prop_map(serde_json::Value::from)),
            field(name().prop_map(serde_json::Value::from)),
            prop::collection::vec(service(), 0..5),
        )
            .prop_map(|(id, name, services)| {
                let mut m = serde_json::Map::new();
                if let Some(v) = id {
                    m.insert("id".into(), v);
                }
                if let Some(v) = name {
                    m.insert("name".into(), v);
                }
                m.insert("services".into(), services.into());
                serde_json::Value::Object(m)
            })
    }

    const CONFIG_FRAGMENTS: [&str; 12] = [
        "",
        "[defaults]\ndrain_delay = \"5s\"\n",
        "[defaults]\ndrain_delay = 9999\n",
        "[defaults]\ncassandra = \"cassandra.service\"\ncredentials = [\"passphrase\"]\n",
        "[defaults]\nhealth_url = \"http://127.0.0.1:{management_port}/x%y\"\n",
        "[defaults]\nwatchdog = 0\nstart_timeout = \"1min 30s\"\n",
        "[instances.\"group1/server1\"]\nautostart = false\nencrypted_credentials = [\"p:/etc/p.cred\"]\n",
        "[instances.\"group1/server1\"]\nstart_command = [\"relative\"]\n",
        "[instances.\"100%/edge node 1\"]\nstart_command = [\"/bin/gw\", \"--name=%i \\\"x\\\"\"]\n",
        "user = \"gw\"\ninstall_dir = \"/home/gw/apigateway\"\n",
        "this is not toml = = \n",
        "[nodemanager]\nautostart = false\n",
    ];

    const SCRIPT_FRAGMENTS: [&str; 6] = [
        "VINSTDIR=/opt/apigateway/groups/group-2/instance-1\n",
        "VDISTDIR=/elsewhere\n",
        "/opt/apigateway/posix/bin/startinstance -n server1 -g group1 -d\n",
        "/opt/apigateway/posix/bin/startinstance -h \"$VINSTDIR\"\n",
        "\"$VDISTDIR/posix/bin/nodemanager\" -d\n",
        "echo 'unbalanced \"quotes\n",
    ];

    /// A whole host: topology, config, init scripts.
    #[derive(Debug, Clone)]
    pub struct Host {
        topology: String,
        config: String,
        scripts: Vec<(String, String)>,
        hostname: String,
    }

    pub fn host() -> impl Strategy<Value = Host> {
        (
            prop::collection::vec(group(), 0..5),
            prop::bool::weighted(0.1),
            prop::collection::vec(0..CONFIG_FRAGMENTS.len(), 0..4),
            prop::collection::vec((name(), prop::collection::vec(0..SCRIPT_FRAGMENTS.len(), 0..3)), 0..4),
            prop_oneof![Just("gw1.example.com"), Just("gw1"), Just("GW2")],
        )
            .prop_map(|(groups, truncate, config, scripts, hostname)| {
                let mut topology = serde_json::json!({
                    "hosts": [{"id": "host-1", "name": "gw1.example.com"}, {"id": "host-2", "name": "gw2"}],
                    "groups": groups,
                })
                .to_string();
                if truncate {
                    topology.truncate(topology.len() / 2);
                }
                Host {
                    topology,
                    config: config.into_iter().map(|i| CONFIG_FRAGMENTS[i]).collect::<Vec<_>>().join("\n"),
                    scripts: scripts
                        .into_iter()
                        .map(|(n, frags)| {
                            (format!("vshell-{}", n.replace(['/', '\n', '\0'], "_")), frags.into_iter().map(|i| SCRIPT_FRAGMENTS[i]).collect())
                        })
                        .collect(),
                    hostname: hostname.to_string(),
                }
            })
    }

    impl Host {
        /// Write the host's files under `root`, creating every instance directory the
        /// topology names (so most instances are generated, not rejected).
        pub fn write(&self, root: &Path) {
            let install = root.join("opt/apigateway");
            fs::create_dir_all(install.join("groups")).unwrap();
            fs::write(install.join("groups/topology.json"), &self.topology).unwrap();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&self.topology) {
                for g in v["groups"].as_array().into_iter().flatten() {
                    for s in g["services"].as_array().into_iter().flatten() {
                        if let (Some(gid), Some(sid)) = (g["id"].as_str(), s["id"].as_str()) {
                            if [gid, sid]
                                .iter()
                                .all(|x| !x.is_empty() && !x.contains("..") && !x.starts_with('/'))
                            {
                                let dir = install.join("groups").join(gid).join(sid);
                                let _ = fs::create_dir_all(dir.join("conf"));
                                let _ = fs::write(
                                    dir.join("conf/envSettings.props"),
                                    "env.PORT.TRAFFIC=8080\n",
                                );
                            }
                        }
                    }
                }
            }
            fs::create_dir_all(root.join("etc/gateway-systemd")).unwrap();
            fs::write(root.join("etc/gateway-systemd/gateway.toml"), &self.config).unwrap();
            fs::create_dir_all(root.join("etc/init.d")).unwrap();
            for (name, text) in &self.scripts {
                let _ = fs::write(root.join("etc/init.d").join(name), text);
            }
            fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
            fs::write(root.join("proc/sys/kernel/hostname"), &self.hostname).unwrap();
        }
    }
}

fn property_random_installations() -> Result<(), Failed> {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let verify = common::have_systemd_analyze() || std::env::var_os("CI").is_some();
    runner
        .run(&random::host(), |host| {
            let scratch = tempfile::tempdir().unwrap();
            let root = scratch.path().join("root");
            host.write(&root);
            let out = scratch.path().join("out");
            let result = run_generator(&root, &out);
            let stderr = String::from_utf8_lossy(&result.stderr);
            if result.status.code() != Some(0) || stderr.contains("panicked") {
                return Err(TestCaseError::fail(format!(
                    "exit {}, stderr:\n{stderr}",
                    result.status
                )));
            }
            if verify {
                verify_generated(&out.join("normal"), scratch.path())
                    .map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
        .map_err(|e| Failed::from(e.to_string()))
}

/// `gatewayctl check-config` on the golden inputs: 0 on a good config, 1 on each broken one,
/// every error naming the file, line and key where the bad value was written, and each
/// setting's origin shown.
fn check_config_names_where() -> Result<(), Failed> {
    let run = |case: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
            .arg("check-config")
            .env(
                "GATEWAY_SYSTEMD_ROOT",
                common::repo()
                    .join("tests/generator")
                    .join(case)
                    .join("input"),
            )
            .output()
            .expect("run gatewayctl check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = run("01-sample-install");
    if code != Some(0) || !out.contains("drain_delay") || !out.contains("built-in default") {
        return Err(format!("check-config on a good config: {code:?}\n{out}").into());
    }
    for (case, wants) in [
        (
            "12-config-syntax-error",
            vec!["gateway.toml.d/50-broken.toml:2:", "HELD"],
        ),
        (
            "13-config-bad-default",
            vec![
                "gateway.toml:3: [defaults] drain_delay",
                "# /etc/gateway-systemd/gateway.toml:2 [defaults]",
            ],
        ),
        (
            "14-config-bad-instance-value",
            vec![
                "gateway.toml:6: [instances.\"group1/server1\"] lb_rise",
                "gateway.toml:10: [instances.\"group1/server2\"] drain_mode",
            ],
        ),
    ] {
        let (code, out) = run(case);
        if code != Some(1) || wants.iter().any(|w| !out.contains(w)) {
            return Err(format!(
                "check-config on {case}: exit {code:?}, expected 1 and {wants:?} in:\n{out}"
            )
            .into());
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let dir = common::repo().join("tests/generator");
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/generator")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("input").is_dir())
        .collect();
    cases.sort();
    let mut trials: Vec<Trial> = cases
        .into_iter()
        .map(|case| {
            let name = format!("golden::{}", case.file_name().unwrap().to_string_lossy());
            Trial::test(name, move || golden_case(case))
        })
        .collect();
    trials.push(Trial::test(
        "check_config::names_file_line_and_key_and_fails_on_errors",
        check_config_names_where,
    ));
    trials.push(Trial::test(
        "property::random_installations_never_fail_and_always_verify",
        property_random_installations,
    ));
    libtest_mimic::run(&args, trials).exit();
}
