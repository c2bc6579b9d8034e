//! Helpers shared by the integration tests: running the real generator binary and checking its
//! output with the real `systemd-analyze verify`.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The crate root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built generator.
pub fn generator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway-generator"))
}

/// Run the generator on a fixture root, writing into `out/{normal,early,late}`.
pub fn run_generator(root: &Path, out: &Path) -> Output {
    for d in ["normal", "early", "late"] {
        fs::create_dir_all(out.join(d)).unwrap();
    }
    Command::new(generator_bin())
        .args([out.join("normal"), out.join("early"), out.join("late")])
        .env("GATEWAY_SYSTEMD_ROOT", root)
        .env_remove("CI")
        .output()
        .expect("run gateway-generator")
}

/// Copy a tree, keeping symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// The built binaries, by name, as `packaging/layout` refers to them.
pub fn bins() -> Vec<(&'static str, PathBuf)> {
    vec![
        (
            "gateway-generator",
            PathBuf::from(env!("CARGO_BIN_EXE_gateway-generator")),
        ),
        (
            "gateway-launch",
            PathBuf::from(env!("CARGO_BIN_EXE_gateway-launch")),
        ),
        (
            "gatewayctl",
            PathBuf::from(env!("CARGO_BIN_EXE_gatewayctl")),
        ),
        (
            "gateway-demo",
            PathBuf::from(env!("CARGO_BIN_EXE_gateway-demo")),
        ),
        (
            "startinstance",
            PathBuf::from(env!("CARGO_BIN_EXE_startinstance")),
        ),
        (
            "nodemanager",
            PathBuf::from(env!("CARGO_BIN_EXE_nodemanager")),
        ),
    ]
}

/// What `gateway-docs` writes (man pages, completions), generated once per test binary.
fn docs_dir() -> Result<&'static Path, String> {
    static DOCS: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DOCS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("gateway-docs.{}", std::process::id()));
        gateway_systemd::docs::generate(&dir)
            .map(|_| dir)
            .map_err(|e| format!("gateway-docs: {e}"))
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// The files a layout source names: a binary, generated docs (a glob), or a repository file.
fn layout_sources(source: &str, bins: &[(&str, PathBuf)]) -> Result<Vec<PathBuf>, String> {
    if let Some(name) = source.strip_prefix("bin:") {
        return bins
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| vec![p.clone()])
            .ok_or_else(|| {
                format!("packaging/layout names binary {name}, which the tests do not know")
            });
    }
    let Some(glob) = source.strip_prefix("doc:") else {
        return Ok(vec![repo().join(source)]);
    };
    // `dir/*.8` or `dir/*`: the only globs the layout uses.
    let (dir, pattern) = glob.rsplit_once('/').unwrap_or(("", glob));
    let suffix = pattern.strip_prefix('*').unwrap_or(pattern);
    let dir = docs_dir()?.join(dir);
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
        })
        .collect();
    found.sort();
    match found.is_empty() {
        true => Err(format!("packaging/layout: nothing matches doc:{glob}")),
        false => Ok(found),
    }
}

/// Install the package's files (both packages: the product and the demo gateway) into `root`
/// as `packaging/layout` says, as packaging/install does.
pub fn install_package(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let layout = fs::read_to_string(repo().join("packaging/layout"))
        .map_err(|e| format!("packaging/layout: {e}"))?;
    let bins = bins();
    for line in layout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [source, dest, mode, _package] = fields[..] else {
            return Err(format!("packaging/layout: bad line {line:?}"));
        };
        let mode =
            u32::from_str_radix(mode, 8).map_err(|e| format!("packaging/layout: {mode}: {e}"))?;
        for from in layout_sources(source, &bins)? {
            let to = match dest.ends_with('/') {
                true => root
                    .join(dest.trim_start_matches('/'))
                    .join(from.file_name().unwrap_or_default()),
                false => root.join(dest.trim_start_matches('/')),
            };
            fs::create_dir_all(to.parent().unwrap()).map_err(|e| e.to_string())?;
            let _ = fs::remove_file(&to);
            // Binaries are large and copied per test case: link them when the filesystem allows.
            let linked = source.starts_with("bin:") && fs::hard_link(&from, &to).is_ok();
            if !linked {
                fs::copy(&from, &to)
                    .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))?;
            }
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .map_err(|e| e.to_string())?;
        }
    }
    apply_preset(root)
}

/// Apply the package's preset as its postinst does: gateway.target and the backup timer are
/// enabled, the drill timer is not.
pub fn apply_preset(root: &Path) -> Result<(), String> {
    let out = Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .args([
            "preset",
            "gateway.target",
            "gateway-backup.timer",
            "gateway-drill.timer",
        ])
        .output()
        .map_err(|e| format!("systemctl preset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl --root={} preset gateway.target gateway-backup.timer gateway-drill.timer failed: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Core units the templates depend on, copied from the host into the verify root.
const CORE_UNITS: [&str; 7] = [
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "network-online.target",
    "network.target",
    "multi-user.target",
    "local-fs.target",
];

/// Whether `systemd-analyze` is available here.
pub fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Verify every unit the generator wrote into `normal` (drop-ins combined with our templates)
/// (and the package's binaries, installed per `packaging/layout`) with `systemd-analyze verify
/// --root`, and check that each service's exposure
/// (`systemd-analyze security`) stays at most 1.5. Returns the offending output, if any.
pub fn verify_generated(normal: &Path, scratch: &Path) -> Result<(), String> {
    let root = scratch.join("verify-root");
    let _ = fs::remove_dir_all(&root);
    let unit_dir = root.join("usr/lib/systemd/system");
    install_package(&root)?;
    // gateway-regenerate.service runs systemctl; verify checks that it is there.
    let systemctl = root.join("usr/bin/systemctl");
    fs::create_dir_all(systemctl.parent().unwrap()).map_err(|e| e.to_string())?;
    fs::copy("/usr/bin/systemctl", &systemctl).map_err(|e| format!("/usr/bin/systemctl: {e}"))?;
    let sh = root.join("bin/sh");
    fs::create_dir_all(sh.parent().unwrap()).map_err(|e| e.to_string())?;
    fs::copy("/bin/sh", &sh).map_err(|e| format!("/bin/sh: {e}"))?;
    for u in CORE_UNITS {
        let host = Path::new("/usr/lib/systemd/system").join(u);
        if host.exists() {
            fs::copy(&host, unit_dir.join(u)).unwrap();
        }
    }
    // Generator directories are not searched under --root; /etc/systemd/system is, with the
    // same drop-in and .wants semantics.
    copy_tree(normal, &root.join("etc/systemd/system")).unwrap();
    let mut units: Vec<String> = fs::read_dir(normal)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        // Drop-ins (`gateway@x.service.d`) and whole units the generator writes.
        .filter_map(|n| match n.strip_suffix(".d") {
            Some(unit) => Some(unit.to_string()),
            None => n.ends_with(".service").then_some(n),
        })
        .filter(|n| n.starts_with("gateway"))
        .collect();
    units.sort();
    units.push("gateway.target".into());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(format!("--root={}", root.display()))
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // verify prints nothing for good units; any line is a finding.
    if !out.status.success() || !text.trim().is_empty() {
        return Err(format!(
            "systemd-analyze verify {} failed ({}):\n{text}",
            units.join(" "),
            out.status
        ));
    }
    // Every generated gateway service keeps the hardening of its template: exposure at most
    // 1.5. gateway-regenerate.service is root's `systemctl daemon-reload`, as systemd's own
    // units; gateway-backup.service (a drop-in with its directory's mount) is root reading
    // every file of the installation and running the operator's hooks (mysqldump, scp).
    let services: Vec<&String> = units
        .iter()
        .filter(|u| {
            u.ends_with(".service")
                && !["gateway-regenerate.service", "gateway-backup.service"].contains(&u.as_str())
        })
        .collect();
    if services.is_empty() {
        return Ok(());
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=15"])
        .arg(format!("--root={}", root.display()))
        .args(&services)
        .output()
        .expect("run systemd-analyze security");
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stdout);
        let overall: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Overall exposure"))
            .collect();
        Err(format!(
            "an exposure level is above 1.5:\n{}",
            overall.join("\n")
        ))
    }
}

/// A small deterministic random number generator (xorshift64): the same seed, the same
/// sequence, for tests and benchmarks that print their seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
