//! The legacy `/etc/init.d/vshell-*` scripts that managedomain wrote: what each one starts,
//! read from what the script says, so its systemd-sysv-generator unit can be masked.

use crate::install::{host_matches, Installation, RemoteInstance, Root};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Where managedomain puts its scripts.
pub const INIT_DIR: &str = "/etc/init.d";
/// The prefix managedomain gives them.
pub const SCRIPT_PREFIX: &str = "vshell-";

/// What a script says, as far as mapping goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptFacts {
    /// `VDISTDIR=` (the installation).
    pub vdistdir: Option<String>,
    /// `VINSTDIR=` (the instance directory).
    pub vinstdir: Option<String>,
    /// Every `startinstance` call.
    pub startinstance: Vec<StartinstanceCall>,
    /// Whether it calls `nodemanager`.
    pub calls_nodemanager: bool,
}

/// The arguments of one `startinstance` call that say which instance it means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartinstanceCall {
    /// `-n NAME`.
    pub name: Option<String>,
    /// `-g GROUP`.
    pub group: Option<String>,
    /// `-h DIR` or the directory-location form.
    pub dir: Option<String>,
}

/// One legacy init script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitScript {
    /// File name, e.g. `vshell-group1-server1`.
    pub name: String,
    /// Logical path.
    pub path: PathBuf,
    /// What it says.
    pub facts: ScriptFacts,
}

impl InitScript {
    /// The unit systemd-sysv-generator makes of it (`.sh` stripped, invalid characters escaped),
    /// or None when the name cannot be a unit name.
    pub fn sysv_unit(&self) -> Option<String> {
        let base = self.name.strip_suffix(".sh").unwrap_or(&self.name);
        let mut out = String::new();
        for b in base.bytes() {
            if b.is_ascii_alphanumeric() || b":-_.\\".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        let unit = format!("{out}.service");
        (!base.is_empty() && unit.len() <= crate::units::name::UNIT_NAME_MAX).then_some(unit)
    }
}

/// What a script starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The instance at this index of [`Installation::instances`].
    Instance(usize),
    /// The Node Manager.
    NodeManager,
}

impl Target {
    /// The settings of what the script starts (None for a Node Manager this host lacks).
    pub fn settings(self, inst: &Installation) -> Option<&crate::install::InstanceSettings> {
        match self {
            Target::Instance(k) => inst.instances.get(k).map(|i| &i.settings),
            Target::NodeManager => inst.node_manager.as_ref().map(|nm| &nm.settings),
        }
    }

    /// The operator's name of what the script starts (`group1/server1`, `the Node Manager`)
    /// and the unit that replaces it.
    pub fn describe(self, inst: &Installation) -> (String, String) {
        match self {
            Target::Instance(k) => {
                let i = &inst.instances[k];
                (format!("{}/{}", i.group.name, i.name), i.unit())
            }
            Target::NodeManager => (
                "the Node Manager".to_string(),
                crate::units::name::NODE_MANAGER_UNIT.to_string(),
            ),
        }
    }
}

/// Which part of the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Its `VINSTDIR=` assignment.
    Vinstdir,
    /// Its `startinstance` arguments.
    StartinstanceArgs,
    /// Its `nodemanager` call.
    NodemanagerCall,
    /// Only its file name (managedomain's naming convention).
    NamingConvention,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::Vinstdir => "its VINSTDIR",
            Rule::StartinstanceArgs => "its startinstance arguments",
            Rule::NodemanagerCall => "its nodemanager call",
            Rule::NamingConvention => "its name",
        })
    }
}

/// The result of mapping a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The script starts this.
    Mapped {
        /// What.
        target: Target,
        /// Decided by.
        rule: Rule,
    },
    /// The script cannot be tied to anything this host runs; it is left alone.
    Unmapped {
        /// Why, in the operator's words.
        reason: String,
    },
}

/// What happens to a legacy script: decided here once, for the generator (which masks), the
/// migration plan (which says so) and `migrate-initd --apply` (which moves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// It starts nothing of this host's installation: left alone, its legacy unit usable.
    LeftAlone {
        /// Why, in the operator's words.
        reason: String,
    },
    /// It starts `target`, but its file name cannot be a unit name: left alone.
    Unnamable {
        /// What it starts.
        target: Target,
    },
    /// It starts `target`, which `legacy_initd = true` leaves to it: its unit stays usable.
    LeftToScript {
        /// What it starts.
        target: Target,
        /// Its unit from systemd-sysv-generator.
        legacy_unit: String,
        /// Which part of the script said what it starts.
        rule: Rule,
    },
    /// It starts `target`, whose unit replaces it: its legacy unit is masked and `--apply`
    /// moves the script away.
    Replaced {
        /// What it starts.
        target: Target,
        /// Its unit from systemd-sysv-generator.
        legacy_unit: String,
        /// Which part of the script said what it starts.
        rule: Rule,
    },
}

impl Fate {
    /// The target and legacy unit of a script our units take over or leave to it.
    pub fn mapped(&self) -> Option<(Target, &str)> {
        match self {
            Fate::LeftToScript {
                target,
                legacy_unit,
                ..
            }
            | Fate::Replaced {
                target,
                legacy_unit,
                ..
            } => Some((*target, legacy_unit)),
            _ => None,
        }
    }
}

/// Is this a backup or editor file that systemd-sysv-generator would skip too?
fn is_backup_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [
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
        .any(|s| name.ends_with(s))
}

/// The names of the `vshell-*` scripts under `/etc/init.d` (regular files, or symlinks to
/// them; no backups), sorted.
pub fn list(root: &Root) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root.real(Path::new(INIT_DIR))) else {
        return Vec::new();
    };
    // The directory entry's type comes with getdents; only symlinks need a stat.
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| t.is_file() || (t.is_symlink() && e.path().is_file()))
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(SCRIPT_PREFIX) && !is_backup_name(n))
        .collect();
    names.sort();
    names
}

/// Read the named scripts. Unreadable ones are returned as (path, reason) so the caller can
/// report them.
pub fn read(root: &Root, names: Vec<String>) -> (Vec<InitScript>, Vec<(PathBuf, String)>) {
    let mut scripts = Vec::with_capacity(names.len());
    let mut unreadable = Vec::new();
    for name in names {
        let path = Path::new(INIT_DIR).join(&name);
        match crate::install::read_small_file(&root.real(&path)) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                scripts.push(InitScript {
                    facts: read_facts(&text),
                    name,
                    path,
                });
            }
            Err(e) => unreadable.push((path, e.to_string())),
        }
    }
    (scripts, unreadable)
}

/// [`list`] and [`read`] in one.
pub fn scan(root: &Root) -> (Vec<InitScript>, Vec<(PathBuf, String)>) {
    read(root, list(root))
}

/// Pull the facts out of a script's text.
pub fn read_facts(text: &str) -> ScriptFacts {
    let mut facts = ScriptFacts::default();
    let mut vars: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        // Only assignments and calls of the vendor's programs say anything; most lines of a
        // script are comments and case arms, and thousands of scripts are read at boot.
        let relevant =
            line.contains('=') || line.contains("startinstance") || line.contains("nodemanager");
        if !relevant || line.trim_start().starts_with('#') {
            continue;
        }
        let words = shell_words(line, &vars);
        let mut rest = &words[..];
        if rest
            .first()
            .is_some_and(|w| w == "export" || w == "readonly" || w == "local")
        {
            rest = &rest[1..];
        }
        // Assignments: NAME=value [NAME=value ...] at the start of a command.
        let mut assigned_any = false;
        for word in rest {
            match word.split_once('=') {
                Some((var, value)) if is_identifier(var) => {
                    assigned_any = true;
                    match var {
                        "VDISTDIR" => facts.vdistdir = Some(value.to_string()),
                        "VINSTDIR" => facts.vinstdir = Some(value.to_string()),
                        _ => {}
                    }
                    vars.insert(var.to_string(), value.to_string());
                }
                _ => break,
            }
        }
        if assigned_any && rest.iter().all(|w| w.contains('=')) {
            continue;
        }
        for (i, word) in words.iter().enumerate() {
            let program = word.rsplit('/').next().unwrap_or(word);
            match program {
                "startinstance" | "startinstance.sh" => facts
                    .startinstance
                    .push(startinstance_args(&words[i + 1..])),
                "nodemanager" | "nodemanager.sh" => facts.calls_nodemanager = true,
                _ => {}
            }
        }
    }
    facts
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The instance-selecting arguments of a startinstance call, up to the end of the command.
fn startinstance_args(args: &[String]) -> StartinstanceCall {
    let mut call = StartinstanceCall::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if OPERATORS.contains(&a) {
            break;
        }
        let next = args
            .get(i + 1)
            .filter(|n| !OPERATORS.contains(&n.as_str()))
            .cloned();
        let (slot, attached) = match a.get(..2) {
            Some("-n") => (Some(&mut call.name), &a[2..]),
            Some("-g") => (Some(&mut call.group), &a[2..]),
            Some("-h") => (Some(&mut call.dir), &a[2..]),
            Some("-b") | Some("-D") => (None, &a[2..]),
            _ => {
                if !a.starts_with('-') && call.dir.is_none() && call.name.is_none() && i == 0 {
                    call.dir = Some(a.to_string());
                }
                if a == "-e" {
                    break;
                }
                i += 1;
                continue;
            }
        };
        if attached.is_empty() {
            if let Some(slot) = slot {
                *slot = next;
            }
            i += 2;
        } else {
            if let Some(slot) = slot {
                *slot = Some(attached.to_string());
            }
            i += 1;
        }
    }
    call
}

const OPERATORS: [&str; 6] = [";", "|", "&", "(", ")", "\n"];

/// Split one line the way sh would (quotes, backslashes, `$VAR`/`${VAR}` from earlier
/// assignments), with `; | & ( )` as words of their own and `#` starting a comment.
/// Unknown variables stay as written, so they never silently match anything.
pub fn shell_words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars>, out: &mut String| {
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if braced {
            if chars.peek() == Some(&'}') {
                chars.next();
            } else {
                // ${VAR:-default} and friends: keep the text, do not guess.
                out.push_str("${");
                out.push_str(&name);
                return;
            }
        }
        match vars.get(&name) {
            Some(v) if !name.is_empty() => out.push_str(v),
            _ if name.is_empty() => out.push('$'),
            _ if braced => out.push_str(&format!("${{{name}}}")),
            _ => out.push_str(&format!("${name}")),
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            ';' | '|' | '&' | '(' | ')' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                words.push(c.to_string());
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.peek() {
                            Some(&n) if "$`\"\\".contains(n) => {
                                cur.push(n);
                                chars.next();
                            }
                            _ => cur.push('\\'),
                        },
                        '$' => expand(&mut chars, &mut cur),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, &mut cur);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn clean_dir(s: &str) -> PathBuf {
    PathBuf::from(s.trim_end_matches('/'))
}

/// What an instance directory or a group/instance name denotes on this host.
#[derive(Debug, Clone, Copy)]
enum Known<'a> {
    /// A local, generated instance (index into `instances`).
    Local(usize),
    /// An instance of another host.
    Remote(&'a RemoteInstance),
    /// A local instance left out because of a problem: (group, instance).
    Rejected(&'a str, &'a str),
}

/// The installation indexed for mapping scripts: built once, so mapping N scripts costs
/// O(N), not O(N x instances).
pub struct Lookup<'a> {
    inst: &'a Installation,
    by_dir: HashMap<&'a Path, Known<'a>>,
    by_name: HashMap<(&'a str, &'a str), Known<'a>>,
    /// managedomain's script name (`<group>-<instance>`, spaces as dashes) -> local instances.
    by_convention: HashMap<String, Vec<usize>>,
}

impl<'a> Lookup<'a> {
    /// Index an installation.
    pub fn new(inst: &'a Installation) -> Self {
        let mut l = Lookup {
            inst,
            by_dir: HashMap::new(),
            by_name: HashMap::new(),
            by_convention: HashMap::new(),
        };
        for (g, n, d) in &inst.rejected_instances {
            l.by_dir.insert(d, Known::Rejected(g, n));
            l.by_name.insert((g, n), Known::Rejected(g, n));
        }
        for r in &inst.remote_instances {
            l.by_dir.entry(&r.dir).or_insert(Known::Remote(r));
            l.by_name
                .entry((&r.group, &r.name))
                .or_insert(Known::Remote(r));
        }
        let dashed = |s: &str| s.replace(' ', "-");
        for (i, x) in inst.instances.iter().enumerate() {
            l.by_dir.insert(&x.dir, Known::Local(i));
            l.by_name.insert((&x.group.name, &x.name), Known::Local(i));
            l.by_convention
                .entry(format!("{}-{}", dashed(&x.group.name), dashed(&x.name)))
                .or_default()
                .push(i);
        }
        l
    }

    fn resolve(&self, known: Option<Known>, what: &str, rule: Rule) -> Mapping {
        let reason = match known {
            Some(Known::Local(i)) => {
                return Mapping::Mapped {
                    target: Target::Instance(i),
                    rule,
                }
            }
            Some(Known::Remote(r)) => format!(
                "{rule} names {}/{}, which runs on host {:?}",
                r.group, r.name, r.host
            ),
            Some(Known::Rejected(g, n)) => {
                format!("{rule} names {g}/{n}, which is not generated (see the error above)")
            }
            None => {
                format!("{rule} names {what}, which is no instance of this host in topology.json")
            }
        };
        Mapping::Unmapped { reason }
    }

    fn by_dir(&self, dir: &str, rule: Rule) -> Mapping {
        let dir = clean_dir(dir);
        self.resolve(
            self.by_dir.get(dir.as_path()).copied(),
            &dir.display().to_string(),
            rule,
        )
    }

    fn by_name(&self, group: &str, name: &str) -> Mapping {
        self.resolve(
            self.by_name.get(&(group, name)).copied(),
            &format!("{group}/{name}"),
            Rule::StartinstanceArgs,
        )
    }

    /// Decide what happens to a script (see [`Fate`]).
    pub fn fate(&self, script: &InitScript) -> Fate {
        let (target, rule) = match self.map(script) {
            Mapping::Mapped { target, rule } => (target, rule),
            Mapping::Unmapped { reason } => return Fate::LeftAlone { reason },
        };
        let Some(legacy_unit) = script.sysv_unit() else {
            return Fate::Unnamable { target };
        };
        match target.settings(self.inst).is_some_and(|s| s.legacy_initd) {
            true => Fate::LeftToScript {
                target,
                legacy_unit,
                rule,
            },
            false => Fate::Replaced {
                target,
                legacy_unit,
                rule,
            },
        }
    }

    /// Decide what a script starts, by what it says, in order: VINSTDIR, startinstance
    /// arguments, a nodemanager call, and only then its name.
    pub fn map(&self, script: &InitScript) -> Mapping {
        let (f, inst) = (&script.facts, self.inst);
        let unmapped = |reason: String| Mapping::Unmapped { reason };
        if let Some(dist) = &f.vdistdir {
            if clean_dir(dist) != inst.install_dir {
                return unmapped(format!(
                    "it sets VDISTDIR={dist:?} but this host's installation is {}",
                    inst.install_dir.display()
                ));
            }
        }
        if let Some(dir) = &f.vinstdir {
            return self.by_dir(dir, Rule::Vinstdir);
        }
        let mut found: Option<Mapping> = None;
        for call in &f.startinstance {
            let m = match (&call.name, &call.group, &call.dir) {
                (_, _, Some(dir)) => self.by_dir(dir, Rule::StartinstanceArgs),
                (Some(n), Some(g), None) => self.by_name(g, n),
                _ => unmapped("its startinstance call has neither -n and -g nor -h".to_string()),
            };
            match &found {
                None => found = Some(m),
                Some(prev) if *prev != m => {
                    return unmapped(
                        "its startinstance calls name different instances".to_string(),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(m) = found {
            return m;
        }
        if f.calls_nodemanager {
            return match inst.node_manager {
                Some(_) => Mapping::Mapped {
                    target: Target::NodeManager,
                    rule: Rule::NodemanagerCall,
                },
                None => unmapped(
                    "it calls nodemanager, but topology.json has no Node Manager on this host"
                        .to_string(),
                ),
            };
        }
        let rest = script
            .name
            .strip_prefix(SCRIPT_PREFIX)
            .unwrap_or(&script.name);
        if let Some(host) = rest.strip_prefix("Node-Manager-on-") {
            if inst.node_manager.is_some()
                && (host_matches(&inst.host, host) || inst.host.replace('.', "-") == host)
            {
                return Mapping::Mapped {
                    target: Target::NodeManager,
                    rule: Rule::NamingConvention,
                };
            }
        }
        match self.by_convention.get(rest).map(Vec::as_slice) {
            Some([i]) => Mapping::Mapped { target: Target::Instance(*i), rule: Rule::NamingConvention },
            Some([_, _, ..]) => unmapped("its name fits more than one instance".to_string()),
            _ => unmapped(
                "it sets no VINSTDIR, calls neither startinstance nor nodemanager, and its name matches no instance of this host"
                    .to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        HashMap::from([("VDISTDIR".to_string(), "/opt/apigateway".to_string())])
    }

    #[test]
    fn words_follow_shell_quoting() {
        let w = shell_words(
            r#"  start)   "$VDISTDIR/posix/bin/startinstance" -n 'edge node 1' -g pay\ eu -d ;; # x"#,
            &vars(),
        );
        assert_eq!(
            w,
            [
                "start",
                ")",
                "/opt/apigateway/posix/bin/startinstance",
                "-n",
                "edge node 1",
                "-g",
                "pay eu",
                "-d",
                ";",
                ";"
            ]
        );
        assert_eq!(
            shell_words("a=${VDISTDIR}/x $UNKNOWN ${X:-y}", &vars()),
            ["a=/opt/apigateway/x", "$UNKNOWN", "${X:-y}"]
        );
    }

    #[test]
    fn facts_from_a_managedomain_script() {
        let f = read_facts(
            "VDISTDIR=\"/opt/apigateway\"\nVINSTDIR=\"$VDISTDIR/groups/group-2/instance-1\"\nexport VDISTDIR VINSTDIR\n\
             start) \"$VDISTDIR/posix/bin/startinstance\" -d -h \"$VINSTDIR\" ;;\n",
        );
        assert_eq!(f.vdistdir.as_deref(), Some("/opt/apigateway"));
        assert_eq!(
            f.vinstdir.as_deref(),
            Some("/opt/apigateway/groups/group-2/instance-1")
        );
        assert_eq!(
            f.startinstance[0].dir.as_deref(),
            Some("/opt/apigateway/groups/group-2/instance-1")
        );
    }

    #[test]
    fn startinstance_arguments_in_any_order_and_form() {
        let call = |s: &str| startinstance_args(&shell_words(s, &HashMap::new()));
        let c = call(r#"-g "payments-eu" -k -n"edge node 1""#);
        assert_eq!(
            (c.name.as_deref(), c.group.as_deref()),
            (Some("edge node 1"), Some("payments-eu"))
        );
        let c = call("/opt/x/groups/g/i -d");
        assert_eq!(c.dir.as_deref(), Some("/opt/x/groups/g/i"));
        let c = call("-D a=b -n s1 -g g1 ; -n other");
        assert_eq!(
            (c.name.as_deref(), c.group.as_deref(), c.dir),
            (Some("s1"), Some("g1"), None)
        );
    }

    #[test]
    fn backup_files_are_not_scripts() {
        assert!(is_backup_name("vshell-a~"));
        assert!(is_backup_name("vshell-a.dpkg-old"));
        assert!(!is_backup_name("vshell-a"));
    }
}
