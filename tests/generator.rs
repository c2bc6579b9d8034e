//! Golden tests of the generator: each `tests/generator/NN-name/input` tree is a host's files
//! (`opt/`, `etc/`, `proc/sys/kernel/hostname`); the generator's normal output directory must
//! equal `expected/` byte for byte (symlink targets included), its log must equal
//! `expected.stderr`, early/late dirs stay empty, it exits 0, and every unit it produced passes
//! `systemd-analyze verify`. `UPDATE_GOLDEN=1` rewrites the expectations from the output.
//! A property test feeds random topologies, configs and init scripts and asserts the same
//! invariants (no panic, exit 0, every output verifies), and that the output is what the host's
//! files call for: a drop-in for every valid local instance and nothing else, an autostart link
//! exactly for those that start at boot, held exactly where the config is refused, masks exactly
//! for the legacy scripts that start what we generate. Its configs always parse; a deliberately
//! broken file is reported and holds what it reaches. Unit-name escaping is compared with the
//! real `systemd-escape`.

mod common;

use common::{run_generator, verify_generated};
use gateway_systemd::units::name as unit_name;
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::{BTreeMap, BTreeSet};
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
    //! Random installations for the property test, and what the generator must make of each
    //! ([`Expected`]), worked out from the documented rules (DESIGN.md, the config reference,
    //! the module docs of `install` and `initd`), not by calling the code under test. Only the
    //! unit-name escaping is taken from the library: it is checked against `systemd-escape`.
    use gateway_systemd::units::name as unit_name;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs;
    use std::path::Path;

    /// Names operators and tools have produced, plus hostile ones.
    pub fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => Just("group1".to_string()),
            2 => Just("server1".to_string()),
            1 => Just("payments-eu".to_string()),
            1 => Just("edge node 1".to_string()),
            1 => Just("zürich".to_string()),
            1 => Just("100%".to_string()),
            1 => Just("".to_string()),
            1 => Just(".".to_string()),
            1 => Just("a\nb".to_string()),
            6 => "[a-z][a-z0-9 -]{0,10}",
            4 => "[a-z0-9 _.%\\\\\"/ü-]{1,12}",
            1 => "[a-z]{200,260}",
        ]
    }

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => Just("group-2".to_string()),
            2 => Just("instance-1".to_string()),
            1 => Just("..".to_string()),
            1 => Just("".to_string()),
            1 => Just("a/b".to_string()),
            20 => "[a-z0-9-]{1,8}",
        ]
    }

    /// A topology field: what it should hold, absent, or of the wrong JSON type.
    #[derive(Debug, Clone)]
    pub enum Field<T> {
        Good(T),
        Missing,
        Wrong,
    }

    impl<T: Clone + Into<serde_json::Value>> Field<T> {
        fn put(&self, m: &mut serde_json::Map<String, serde_json::Value>, key: &str) {
            match self {
                Field::Good(v) => {
                    m.insert(key.into(), v.clone().into());
                }
                Field::Missing => {}
                Field::Wrong => {
                    m.insert(key.into(), serde_json::json!([1, 2]));
                }
            }
        }
        fn good(&self) -> Option<&T> {
            match self {
                Field::Good(v) => Some(v),
                _ => None,
            }
        }
    }

    /// Usually, but not always, what the field should hold.
    fn field<T: Clone + std::fmt::Debug + 'static>(
        good: impl Strategy<Value = T> + 'static,
    ) -> impl Strategy<Value = Field<T>> {
        prop_oneof![
            40 => good.prop_map(Field::Good),
            1 => Just(Field::Missing),
            1 => Just(Field::Wrong),
        ]
    }

    #[derive(Debug, Clone)]
    pub struct ServiceSpec {
        id: Field<String>,
        name: Field<String>,
        kind: Field<&'static str>,
        host: Field<&'static str>,
        port: Option<u32>,
        enabled: bool,
        /// Its instance directory is not created.
        dir_missing: bool,
    }

    fn service() -> impl Strategy<Value = ServiceSpec> {
        (
            field(id()),
            field(name()),
            field(prop_oneof![
                8 => Just("gateway"),
                2 => Just("nodemanager"),
                1 => Just("apimanager")
            ]),
            field(prop_oneof![4 => Just("host-1"), 1 => Just("host-2")]),
            prop_oneof![
                3 => (1u32..65536).prop_map(Some),
                1 => Just(None),
                1 => (0u32..70000).prop_map(Some),
            ],
            any::<bool>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(
                |(id, name, kind, host, port, enabled, dir_missing)| ServiceSpec {
                    id,
                    name,
                    kind,
                    host,
                    port,
                    enabled,
                    dir_missing,
                },
            )
    }

    #[derive(Debug, Clone)]
    pub struct GroupSpec {
        id: Field<String>,
        name: Field<String>,
        services: Vec<ServiceSpec>,
    }

    fn group() -> impl Strategy<Value = GroupSpec> {
        (
            field(id()),
            field(name()),
            prop::collection::vec(service(), 1..5),
        )
            .prop_map(|(id, name, services)| GroupSpec { id, name, services })
    }

    /// Whether the documented checks accept a setting's value.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Validity {
        Good,
        Bad,
        /// Good where topology.json gives the service a management port, else bad.
        NeedsManagementPort,
    }
    use Validity::{Bad, Good, NeedsManagementPort};

    /// Setting values as an operator writes them in TOML: every one parses, some are refused
    /// by the checks (the fail-safe rule holds what they reach).
    const SETTINGS: [(&str, &str, Validity); 45] = [
        ("autostart", "true", Good),
        ("autostart", "false", Good),
        (
            "health_url",
            "\"http://127.0.0.1:{management_port}/x%y\"",
            NeedsManagementPort,
        ),
        ("health_url", "\"http://127.0.0.1:{traffic_port}/hc\"", Good),
        ("health_url", "\"ftp://127.0.0.1/\"", Bad),
        ("drain_delay", "\"5s\"", Good),
        ("drain_delay", "0", Good),
        ("drain_delay", "\"10min\"", Bad),
        ("drain_delay", "9999", Bad),
        ("stop_grace", "\"20s\"", Good),
        ("stop_grace", "\"0s\"", Bad),
        ("watchdog", "0", Good),
        ("watchdog", "\"20s\"", Good),
        ("watchdog", "\"500ms\"", Bad),
        ("start_timeout", "\"1min 30s\"", Good),
        ("start_timeout", "0", Bad),
        ("cassandra", "\"cassandra.service\"", Good),
        ("cassandra", "\"\"", Good),
        ("cassandra", "\"not a unit\"", Bad),
        ("credentials", "[\"passphrase\"]", Good),
        ("credentials", "[\"p:/etc/p\"]", Good),
        ("credentials", "[\"pass phrase\"]", Bad),
        ("encrypted_credentials", "[\"p:/etc/p.cred\"]", Good),
        ("encrypted_credentials", "[\"p:relative\"]", Bad),
        (
            "start_command",
            "[\"/bin/gw\", \"--name=%i \\\"x\\\"\"]",
            Good,
        ),
        ("start_command", "[\"relative\"]", Bad),
        ("start_command", "[]", Bad),
        ("lb_health_listen", "\"\"", Good),
        ("lb_health_listen", "\"127.0.0.1:18085\"", Good),
        ("lb_health_listen", "\"nowhere\"", Bad),
        ("lb_health_path", "\"/healthchecklb\"", Good),
        ("lb_health_path", "\"no slash\"", Bad),
        ("ask_passphrase", "true", Good),
        ("ask_passphrase", "false", Good),
        ("after_nodemanager", "true", Good),
        ("after_nodemanager", "false", Good),
        ("legacy_initd", "true", Good),
        ("legacy_initd", "false", Good),
        ("lb_rise", "2", Good),
        ("lb_rise", "0", Bad),
        ("lb_fall", "3", Good),
        ("lb_fall", "101", Bad),
        ("drain_mode", "\"adaptive\"", Good),
        ("drain_mode", "\"fixed\"", Good),
        ("drain_mode", "\"fast\"", Bad),
    ];

    /// Top-level settings, all accepted.
    const TOP: [(&str, &str); 6] = [
        ("install_dir", "\"/opt/apigateway\""),
        ("user", "\"gw\""),
        ("group", "\"gw\""),
        ("host", "\"gw1.example.com\""),
        ("host", "\"gw2\""),
        ("host", "\"GW1\""),
    ];

    /// A table of settings: setting -> index into SETTINGS (one value per setting, as TOML
    /// requires).
    type Table = BTreeMap<&'static str, usize>;

    /// Mostly values the checks accept, so that most instances run on their settings.
    fn table() -> impl Strategy<Value = Table> {
        let (good, bad): (Vec<usize>, Vec<usize>) =
            (0..SETTINGS.len()).partition(|&i| SETTINGS[i].2 != Bad);
        let value = prop_oneof![
            8 => prop::sample::select(good),
            1 => prop::sample::select(bad),
        ];
        prop::collection::vec(value, 0..4)
            .prop_map(|v| v.into_iter().map(|i| (SETTINGS[i].0, i)).collect())
    }

    /// An instance table's key: usually a group/instance of the topology, sometimes none.
    type KeyChoice = (Index, bool);

    fn key_choice() -> impl Strategy<Value = KeyChoice> {
        (any::<Index>(), prop::bool::weighted(0.15))
    }

    fn resolve_key((index, unknown): &KeyChoice, pairs: &[String]) -> String {
        if *unknown || pairs.is_empty() {
            "nogroup/noinstance".to_string()
        } else {
            pairs[index.index(pairs.len())].clone()
        }
    }

    /// One config file, as generated (instance keys not yet resolved).
    #[derive(Debug, Clone)]
    struct FileChoice {
        top: Vec<usize>,
        defaults: Option<Table>,
        nodemanager: Option<Table>,
        instances: Vec<(KeyChoice, Table)>,
    }

    fn file_choice() -> impl Strategy<Value = FileChoice> {
        (
            // Mostly no host setting: the kernel's host name decides.
            prop::collection::vec(prop_oneof![6 => 0..3usize, 1 => 3..TOP.len()], 0..3),
            proptest::option::of(table()),
            proptest::option::weighted(0.3, table()),
            prop::collection::vec((key_choice(), table()), 0..4),
        )
            .prop_map(|(top, defaults, nodemanager, instances)| FileChoice {
                top,
                defaults,
                nodemanager,
                instances,
            })
    }

    /// One config file of a host: valid TOML with known keys only.
    #[derive(Debug, Clone)]
    pub struct ConfigFile {
        /// Logical path.
        pub path: String,
        top: BTreeMap<&'static str, &'static str>,
        defaults: Option<Table>,
        nodemanager: Option<Table>,
        instances: BTreeMap<String, Table>,
    }

    impl ConfigFile {
        pub fn text(&self) -> String {
            let mut out = String::new();
            for (k, v) in &self.top {
                out += &format!("{k} = {v}\n");
            }
            let mut put = |header: String, t: &Table| {
                out += &format!("\n[{header}]\n");
                for i in t.values() {
                    out += &format!("{} = {}\n", SETTINGS[*i].0, SETTINGS[*i].1);
                }
            };
            if let Some(t) = &self.defaults {
                put("defaults".into(), t);
            }
            if let Some(t) = &self.nodemanager {
                put("nodemanager".into(), t);
            }
            for (key, t) in &self.instances {
                put(
                    format!(
                        "instances.{}",
                        gateway_systemd::install::config::toml_string(key)
                    ),
                    t,
                );
            }
            out
        }
    }

    /// A config file that does not parse, or parses but is refused: written as the last
    /// drop-in, so nothing later can hide it.
    #[derive(Debug, Clone)]
    pub enum Broken {
        /// Not TOML at all: every instance is held.
        Syntax,
        /// A key we do not know (a typo): every instance is held.
        UnknownKey,
        /// A top-level value we refuse: every instance is held.
        BadTopValue,
        /// A value of the wrong type in [defaults]: the file does not parse, every instance held.
        WrongTypeInDefaults,
        /// An instance table that does not parse: that instance is held.
        InstanceTable(String),
    }

    /// Where the broken file goes.
    pub const BROKEN_FILE: &str = "/etc/gateway-systemd/gateway.toml.d/90-broken.toml";

    impl Broken {
        pub fn text(&self) -> String {
            match self {
                Broken::Syntax => "this is not toml = = \n".into(),
                Broken::UnknownKey => "autostrat = true\n".into(),
                Broken::BadTopValue => "user = \"Root User\"\n".into(),
                Broken::WrongTypeInDefaults => "[defaults]\ndrain_delay = \"soon\"\n".into(),
                Broken::InstanceTable(key) => format!(
                    "[instances.{}]\ndrain_delay = \"soon\"\n",
                    gateway_systemd::install::config::toml_string(key)
                ),
            }
        }
        /// Whether the whole file is refused (else only its instance table).
        pub fn whole_file(&self) -> bool {
            !matches!(self, Broken::InstanceTable(_))
        }
    }

    fn broken() -> impl Strategy<Value = (u8, KeyChoice)> {
        (0u8..5, key_choice())
    }

    const SCRIPT_FRAGMENTS: [&str; 6] = [
        "VINSTDIR=/opt/apigateway/groups/group-2/instance-1\n",
        "VDISTDIR=/elsewhere\n",
        "/opt/apigateway/posix/bin/startinstance -n server1 -g group1 -d\n",
        "/opt/apigateway/posix/bin/startinstance -h \"$VINSTDIR\"\n",
        "\"$VDISTDIR/posix/bin/nodemanager\" -d\n",
        "echo 'unbalanced \"quotes\n",
    ];

    /// Script names: random ones, and managedomain's own (`<group>-<instance>` of the
    /// topology with spaces as dashes, `Node-Manager-on-<host>`). None = one of the topology's.
    fn script_name() -> impl Strategy<Value = (Option<String>, Index)> {
        (
            prop_oneof![
                4 => name().prop_map(Some),
                3 => Just(None),
                1 => Just(Some("Node-Manager-on-gw1".to_string())),
                1 => Just(Some("Node-Manager-on-gw2".to_string())),
            ],
            any::<Index>(),
        )
    }

    /// A whole host: topology, config files, init scripts.
    #[derive(Debug, Clone)]
    pub struct Host {
        groups: Vec<GroupSpec>,
        truncate: bool,
        /// The main file, then drop-ins in name order.
        pub files: Vec<ConfigFile>,
        pub broken: Option<Broken>,
        scripts: Vec<(String, Vec<usize>)>,
        hostname: String,
    }

    pub fn host() -> impl Strategy<Value = Host> {
        (
            prop::collection::vec(group(), 1..5),
            prop::bool::weighted(0.05),
            prop::collection::vec(file_choice(), 1..4),
            proptest::option::weighted(0.25, broken()),
            prop::collection::vec(
                (
                    script_name(),
                    prop::collection::vec(0..SCRIPT_FRAGMENTS.len(), 0..3),
                ),
                0..4,
            ),
            prop_oneof![Just("gw1.example.com"), Just("gw1"), Just("GW2")],
        )
            .prop_map(|(groups, truncate, files, broken, scripts, hostname)| {
                // Instance table keys name the topology's group/instance pairs.
                let names: Vec<(String, String)> = groups
                    .iter()
                    .flat_map(|g| {
                        let gname = g.name.good().cloned();
                        g.services
                            .iter()
                            .filter_map(move |s| Some((gname.clone()?, s.name.good()?.clone())))
                    })
                    .collect();
                let pairs: Vec<String> = names.iter().map(|(g, n)| format!("{g}/{n}")).collect();
                let files = files
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let mut instances: BTreeMap<String, Table> = BTreeMap::new();
                        for (choice, t) in f.instances {
                            instances
                                .entry(resolve_key(&choice, &pairs))
                                .or_default()
                                .extend(t);
                        }
                        ConfigFile {
                            path: if i == 0 {
                                "/etc/gateway-systemd/gateway.toml".into()
                            } else {
                                format!("/etc/gateway-systemd/gateway.toml.d/{i}0-random.toml")
                            },
                            top: f.top.into_iter().map(|t| TOP[t]).collect(),
                            defaults: f.defaults,
                            nodemanager: f.nodemanager,
                            instances,
                        }
                    })
                    .collect();
                let broken = broken.map(|(kind, key)| match kind {
                    0 => Broken::Syntax,
                    1 => Broken::UnknownKey,
                    2 => Broken::BadTopValue,
                    3 => Broken::WrongTypeInDefaults,
                    _ => Broken::InstanceTable(resolve_key(&key, &pairs)),
                });
                Host {
                    groups,
                    truncate,
                    files,
                    broken,
                    scripts: scripts
                        .into_iter()
                        .map(|((n, index), frags)| {
                            let n = n.unwrap_or_else(|| match names.is_empty() {
                                true => "group1-server1".to_string(),
                                false => {
                                    let (g, n) = &names[index.index(names.len())];
                                    format!("{}-{}", g.replace(' ', "-"), n.replace(' ', "-"))
                                }
                            });
                            (
                                format!("vshell-{}", n.replace(['/', '\n', '\0'], "_")),
                                frags,
                            )
                        })
                        .collect(),
                    hostname: hostname.to_string(),
                }
            })
    }

    /// A service of the topology as the generator can read it (its entry well-formed).
    #[derive(Debug, Clone)]
    struct Parsed {
        gid: String,
        gname: String,
        id: String,
        name: String,
        kind: &'static str,
        host: &'static str,
        port: Option<u16>,
        enabled: bool,
    }

    /// What the generator must make of a host. `None` where the rules leave it open.
    #[derive(Debug, Default)]
    pub struct Expected {
        /// Every valid local instance's unit -> (config key, held, autostart).
        pub instances: BTreeMap<String, (String, Option<bool>, Option<bool>)>,
        /// The Node Manager, when this host has one: (held, autostart).
        pub node_manager: Option<(bool, bool)>,
        /// The legacy units masked (-> /dev/null).
        pub masks: BTreeSet<String>,
    }

    /// A single, ordinary path component: ids are directory names.
    fn is_dir_name(id: &str) -> bool {
        !id.is_empty()
            && id != "."
            && id != ".."
            && !id.contains('/')
            && !id.chars().any(char::is_control)
    }

    /// Case-insensitive; a short name matches the first label of a fully qualified one.
    fn same_host(a: &str, b: &str) -> bool {
        let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
        !a.is_empty()
            && !b.is_empty()
            && (a == b
                || ((!a.contains('.') || !b.contains('.'))
                    && a.split('.').next() == b.split('.').next()))
    }

    /// systemd-sysv-generator's unit for a script: `.sh` dropped, bytes other than
    /// `[A-Za-z0-9:_.\\-]` escaped; None when that is no valid unit name.
    fn sysv_unit(script: &str) -> Option<String> {
        let base = script.strip_suffix(".sh").unwrap_or(script);
        let mut out = String::new();
        for b in base.bytes() {
            if b.is_ascii_alphanumeric() || b":-_.\\".contains(&b) {
                out.push(b as char);
            } else {
                out += &format!("\\x{b:02x}");
            }
        }
        let unit = format!("{out}.service");
        (!base.is_empty() && unit.len() <= 255).then_some(unit)
    }

    /// Settings in force: setting -> (value index into SETTINGS, written for the instance
    /// itself). Absent settings are the built-in defaults, which are all accepted.
    type Effective = BTreeMap<&'static str, (usize, bool)>;

    fn flag(e: &Effective, key: &str, default: bool) -> bool {
        e.get(key)
            .map_or(default, |(i, _)| SETTINGS[*i].1 == "true")
    }

    /// The settings of `e` the checks refuse, given the service's management port: (setting,
    /// written for the instance itself).
    fn refused(e: &Effective, port: Option<u16>) -> Vec<(&'static str, bool)> {
        e.iter()
            .filter(|(_, (i, _))| match SETTINGS[*i].2 {
                Good => false,
                Bad => true,
                NeedsManagementPort => port.is_none(),
            })
            .map(|(k, (_, own))| (*k, *own))
            .collect()
    }

    impl Host {
        /// Write the host's files under `root`. Instance directories are created for every
        /// service whose ids can be directory names, except those marked missing.
        pub fn write(&self, root: &Path) {
            let install = root.join("opt/apigateway");
            fs::create_dir_all(install.join("groups")).unwrap();
            let groups: Vec<serde_json::Value> = self
                .groups
                .iter()
                .map(|g| {
                    let mut m = serde_json::Map::new();
                    g.id.put(&mut m, "id");
                    g.name.put(&mut m, "name");
                    let services: Vec<serde_json::Value> = g
                        .services
                        .iter()
                        .map(|s| {
                            let mut m = serde_json::Map::new();
                            s.id.put(&mut m, "id");
                            s.name.put(&mut m, "name");
                            s.kind.put(&mut m, "type");
                            s.host.put(&mut m, "hostID");
                            if let Some(p) = s.port {
                                m.insert("managementPort".into(), p.into());
                            }
                            m.insert("enabled".into(), s.enabled.into());
                            serde_json::Value::Object(m)
                        })
                        .collect();
                    m.insert("services".into(), services.into());
                    serde_json::Value::Object(m)
                })
                .collect();
            let mut topology = serde_json::json!({
                "hosts": [{"id": "host-1", "name": "gw1.example.com"}, {"id": "host-2", "name": "gw2"}],
                "groups": groups,
            })
            .to_string();
            if self.truncate {
                // Cut halfway, at a character boundary (names may be any Unicode).
                let cut = (0..=topology.len() / 2)
                    .rev()
                    .find(|&k| topology.is_char_boundary(k))
                    .unwrap_or(0);
                topology.truncate(cut);
            }
            fs::write(install.join("groups/topology.json"), &topology).unwrap();
            for g in &self.groups {
                for s in &g.services {
                    if let (Some(gid), Some(sid)) = (g.id.good(), s.id.good()) {
                        if !s.dir_missing && is_dir_name(gid) && is_dir_name(sid) {
                            let dir = install.join("groups").join(gid).join(sid);
                            fs::create_dir_all(dir.join("conf")).unwrap();
                            fs::write(
                                dir.join("conf/envSettings.props"),
                                "env.PORT.TRAFFIC=8080\n",
                            )
                            .unwrap();
                        }
                    }
                }
            }
            let etc = root.join("etc/gateway-systemd");
            fs::create_dir_all(etc.join("gateway.toml.d")).unwrap();
            for f in &self.files {
                fs::write(root.join(f.path.trim_start_matches('/')), f.text()).unwrap();
            }
            if let Some(b) = &self.broken {
                fs::write(root.join(BROKEN_FILE.trim_start_matches('/')), b.text()).unwrap();
            }
            fs::create_dir_all(root.join("etc/init.d")).unwrap();
            for (name, frags) in &self.scripts {
                let text: String = frags.iter().map(|&i| SCRIPT_FRAGMENTS[i]).collect();
                // Names longer than a file name can be are not written (ENAMETOOLONG).
                let _ = fs::write(root.join("etc/init.d").join(name), text);
            }
            fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
            fs::write(root.join("proc/sys/kernel/hostname"), &self.hostname).unwrap();
        }

        /// What the generator must make of this host once [`Host::write`] wrote it under `root`.
        pub fn expected(&self, root: &Path) -> Expected {
            let mut exp = Expected::default();
            // The config, merged: later files win setting by setting.
            let mut host_setting: Option<&str> = None;
            let (mut defaults, mut nm_table) = (Table::new(), Table::new());
            let mut tables: BTreeMap<&str, Table> = BTreeMap::new();
            for f in &self.files {
                if let Some(h) = f.top.get("host") {
                    host_setting = Some(h.trim_matches('"'));
                }
                defaults.extend(f.defaults.iter().flatten());
                nm_table.extend(f.nodemanager.iter().flatten());
                for (k, t) in &f.instances {
                    tables.entry(k).or_default().extend(t);
                }
            }
            let broken_file = self.broken.as_ref().is_some_and(Broken::whole_file);
            let broken_table = match &self.broken {
                Some(Broken::InstanceTable(k)) => Some(k.as_str()),
                _ => None,
            };
            let host = host_setting.unwrap_or(self.hostname.trim());
            if self.truncate {
                // topology.json is no JSON: nothing can be trusted, nothing generated.
                return exp;
            }
            let local = |host_id: &str| match host_id {
                "host-1" => same_host("gw1.example.com", host),
                "host-2" => same_host("gw2", host),
                _ => false,
            };
            // The services whose entries are well-formed, in topology order.
            let mut services = Vec::new();
            for g in &self.groups {
                let (Some(gid), Some(gname)) = (g.id.good(), g.name.good()) else {
                    continue;
                };
                for s in &g.services {
                    let (Some(id), Some(name), Some(kind), Some(host_id)) =
                        (s.id.good(), s.name.good(), s.kind.good(), s.host.good())
                    else {
                        continue;
                    };
                    let Ok(port) = s.port.map_or(Ok(None), |p| u16::try_from(p).map(Some)) else {
                        continue;
                    };
                    services.push(Parsed {
                        gid: gid.clone(),
                        gname: gname.clone(),
                        id: id.clone(),
                        name: name.clone(),
                        kind,
                        host: host_id,
                        port: port.filter(|&p| p != 0),
                        enabled: s.enabled,
                    });
                }
            }
            let gateways: Vec<&Parsed> = services
                .iter()
                .filter(|s| s.kind == "gateway" && local(s.host))
                .collect();
            // Valid: ids are directory names, no other local instance has the same names or
            // directory, the names can be a unit name, and the directory is there.
            let valid: Vec<(&Parsed, String)> = gateways
                .iter()
                .filter(|s| is_dir_name(&s.gid) && is_dir_name(&s.id))
                .filter(|s| {
                    !gateways.iter().any(|t| {
                        !std::ptr::eq(*t, **s)
                            && ((t.gname == s.gname && t.name == s.name)
                                || (t.gid == s.gid && t.id == s.id))
                    })
                })
                .filter(|s| {
                    root.join("opt/apigateway/groups")
                        .join(&s.gid)
                        .join(&s.id)
                        .is_dir()
                })
                // The unit name must be one systemd takes, and its drop-in directory
                // `<unit>.d` must fit in a file name (255 bytes): at most 253 characters.
                .filter_map(|s| {
                    let unit = unit_name::instance_unit(&s.gname, &s.name).ok()?;
                    (unit.len() + ".d".len() <= 255).then_some((*s, unit))
                })
                .collect();
            // Each instance's settings: [defaults], its topology `enabled`, its own table.
            let effective = |s: &Parsed| -> Effective {
                let mut e: Effective = defaults.iter().map(|(k, i)| (*k, (*i, false))).collect();
                if !s.enabled {
                    e.insert("autostart", (1, false));
                }
                let key = format!("{}/{}", s.gname, s.name);
                if let Some(t) = tables.get(key.as_str()) {
                    e.extend(t.iter().map(|(k, i)| (*k, (*i, true))));
                }
                e
            };
            // A refused [defaults] value that decides an instance's fate holds every instance;
            // which refused value decides is up to the order of the checks when an instance
            // has both its own and one from [defaults]: then it is left open.
            let (mut all_held, mut maybe_all_held) = (false, false);
            for (s, _) in &valid {
                if broken_table == Some(format!("{}/{}", s.gname, s.name).as_str()) {
                    continue;
                }
                let refused = refused(&effective(s), s.port);
                if !refused.is_empty() && refused.iter().all(|(_, own)| !own) {
                    all_held = true;
                } else if refused.iter().any(|(_, own)| !own) {
                    maybe_all_held = true;
                }
            }
            let mut legacy_of_key: BTreeMap<String, bool> = BTreeMap::new();
            for (s, unit) in &valid {
                let key = format!("{}/{}", s.gname, s.name);
                let e = effective(s);
                let own_error =
                    broken_table == Some(key.as_str()) || !refused(&e, s.port).is_empty();
                let held = if broken_file || own_error || all_held {
                    Some(true)
                } else if maybe_all_held {
                    None
                } else {
                    Some(false)
                };
                // An instance whose own settings are refused runs on none of them.
                let legacy = !own_error && flag(&e, "legacy_initd", false);
                let autostart = match held {
                    Some(true) => Some(false),
                    Some(false) => Some(flag(&e, "autostart", true) && !legacy),
                    None => None,
                };
                legacy_of_key.insert(key.clone(), legacy);
                exp.instances.insert(unit.clone(), (key, held, autostart));
            }
            // The Node Manager: the first local one; its settings are the built-in ones, its
            // health URL on the management port, and [nodemanager] (not [defaults]). A refused
            // [nodemanager] value or a broken file holds it, on the built-in settings; without
            // a management port those cannot be checked either, and it is left out.
            let mut nm_legacy = false;
            if let Some(nm) = services
                .iter()
                .find(|s| s.kind == "nodemanager" && local(s.host))
            {
                let e: Effective = nm_table.iter().map(|(k, i)| (*k, (*i, true))).collect();
                let health_needs_port = !e.contains_key("health_url");
                let settles =
                    refused(&e, nm.port).is_empty() && !(health_needs_port && nm.port.is_none());
                if settles || nm.port.is_some() {
                    nm_legacy = settles && flag(&e, "legacy_initd", false);
                    let held = broken_file || !settles;
                    let autostart =
                        !held && nm.enabled && flag(&e, "autostart", true) && !nm_legacy;
                    exp.node_manager = Some((held, autostart));
                }
            }
            // Masks: a script is masked when what it says (in this order: VDISTDIR, VINSTDIR,
            // startinstance arguments, a nodemanager call, then its name) is an instance this
            // host generates or its Node Manager, not left to the script, and its name can be
            // a unit name.
            let by = |pred: &dyn Fn(&Parsed) -> bool| -> Option<String> {
                valid
                    .iter()
                    .find(|(s, _)| pred(s))
                    .map(|(s, _)| format!("{}/{}", s.gname, s.name))
            };
            let written: BTreeSet<String> = fs::read_dir(root.join("etc/init.d"))
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            for name in written {
                let backup = [
                    "~",
                    ".dpkg-old",
                    ".dpkg-dist",
                    ".dpkg-new",
                    ".dpkg-bak",
                    ".dpkg-tmp",
                    ".rpmsave",
                    ".rpmnew",
                    ".rpmorig",
                    ".swp",
                    ".bak",
                    ".orig",
                    ".old",
                ]
                .iter()
                .any(|s| name.ends_with(s));
                let Some((_, frags)) = self.scripts.iter().rev().find(|(n, _)| *n == name) else {
                    continue;
                };
                if backup || frags.contains(&1) {
                    continue;
                }
                // Some(None) = the Node Manager, Some(Some(key)) = an instance.
                let target: Option<Option<String>> = if frags.contains(&0) {
                    by(&|s| s.gid == "group-2" && s.id == "instance-1").map(Some)
                } else if frags.contains(&3) {
                    None // -h "$VINSTDIR" with no VINSTDIR: names no instance
                } else if frags.contains(&2) {
                    by(&|s| s.gname == "group1" && s.name == "server1").map(Some)
                } else if frags.contains(&4) {
                    exp.node_manager.is_some().then_some(None)
                } else {
                    let rest = name.strip_prefix("vshell-").unwrap_or(&name);
                    let nm_host = rest
                        .strip_prefix("Node-Manager-on-")
                        .is_some_and(|h| same_host(host, h) || host.replace('.', "-") == h);
                    if nm_host && exp.node_manager.is_some() {
                        Some(None)
                    } else {
                        let dashed = |s: &str| s.replace(' ', "-");
                        let fits: Vec<String> = valid
                            .iter()
                            .filter(|(s, _)| {
                                format!("{}-{}", dashed(&s.gname), dashed(&s.name)) == rest
                            })
                            .map(|(s, _)| format!("{}/{}", s.gname, s.name))
                            .collect();
                        (fits.len() == 1).then(|| Some(fits[0].clone()))
                    }
                };
                let left_to_script = match &target {
                    None => continue,
                    Some(None) => nm_legacy,
                    Some(Some(key)) => legacy_of_key[key],
                };
                if let (false, Some(unit)) = (left_to_script, sysv_unit(&name)) {
                    exp.masks.insert(unit);
                }
            }
            exp
        }
    }
}

/// What the generator wrote into its normal directory, checked against what the host's files
/// call for ([`random::Expected`]).
fn check_output(normal: &Path, exp: &random::Expected) -> Result<(), String> {
    let mut problems = Vec::new();
    let (mut dropins, mut masks, mut wants) = (BTreeSet::new(), BTreeSet::new(), BTreeMap::new());
    let mut nm_dropin = false;
    for e in fs::read_dir(normal).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().to_string();
        let ft = e.file_type().map_err(|e| e.to_string())?;
        if ft.is_symlink() {
            let to = fs::read_link(e.path()).map_err(|e| e.to_string())?;
            if to == Path::new("/dev/null") {
                masks.insert(name);
            } else {
                problems.push(format!("unexpected symlink {name} -> {}", to.display()));
            }
        } else if name == "gateway.target.wants" {
            for w in fs::read_dir(e.path()).map_err(|e| e.to_string())? {
                let w = w.map_err(|e| e.to_string())?;
                let to = fs::read_link(w.path()).map_err(|e| e.to_string())?;
                wants.insert(w.file_name().to_string_lossy().to_string(), to);
            }
        } else if name == "gateway-nodemanager.service.d" {
            nm_dropin = true;
        } else if let Some(unit) = name
            .strip_suffix(".d")
            .filter(|u| u.starts_with("gateway@") && ft.is_dir())
        {
            dropins.insert(unit.to_string());
        } else {
            problems.push(format!("unexpected output {name}"));
        }
    }
    // (a) Every valid local instance has its drop-in (held or not), and nothing else has one.
    let want: BTreeSet<String> = exp.instances.keys().cloned().collect();
    for u in want.difference(&dropins) {
        problems.push(format!("no drop-in for {u} ({})", exp.instances[u].0));
    }
    for u in dropins.difference(&want) {
        problems.push(format!(
            "a drop-in for {u}, which is no valid instance of this host"
        ));
    }
    // Held by a config error exactly when the config says so; an autostart link exactly for
    // the instances that start at boot.
    for (unit, (key, held, autostart)) in &exp.instances {
        let conf = normal.join(format!("{unit}.d/50-generated.conf"));
        let text = fs::read_to_string(&conf).unwrap_or_default();
        if let Some(held) = held {
            if text.contains("GATEWAY_HELD=") != *held {
                problems.push(format!(
                    "{key} should {}be held by a config error:\n{text}",
                    if *held { "" } else { "not " }
                ));
            }
        }
        if let Some(autostart) = autostart {
            if wants.contains_key(unit) != *autostart {
                problems.push(format!(
                    "{key}: autostart should be {autostart}, gateway.target.wants says {}",
                    !autostart
                ));
            }
        }
    }
    for (link, to) in &wants {
        let template = if link == "gateway-nodemanager.service" {
            link.clone()
        } else if link.starts_with("gateway@") && want.contains(link) {
            "gateway@.service".to_string()
        } else {
            problems.push(format!("gateway.target.wants/{link}: no such instance"));
            continue;
        };
        if *to != Path::new("/usr/lib/systemd/system").join(&template) {
            problems.push(format!("gateway.target.wants/{link} -> {}", to.display()));
        }
    }
    if nm_dropin != exp.node_manager.is_some() {
        problems.push(format!(
            "Node Manager drop-in: {nm_dropin}, expected {}",
            exp.node_manager.is_some()
        ));
    }
    if let Some((held, autostart)) = exp.node_manager {
        if wants.contains_key("gateway-nodemanager.service") != autostart {
            problems.push(format!("Node Manager autostart should be {autostart}"));
        }
        let conf = normal.join("gateway-nodemanager.service.d/50-generated.conf");
        let text = fs::read_to_string(&conf).unwrap_or_default();
        if text.contains("GATEWAY_HELD=") != held {
            problems.push(format!(
                "the Node Manager should {}be held by a config error:\n{text}",
                if held { "" } else { "not " }
            ));
        }
    }
    // (b) Masks only for legacy scripts that start an instance or the Node Manager generated
    // here (and are not left to their script), and for every such script.
    for m in masks.difference(&exp.masks) {
        problems.push(format!(
            "{m} is masked, but its script starts nothing generated here"
        ));
    }
    for m in exp.masks.difference(&masks) {
        problems.push(format!(
            "{m} is not masked, but its script starts what we generate"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn property_random_installations() -> Result<(), Failed> {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use std::sync::atomic::{AtomicUsize, Ordering};
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
    // Config files generated to be valid, how many of them parse, and deliberately broken ones.
    let (files, parsed, broken) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    runner
        .run(&random::host(), |host| {
            // (c) The generated config parses, so that no case tests a config silently ignored;
            // the deliberately broken file does not.
            for f in &host.files {
                files.fetch_add(1, Ordering::Relaxed);
                let text = f.text();
                match gateway_systemd::install::Config::default().merge_file(&text, Path::new(&f.path)) {
                    Ok(p) if p.is_empty() => {
                        parsed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(p) => {
                        return Err(TestCaseError::fail(format!(
                            "generated config {} does not parse: {p:?}\n{text}",
                            f.path
                        )))
                    }
                    Err(e) => {
                        return Err(TestCaseError::fail(format!(
                            "generated config {} does not parse: {e}\n{text}",
                            f.path
                        )))
                    }
                }
            }
            if let Some(b) = &host.broken {
                broken.fetch_add(1, Ordering::Relaxed);
                let refused = match gateway_systemd::install::Config::default()
                    .merge_file(&b.text(), Path::new(random::BROKEN_FILE))
                {
                    Ok(p) => !b.whole_file() && !p.is_empty(),
                    Err(_) => b.whole_file(),
                };
                if !refused {
                    return Err(TestCaseError::fail(format!(
                        "the broken config {b:?} is not refused as such"
                    )));
                }
            }
            let scratch = tempfile::tempdir().unwrap();
            let root = scratch.path().join("root");
            host.write(&root);
            let expected = host.expected(&root);
            let out = scratch.path().join("out");
            let result = run_generator(&root, &out);
            let stderr = String::from_utf8_lossy(&result.stderr);
            if result.status.code() != Some(0) || stderr.contains("panicked") {
                return Err(TestCaseError::fail(format!(
                    "exit {}, stderr:\n{stderr}",
                    result.status
                )));
            }
            // A config that does not parse is an error naming it (and holds what it reaches,
            // which check_output verifies).
            if let Some(b) = &host.broken {
                let named = stderr
                    .lines()
                    .any(|l| l.contains("error:") && l.contains(random::BROKEN_FILE));
                if !named {
                    return Err(TestCaseError::fail(format!(
                        "the broken config ({b:?}) is not reported as an error naming {}:\n{stderr}",
                        random::BROKEN_FILE
                    )));
                }
            }
            check_output(&out.join("normal"), &expected).map_err(|e| {
                TestCaseError::fail(format!("{e}\nexpected: {expected:#?}\nstderr:\n{stderr}"))
            })?;
            if verify {
                verify_generated(&out.join("normal"), scratch.path())
                    .map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
        .map_err(|e| Failed::from(e.to_string()))?;
    let (files, parsed, broken) = (files.into_inner(), parsed.into_inner(), broken.into_inner());
    eprintln!(
        "    {parsed} of {files} generated config files parse; {broken} deliberately broken ones were refused and held what they reach"
    );
    Ok(())
}

/// Instances whose unit names are 253 to 256 characters long (autostart, each with its
/// directory): the 253-character one is generated (drop-in and autostart link); longer ones
/// are refused with an error and get neither, since systemd takes no unit name over 255 and no
/// file name (the drop-in directory `<unit>.d`) is over 255 bytes. (Found by the property
/// test: at 254 and 255 the drop-in could not be written, but the autostart link was.)
fn units_at_the_name_length_limit() -> Result<(), Failed> {
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    let install = root.join("opt/apigateway");
    // gateway@g-<name>.service is 18 characters plus the name.
    let names: Vec<(usize, String)> = (253..=256)
        .map(|len| {
            (
                len,
                ((b'a' + (len - 253) as u8) as char)
                    .to_string()
                    .repeat(len - 18),
            )
        })
        .collect();
    let services: Vec<serde_json::Value> = names
        .iter()
        .map(|(len, n)| {
            serde_json::json!({"id": format!("i{len}"), "name": n, "type": "gateway", "hostID": "host-1"})
        })
        .collect();
    fs::create_dir_all(install.join("groups"))?;
    fs::write(
        install.join("groups/topology.json"),
        serde_json::json!({
            "hosts": [{"id": "host-1", "name": "gw1"}],
            "groups": [{"id": "g", "name": "g", "services": services}],
        })
        .to_string(),
    )?;
    for (len, _) in &names {
        fs::create_dir_all(install.join(format!("groups/g/i{len}/conf")))?;
    }
    fs::create_dir_all(root.join("proc/sys/kernel"))?;
    fs::write(root.join("proc/sys/kernel/hostname"), "gw1")?;
    let out = scratch.path().join("out");
    let result = run_generator(&root, &out);
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    let normal = out.join("normal");
    let mut problems = Vec::new();
    for (len, name) in &names {
        let unit = format!("gateway@g-{name}.service");
        assert_eq!(unit.len(), *len);
        let dropin = normal.join(format!("{unit}.d/50-generated.conf")).is_file();
        let link = fs::symlink_metadata(normal.join("gateway.target.wants").join(&unit)).is_ok();
        let generated = *len <= 253;
        if (dropin, link) != (generated, generated) {
            problems.push(format!(
                "{len}-character unit: drop-in {dropin}, autostart link {link}; expected {generated} and {generated}"
            ));
        }
        if !generated
            && !stderr
                .lines()
                .any(|l| l.contains("error:") && l.contains(name.as_str()))
        {
            problems.push(format!(
                "{len}-character unit: refused without an error naming it"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}
stderr:
{stderr}",
            problems.join("\n")
        )
        .into())
    }
}

/// Our unit-name escaping is `systemd-escape`'s, except that `/` is `\x2f` rather than `-`
/// (src/units/name.rs), for every group and instance name of the golden cases, the names the
/// property test draws, and some hostile ones. Names we refuse (empty, control characters) are
/// left out: systemd-escape would escape them.
fn escaping_matches_systemd_escape() -> Result<(), Failed> {
    use proptest::strategy::{Strategy, ValueTree};
    use std::process::Command;
    let present = Command::new("systemd-escape")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        if std::env::var_os("CI").is_some() {
            return Err("systemd-escape is not installed (CI is set)".into());
        }
        eprintln!("    skipped: systemd-escape is not installed");
        return Ok(());
    }
    let mut names: BTreeSet<String> = [
        "-", "-a", "a-", ".", ".a", "a.", "..", "a/b", "/", "//a", "\\", "\\x2f", "%i", ":", "_",
        " ", "a b", "ü", "日本", "a\"b", "'", "$x", "*", "~",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "topology.json") {
                out.push(p);
            }
        }
    }
    let mut topologies = Vec::new();
    walk(&common::repo().join("tests/generator"), &mut topologies);
    for t in &topologies {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&fs::read_to_string(t)?) else {
            continue; // the broken-syntax case
        };
        for g in v["groups"].as_array().into_iter().flatten() {
            names.extend(g["name"].as_str().map(str::to_string));
            for s in g["services"].as_array().into_iter().flatten() {
                names.extend(s["name"].as_str().map(str::to_string));
            }
        }
    }
    if !names.contains("edge node 1") {
        return Err(format!("the golden topologies' names were not found: {topologies:?}").into());
    }
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..500 {
        names.insert(random::name().new_tree(&mut runner)?.current());
    }
    let ours: Vec<(String, String)> = names
        .iter()
        .filter_map(|n| Some((n.clone(), unit_name::escape_name(n).ok()?)))
        .collect();
    let out = Command::new("systemd-escape")
        .arg("--")
        .args(ours.iter().map(|(n, _)| n))
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "systemd-escape failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let theirs: Vec<String> = String::from_utf8(out.stdout)?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if theirs.len() != ours.len() {
        return Err(format!(
            "systemd-escape gave {} names for {}",
            theirs.len(),
            ours.len()
        )
        .into());
    }
    let mut wrong = Vec::new();
    for ((name, escaped), systemd) in ours.iter().zip(&theirs) {
        // The one documented difference: `/` is `\x2f` for us and `-` for systemd-escape.
        let mut as_systemd = String::new();
        let mut rest = escaped.as_str();
        while !rest.is_empty() {
            let token = if rest.starts_with('\\') {
                &rest[..4.min(rest.len())]
            } else {
                &rest[..1]
            };
            as_systemd += if token == "\\x2f" { "-" } else { token };
            rest = &rest[token.len()..];
        }
        if as_systemd != *systemd || unit_name::unescape_name(escaped).as_deref() != Ok(name) {
            wrong.push(format!(
                "{name:?}: ours {escaped:?}, systemd-escape {systemd:?}"
            ));
        }
    }
    if !wrong.is_empty() {
        return Err(format!(
            "{} of {} names escape differently:\n{}",
            wrong.len(),
            ours.len(),
            wrong.join("\n")
        )
        .into());
    }
    eprintln!(
        "    {} names escape as systemd-escape escapes them",
        ours.len()
    );
    Ok(())
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
    // The [backup] schedules, checked by systemd's own parser: a good one shows its next
    // run; one systemd cannot parse would leave the timer without a schedule, an error.
    let (_, out) = run("10-config");
    if !out.contains("[backup] schedule = \"*-*-* 00/4:00:00\": next ") {
        return Err(format!("check-config does not show the backup schedule:\n{out}").into());
    }
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("input");
    common::copy_tree(
        &common::repo().join("tests/generator/01-sample-install/input"),
        &root,
    )?;
    fs::create_dir_all(root.join("etc/gateway-systemd/gateway.toml.d"))?;
    fs::write(
        root.join("etc/gateway-systemd/gateway.toml.d/50-schedule.toml"),
        "[backup]\nschedule = \"every tuesday-ish\"\n",
    )?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
        .arg("check-config")
        .env("GATEWAY_SYSTEMD_ROOT", &root)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(1)
        || !text.contains("[backup] schedule = \"every tuesday-ish\" is not a calendar spec")
    {
        return Err(format!("check-config on a bad schedule: {:?}\n{text}", out.status).into());
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
    trials.push(Trial::test(
        "names::escaping_matches_systemd_escape",
        escaping_matches_systemd_escape,
    ));
    trials.push(Trial::test(
        "names::units_at_the_length_limit_are_generated_or_refused",
        units_at_the_name_length_limit,
    ));
    libtest_mimic::run(&args, trials).exit();
}
