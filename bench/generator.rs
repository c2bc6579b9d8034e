//! Benchmark: our generator against systemd-sysv-generator on the same host's worth of
//! vshell-* init scripts, at 10, 100 and 1,000 instances, in one run.
//!
//! `cargo bench --bench generator` prints, per size, the median and best wall time of each
//! (process start to exit, as systemd sees it), their ratio, and each one's peak RSS.
//! Targets: ours >= 5x faster than sysv-generator at 1,000, <= 2 ms at 10.
//! `-- --quick` runs fewer rounds; `-- --write-fixtures DIR` only writes the fixture hosts.

mod fixtures;

use fixtures::write_fixture;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SYSV_GENERATOR: [&str; 2] = [
    "/usr/lib/systemd/system-generators/systemd-sysv-generator",
    "/lib/systemd/system-generators/systemd-sysv-generator",
];

/// Run a generator once into fresh output dirs; wall time and peak RSS (KiB).
// The child is reaped by wait4(2), which also reports its peak RSS; Child::wait cannot.
#[allow(clippy::zombie_processes)]
fn run_once(cmd: &mut Command, out: &Path) -> (Duration, i64) {
    let _ = fs::remove_dir_all(out);
    for d in ["normal", "early", "late"] {
        fs::create_dir_all(out.join(d)).unwrap();
    }
    cmd.args([out.join("normal"), out.join("early"), out.join("late")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn generator");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unreaped child; status and usage point to live locals.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "generator failed: status {status}"
    );
    (elapsed, usage.ru_maxrss)
}

struct Stats {
    median: Duration,
    best: Duration,
    rss_kib: i64,
}

fn measure(rounds: usize, mut make: impl FnMut() -> Command, out: &Path) -> Stats {
    run_once(&mut make(), out); // warm the page cache
    let mut times = Vec::with_capacity(rounds);
    let mut rss = 0;
    for _ in 0..rounds {
        let (t, r) = run_once(&mut make(), out);
        times.push(t);
        rss = rss.max(r);
    }
    times.sort();
    Stats {
        median: times[times.len() / 2],
        best: times[0],
        rss_kib: rss,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| {
                    if e.path().is_dir() && !e.path().is_symlink() {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--write-fixtures DIR`: only write the fixture hosts (for profiling by hand).
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--write-fixtures")
        .and_then(|i| args.get(i + 1))
    {
        for n in [10usize, 100, 1000] {
            write_fixture(&Path::new(dir).join(format!("host-{n}")), n);
        }
        return;
    }
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_gateway-generator"));
    let Some(sysv) = SYSV_GENERATOR
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("systemd-sysv-generator not found (apt-get install systemd); nothing to compare against");
        std::process::exit(1);
    };
    let scratch = tempfile::tempdir().unwrap();
    // systemd hands generators directories on /run, a tmpfs: write the outputs to one too, so
    // the figures are not those of this machine's disk.
    let shm = Path::new("/dev/shm");
    let outputs = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    println!("generator benchmark: wall time per run (spawn to exit), median and best; peak RSS");
    println!(
        "{:>9} | {:>17} | {:>17} | {:>12} | {:>9} | {:>9} | {:>7}",
        "instances",
        "ours ms (best)",
        "sysv ms (best)",
        "sysv / ours",
        "ours RSS",
        "sysv RSS",
        "files"
    );
    let floor = measure(
        if quick { 20 } else { 200 },
        || Command::new("true"),
        &outputs.path().join("out"),
    );
    let mut verdicts = vec![format!(
        "floor: starting and reaping a process (`true`) takes {:.2} ms here; every figure above includes it",
        ms(floor.median)
    )];
    for n in [10usize, 100, 1000] {
        let root = scratch.path().join(format!("host-{n}"));
        write_fixture(&root, n);
        let rounds = match (quick, n) {
            (true, _) => 5,
            (false, 1000) => 30,
            (false, _) => 100,
        };
        let out = outputs.path().join("out");
        let our = measure(
            rounds,
            || {
                let mut c = Command::new(&ours);
                c.env("GATEWAY_SYSTEMD_ROOT", &root);
                c
            },
            &out,
        );
        let files = count_files(&out.join("normal"));
        let theirs = measure(
            rounds,
            || {
                let mut c = Command::new(&sysv);
                c.env("SYSTEMD_SYSVINIT_PATH", root.join("etc/init.d"))
                    .env("SYSTEMD_SYSVRCND_PATH", root.join("etc"))
                    .env("SYSTEMD_LOG_LEVEL", "err");
                c
            },
            &out,
        );
        let sysv_files = count_files(&out.join("late"));
        let ratio = theirs.median.as_secs_f64() / our.median.as_secs_f64();
        println!(
            "{n:>9} | {:>7.2} ({:>6.2}) | {:>7.2} ({:>6.2}) | {ratio:>11.1}x | {:>6} KiB | {:>5} KiB | {files}/{sysv_files}",
            ms(our.median), ms(our.best), ms(theirs.median), ms(theirs.best), our.rss_kib, theirs.rss_kib
        );
        if n == 10 {
            verdicts.push(format!(
                "10 instances: {:.2} ms (target <= 2 ms): {}",
                ms(our.median),
                if ms(our.median) <= 2.0 {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
        if n == 1000 {
            verdicts.push(format!("1,000 instances: {ratio:.1}x faster than systemd-sysv-generator (target >= 5x): {}", if ratio >= 5.0 { "met" } else { "MISSED" }));
        }
    }
    println!("(files: entries our generator wrote / entries systemd-sysv-generator wrote)");
    for v in verdicts {
        println!("{v}");
    }
}
