//! Benchmark: `gatewayctl backup` against `tar -c | zstd -T0` (same level), and `gatewayctl
//! restore` (with its verification) against `zstd -d | tar -x`, on a generated installation of
//! more than 1 GiB (tens of thousands of small files and a few large ones), in the same run.
//! Targets: backup at least 1.0x the pipeline's throughput while hashing every file; restore at
//! most 1.2x the plain extraction's time.
//!
//! Each extraction goes to a fresh ext4 filesystem on a loop device, each measurement starts
//! with nothing left to write back. `cargo bench --bench backup` (root, GNU tar, zstd and
//! mkfs.ext4 needed); `-- --quick` uses a smaller tree (the ratios then say less);
//! `BENCH_BACKUP_TREE=DIR` keeps the generated tree there between runs, `BENCH_BACKUP_ROUNDS`
//! sets the rounds (3).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
use common::Rng;

/// The scopes the pipeline takes: the same as the backup's, for the same bytes.
const SCOPES: [&str; 4] = [
    "opt/apigateway/groups",
    "opt/apigateway/conf",
    "opt/apigateway/ext",
    "etc/gateway-systemd",
];

/// Data that compresses about as a gateway's configuration and jars do: text with repeats,
/// some noise.
fn fill(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "<entity type=\"Filter\">",
        "</entity>",
        "<fval name=\"name\"><value>",
        "</value></fval>",
        "healthcheck",
        "com.vordel.circuit",
        "PolicyShortcut",
        "<key type=\"Circuit\">",
        "server1",
        "group1",
        "ConnectToURL",
        "\n    ",
    ];
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let r = rng.next();
        if r % 5 == 0 {
            out.extend_from_slice(&r.to_le_bytes());
        } else {
            out.extend_from_slice(WORDS[(r % 12) as usize].as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// The installation: `small` files of 1-48 KiB in instance directories, and three large ones.
fn generate(root: &Path, small: usize, large_mib: usize) -> u64 {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut total = 0u64;
    let groups = root.join("opt/apigateway/groups");
    for k in 0..small {
        let dir = groups.join(format!(
            "group-{}/instance-{}/conf/fed/d{}",
            k % 4,
            k % 16,
            k % 64
        ));
        if k < 64 * 16 {
            fs::create_dir_all(&dir).unwrap();
        }
        let len = 1024 + (rng.next() % (47 * 1024)) as usize;
        fs::write(dir.join(format!("entity-{k}.xml")), fill(&mut rng, len)).unwrap();
        total += len as u64;
    }
    for (k, dir) in [
        "opt/apigateway/ext/lib",
        "opt/apigateway/conf",
        "opt/apigateway/groups/group-0/instance-0",
    ]
    .iter()
    .enumerate()
    {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).unwrap();
        let mut f = fs::File::create(dir.join(format!("large-{k}.bin"))).unwrap();
        for _ in 0..large_mib {
            let block = fill(&mut rng, 1 << 20);
            f.write_all(&block).unwrap();
            total += block.len() as u64;
        }
    }
    fs::write(
        groups.join("topology.json"),
        r#"{"hosts":[{"id":"host-1","name":"bench.example.com"}],"groups":[],"services":[]}"#,
    )
    .unwrap();
    fs::create_dir_all(root.join("etc/gateway-systemd")).unwrap();
    fs::write(
        root.join("etc/gateway-systemd/gateway.toml"),
        "host = \"bench.example.com\"\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    fs::write(root.join("proc/sys/kernel/hostname"), "bench.example.com\n").unwrap();
    total
}

/// Start each measurement from the same state: nothing left to write back from the one before.
fn settle() {
    let _ = Command::new("sync").status();
}

/// A fresh ext4 filesystem (with a journal, as a host's) on a loop device, mounted for one
/// extraction: every extraction starts from the same empty filesystem. (Extracting into a
/// directory of a long-used filesystem measures that filesystem's state: ext4 without a
/// journal, as this machine's root, scans past every recently deleted inode when it allocates
/// one, which made the same extraction take 4 s or 25 s.)
struct FreshFs {
    mount: PathBuf,
    image: PathBuf,
    device: PathBuf,
}

impl FreshFs {
    fn new(base: &Path, name: &str, bytes: u64) -> Self {
        let image = base.join(format!("{name}.img"));
        let mount = base.join(name);
        fs::create_dir_all(&mount).unwrap();
        let size = bytes * 2 + (1 << 30);
        let f = fs::File::create(&image).unwrap();
        f.set_len(size).unwrap();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        // Direct I/O: what the filesystem writes back reaches the disk then, as on a host's
        // own disk, not the page cache of the file behind the loop device.
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        ok(Command::new("mount").arg(&device).arg(&mount));
        FreshFs {
            mount,
            image,
            device,
        }
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        let _ = fs::remove_file(&self.image);
        let _ = fs::remove_dir(&self.mount);
    }
}

fn timed(what: &str, mut cmd: Command) -> Duration {
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

fn only(dir: &Path, ext: &str) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(ext))
        .unwrap()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !nix::unistd::geteuid().is_root() {
        eprintln!("backup benchmark: needs root (restore sets owners)");
        std::process::exit(1);
    }
    let gatewayctl = env!("CARGO_BIN_EXE_gatewayctl");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (small, large) = if quick { (4_000, 20) } else { (40_000, 150) };
    // BENCH_BACKUP_TREE keeps the generated tree there between runs (for profiling).
    let kept = std::env::var_os("BENCH_BACKUP_TREE").map(PathBuf::from);
    let root = kept.clone().unwrap_or_else(|| dir.path().join("root"));
    let bytes = match kept.as_ref().map(|k| k.join(".bytes")) {
        Some(mark) if mark.exists() => fs::read_to_string(&mark).unwrap().trim().parse().unwrap(),
        mark => {
            let _ = fs::remove_dir_all(&root);
            let bytes = generate(&root, small, large);
            if let Some(mark) = mark {
                fs::write(mark, bytes.to_string()).unwrap();
            }
            bytes
        }
    };
    println!(
        "tree: {small} small files and 3 large ones, {:.0} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    // Both read from the page cache.
    let _ = sh(&format!(
        "find {} -type f -exec cat {{}} + > /dev/null",
        root.display()
    ))
    .status();
    let rounds = std::env::var("BENCH_BACKUP_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_r, mut theirs_r, mut theirs_rs) = (Vec::new(), Vec::new(), Vec::new());
    let mut sizes = (0, 0);
    for round in 0..rounds {
        let out = dir.path().join(format!("ours-{round}"));
        let mut c = Command::new(gatewayctl);
        c.args(["backup", "--to"])
            .arg(&out)
            .env("GATEWAY_SYSTEMD_ROOT", &root);
        settle();
        ours.push(timed("gatewayctl backup", c));
        let archive = only(&out, ".tar.zst");
        let pipeline = dir.path().join(format!("tar-{round}.tar.zst"));
        settle();
        theirs.push(timed(
            "tar | zstd",
            sh(&format!(
                "tar -C {} -cf - {} | zstd -q -3 -T0 -o {}",
                root.display(),
                SCOPES.join(" "),
                pipeline.display()
            )),
        ));
        println!(
            "  round {round}: backup {:.2}s, tar | zstd {:.2}s",
            ours[round].as_secs_f64(),
            theirs[round].as_secs_f64()
        );
        sizes = (
            fs::metadata(&archive).unwrap().len(),
            fs::metadata(&pipeline).unwrap().len(),
        );
        let target_fs = FreshFs::new(dir.path(), &format!("restored-{round}"), bytes);
        let target = target_fs.mount.clone();
        let mut c = Command::new(gatewayctl);
        c.args(["restore"])
            .arg(&archive)
            .arg("--target")
            .arg(&target);
        settle();
        ours_r.push(timed("gatewayctl restore", c));
        let plain_fs = FreshFs::new(dir.path(), &format!("plain-{round}"), bytes);
        let plain = plain_fs.mount.clone();
        settle();
        theirs_r.push(timed(
            "zstd -d | tar -x",
            sh(&format!(
                "zstd -q -dc {} | tar -C {} -xpf -",
                pipeline.display(),
                plain.display()
            )),
        ));
        // The same extraction made durable, as restore's is before it swaps anything in.
        let plain2_fs = FreshFs::new(dir.path(), &format!("plain-sync-{round}"), bytes);
        let plain2 = plain2_fs.mount.clone();
        settle();
        theirs_rs.push(timed(
            "zstd -d | tar -x; sync",
            sh(&format!(
                "zstd -q -dc {} | tar -C {} -xpf - && sync -f {}",
                pipeline.display(),
                plain2.display(),
                plain2.display()
            )),
        ));
        println!(
            "  round {round}: restore {:.2}s, zstd -d | tar -x {:.2}s, with sync {:.2}s",
            ours_r[round].as_secs_f64(),
            theirs_r[round].as_secs_f64(),
            theirs_rs[round].as_secs_f64()
        );
        drop((target_fs, plain_fs, plain2_fs));
        for p in [out, pipeline] {
            let _ = fs::remove_dir_all(&p);
            let _ = fs::remove_file(&p);
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (b_ours, b_theirs) = (median(ours), median(theirs));
    let (r_ours, r_theirs, r_theirs_sync) = (median(ours_r), median(theirs_r), median(theirs_rs));
    println!(
        "backup:  gatewayctl {:.2}s ({:.0} MiB/s, archive {:.0} MiB) | tar | zstd -3 -T0 {:.2}s ({:.0} MiB/s, {:.0} MiB) | throughput ratio {:.2}x (target >= 1.0x)",
        b_ours.as_secs_f64(),
        mib_s(bytes, b_ours),
        sizes.0 as f64 / (1 << 20) as f64,
        b_theirs.as_secs_f64(),
        mib_s(bytes, b_theirs),
        sizes.1 as f64 / (1 << 20) as f64,
        b_theirs.as_secs_f64() / b_ours.as_secs_f64()
    );
    println!(
        "restore: gatewayctl {:.2}s (verified, staged, synced, swapped) | zstd -d | tar -x {:.2}s | with sync {:.2}s | time ratio {:.2}x (target <= 1.2x), {:.2}x against the synced extraction",
        r_ours.as_secs_f64(),
        r_theirs.as_secs_f64(),
        r_theirs_sync.as_secs_f64(),
        r_ours.as_secs_f64() / r_theirs.as_secs_f64(),
        r_ours.as_secs_f64() / r_theirs_sync.as_secs_f64()
    );
}
