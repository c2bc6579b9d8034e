//! `gatewayctl backup`, `verify` and `restore` through the binary, on real files: a round trip
//! of a tree with everything a filesystem holds, GNU tar reading our archives, a corpus of
//! hostile archives each refused with nothing changed, bit flips always caught, and restores
//! killed with SIGKILL at random points always ending as the old tree or the new one.
//!
//! Owners and set-id bits need root: without it these tests say so and pass, except under
//! CI=true, where a missing prerequisite fails the run.

use gateway_systemd::backup::manifest::{self, Entry, Kind, Manifest, ScopeRecord};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{repo, Rng};

/// Whether the tests can run here; under CI a missing prerequisite is a failure.
fn prerequisites() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tar = Command::new("tar").arg("--version").output().is_ok();
    // The reference age tool decrypts what we encrypt.
    let age = Command::new("age").arg("--version").output().is_ok()
        && Command::new("age-keygen").arg("--version").output().is_ok();
    if root && tar && age {
        return true;
    }
    let why = format!("needs root ({root}), GNU tar ({tar}) and age (apt-get install age) ({age})");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("skipped: {why}");
    false
}

/// Run gatewayctl with the installation read from `root`; (exit status, stdout + stderr).
fn ctl(root: Option<&Path>, args: &[&str]) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatewayctl"));
    c.args(args);
    if let Some(r) = root {
        c.env("GATEWAY_SYSTEMD_ROOT", r);
    }
    let out = c.output().expect("gatewayctl runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Copy a tree as `cp -a` does, owners and times kept: `common::copy_tree` keeps modes only,
/// and a round trip checks all three.
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .args(["-a", "--"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A host's files: the demo domain, a host name, and whatever `extra` adds.
fn source_root(dir: &Path) -> PathBuf {
    let root = dir.join("source");
    copy_tree(&repo().join("demo/domain"), &root);
    fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    fs::write(root.join("proc/sys/kernel/hostname"), "gw1.example.com\n").unwrap();
    root
}

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(secs, nsec);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Everything a filesystem holds, under the instance directory of group1/server1.
fn add_awkward_entries(root: &Path) -> PathBuf {
    let d = root.join("opt/apigateway/groups/group-2/instance-1/awkward");
    fs::create_dir_all(d.join("name with spaces and ünïcödé")).unwrap();
    fs::write(
        d.join("name with spaces and ünïcödé/ファイル.txt"),
        "こんにちは\n",
    )
    .unwrap();
    let long = "l".repeat(120);
    fs::create_dir_all(d.join(&long).join(&long)).unwrap();
    fs::write(d.join(&long).join(&long).join(&long), "deep and long\n").unwrap();
    fs::create_dir_all(d.join("empty")).unwrap();
    std::os::unix::fs::symlink("../conf/service.xml", d.join("relative-link")).unwrap();
    std::os::unix::fs::symlink("/opt/apigateway/conf", d.join("absolute-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", d.join("dangling-link")).unwrap();
    std::os::unix::fs::symlink(&long, d.join("link-to-long-name")).unwrap();
    let suid = d.join("setuid-tool");
    fs::write(&suid, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let other = d.join("owned-by-1234");
    fs::write(&other, "someone else's\n").unwrap();
    std::os::unix::fs::chown(&other, Some(1234), Some(1234)).unwrap();
    let nobody = d.join("owned-by-nobody");
    fs::write(&nobody, "nobody's\n").unwrap();
    std::os::unix::fs::chown(&nobody, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&nobody, fs::Permissions::from_mode(0o640)).unwrap();
    // Larger than what backup reads whole: streamed.
    let mut big = fs::File::create(d.join("large.bin")).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..70 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        big.write_all(&block).unwrap();
    }
    drop(big);
    // Sparse: 100 MiB with 5 bytes in the middle.
    let sparse = fs::File::create(d.join("sparse.bin")).unwrap();
    sparse.set_len(100 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"hello", 50 << 20).unwrap();
    drop(sparse);
    set_mtime(&d.join("empty"), 1_600_000_000, 123_456_789);
    set_mtime(&d.join("relative-link"), 1_500_000_000, 1);
    set_mtime(&suid, -1, 500_000_000);
    d
}

/// What a tree holds, entry by entry: type, mode, owner, size, mtime (ns), content or target.
fn snapshot(base: &Path, under: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = under.iter().map(|u| base.join(u)).collect();
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(".gateway-restore.") {
            continue;
        }
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        let what = if m.file_type().is_symlink() {
            format!("link {}", fs::read_link(&p).unwrap().display())
        } else if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if m.is_file() {
            manifest::sha256_hex(&fs::read(&p).unwrap())
        } else {
            "special".to_string()
        };
        // A directory's mtime changes with its entries; the rest must match exactly.
        let mtime = match m.is_dir() {
            true => String::new(),
            false => format!("{}.{:09}", m.mtime(), m.mtime_nsec()),
        };
        let mode = match m.file_type().is_symlink() {
            true => 0,
            false => m.mode() & 0o7777,
        };
        // A directory's size is the filesystem's business.
        let size = match m.is_dir() {
            true => String::new(),
            false => m.size().to_string(),
        };
        out.insert(
            rel,
            format!("{what} {mode:o} {}:{} {size} {mtime}", m.uid(), m.gid()),
        );
    }
    out
}

const SCOPES: [&str; 6] = [
    "opt/apigateway/groups",
    "opt/apigateway/conf",
    "opt/apigateway/system/conf/nodemanager.xml",
    "opt/apigateway/ext",
    "etc/init.d",
    "etc/gateway-systemd",
];

fn only_archive(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "zst"))
        .collect();
    assert_eq!(v.len(), 1, "one archive in {}: {v:?}", dir.display());
    v.pop().unwrap()
}

/// A target that knows the source's users by name (same ids).
fn target_root(dir: &Path, name: &str) -> PathBuf {
    let t = dir.join(name);
    fs::create_dir_all(t.join("etc")).unwrap();
    fs::write(
        t.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(t.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    t
}

#[test]
fn round_trip_keeps_everything_and_gnu_tar_reads_it() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_root(dir.path());
    let awkward = add_awkward_entries(&src);
    // conf/opsdb.d is never taken, and a socket is skipped and said.
    let opsdb = src.join("opt/apigateway/conf/opsdb.d/opsdb-000001.dat");
    assert!(opsdb.exists());
    let _socket = std::os::unix::net::UnixListener::bind(awkward.join("control.sock")).unwrap();
    let out = dir.path().join("out");
    let (code, said) = ctl(
        Some(&src),
        &["backup", "--to", out.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 0, "{said}");
    let summary: serde_json::Value = serde_json::from_str(&said).expect(&said);
    assert!(
        summary["skipped"].to_string().contains("control.sock"),
        "{said}"
    );
    let archive = only_archive(&out);
    assert_eq!(
        fs::metadata(&archive).unwrap().mode() & 0o777,
        0o600,
        "the archive holds private keys"
    );
    let (code, said) = ctl(None, &["verify", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{said}");

    let before = snapshot(&src, &SCOPES);
    assert!(before.keys().any(|k| k.contains("ファイル")));

    // Our restore.
    let target = target_root(dir.path(), "restored");
    let (code, said) = ctl(
        None,
        &[
            "restore",
            archive.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{said}");
    let mut want = before.clone();
    want.retain(|k, _| !k.contains("opsdb.d") && !k.ends_with("control.sock"));
    let got = snapshot(&target, &SCOPES);
    assert_eq!(diff(&want, &got), Vec::<String>::new());
    let sparse =
        fs::metadata(target.join("opt/apigateway/groups/group-2/instance-1/awkward/sparse.bin"))
            .unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "the sparse file takes {} bytes on disk",
        sparse.blocks() * 512
    );

    // GNU tar, as an operator would in an emergency.
    let gnu = dir.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    let st = Command::new("tar")
        .args(["--zstd", "-C"])
        .arg(&gnu)
        .arg("-xpf")
        .arg(&archive)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(diff(&want, &snapshot(&gnu, &SCOPES)), Vec::<String>::new());
    let listed = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(&archive)
        .output()
        .unwrap();
    let first = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(first, manifest::MANIFEST_PATH);
    // The hash beside the archive is what sha256sum checks.
    let st = Command::new("sha256sum")
        .arg("-c")
        .arg(gateway_systemd::backup::sidecar_of(&archive))
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
}

fn diff(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => d.push(format!("missing {k}")),
            Some(g) if g != v => d.push(format!("{k}: {g} instead of {v}")),
            _ => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            d.push(format!("extra {k}"));
        }
    }
    d
}

// ---- hostile archives ----

/// One raw tar member: header block(s) and data, padded.
fn member(h: &tar::Header, data: &[u8]) -> Vec<u8> {
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    // Write the raw name: tar's set_path refuses the hostile ones on purpose.
    let bytes = path.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while format!("{len}{rest}").len() != len {
            len += 1;
        }
        body.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    member(
        &header(
            "PaxHeader",
            tar::EntryType::XHeader,
            body.len() as u64,
            0o644,
        ),
        &body,
    )
}

fn entry(path: &str, kind: Kind, data: &[u8], link: Option<&str>) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        size: if kind == Kind::File {
            data.len() as u64
        } else {
            0
        },
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        sha256: (kind == Kind::File).then(|| manifest::sha256_hex(data)),
        link: link.map(str::to_string),
    }
}

/// The member our backup would write for an entry.
fn honest(e: &Entry, data: &[u8]) -> Vec<u8> {
    let kind = match e.kind {
        Kind::File => tar::EntryType::Regular,
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink => tar::EntryType::Symlink,
    };
    let mut h = header(&e.path, kind, data.len() as u64, e.mode);
    if let Some(l) = &e.link {
        h.set_link_name(l).unwrap();
        h.set_cksum();
    }
    member(&h, data)
}

const GROUPS: &str = "opt/apigateway/groups";

fn manifest_of(entries: Vec<Entry>) -> Manifest {
    Manifest {
        format: manifest::FORMAT,
        tool_version: "test".into(),
        host: "gw1.example.com".into(),
        created: "2026-11-23T00:00:00Z".into(),
        created_unix: 1_795_392_000,
        install_dir: "opt/apigateway".into(),
        scopes: vec![ScopeRecord {
            name: "groups".into(),
            path: GROUPS.into(),
            kind: "tree".into(),
            prefixes: vec![],
            exclude: vec![],
        }],
        entries,
    }
}

/// Write an archive: the manifest member, then `body`, then the end blocks; and its sidecar
/// with the archive's sha256, or `sidecar_of` when a test lies.
fn write_archive(path: &Path, m: &Manifest, body: &[u8], sidecar_of: Option<&str>) {
    let bytes = m.to_bytes();
    let mut tar_bytes = member(
        &header(
            manifest::MANIFEST_PATH,
            tar::EntryType::Regular,
            bytes.len() as u64,
            0o600,
        ),
        &bytes,
    );
    tar_bytes.extend_from_slice(body);
    tar_bytes.extend_from_slice(&[0u8; 1024]);
    let z = zstd::encode_all(tar_bytes.as_slice(), 3).unwrap();
    fs::write(path, &z).unwrap();
    let hash = match sidecar_of {
        Some(hash) => hash.to_string(),
        None => manifest::sha256_hex(&z),
    };
    fs::write(
        gateway_systemd::backup::sidecar_of(path),
        format!("{hash}  {}\n", path.file_name().unwrap().to_string_lossy()),
    )
    .unwrap();
}

/// The base every hostile archive starts from: the groups directory with one file.
fn base() -> (Vec<Entry>, Vec<u8>) {
    let d = entry(GROUPS, Kind::Dir, b"", None);
    let f = entry(
        &format!("{GROUPS}/topology.json"),
        Kind::File,
        b"{}\n",
        None,
    );
    let body = [honest(&d, b""), honest(&f, b"{}\n")].concat();
    (vec![d, f], body)
}

/// Each case: a name, and the archive it writes.
fn hostile_cases(dir: &Path, outside: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut cases = Vec::new();
    let out = outside.display().to_string();
    let mut add = |name: &'static str, m: Manifest, body: Vec<u8>, lie: Option<String>| {
        let p = dir.join(format!("{name}.tar.zst"));
        write_archive(&p, &m, &body, lie.as_deref());
        cases.push((name, p));
    };
    let (es, body) = base();
    let evil = format!("{GROUPS}/../../../{}/evil", out.trim_start_matches('/'));

    // Traversal in the manifest, and in the archive only.
    let mut m = es.clone();
    m.push(entry(&evil, Kind::File, b"x", None));
    let b = [body.clone(), honest(&m[2], b"x")].concat();
    add("traversal-listed", manifest_of(m), b, None);
    let b = [
        body.clone(),
        honest(&entry(&evil, Kind::File, b"x", None), b"x"),
    ]
    .concat();
    add("traversal-unlisted", manifest_of(es.clone()), b, None);
    // Absolute path.
    let abs = format!("{out}/evil");
    let b = [
        body.clone(),
        honest(&entry(&abs, Kind::File, b"x", None), b"x"),
    ]
    .concat();
    add("absolute", manifest_of(es.clone()), b, None);
    // A link, then a file through it (absolute target), and a directory through it.
    let link = entry(&format!("{GROUPS}/l"), Kind::Symlink, b"", Some(&out));
    let through = entry(&format!("{GROUPS}/l/evil"), Kind::File, b"x", None);
    let mut m = es.clone();
    m.extend([link.clone(), through.clone()]);
    let b = [body.clone(), honest(&link, b""), honest(&through, b"x")].concat();
    add("symlink-then-file", manifest_of(m), b, None);
    let dir_through = entry(&format!("{GROUPS}/l/sub"), Kind::Dir, b"", None);
    let mut m = es.clone();
    m.extend([link.clone(), dir_through.clone()]);
    let b = [body.clone(), honest(&link, b""), honest(&dir_through, b"")].concat();
    add("symlink-then-dir", manifest_of(m), b, None);
    // A relative link that climbs out.
    let climb = entry(
        &format!("{GROUPS}/up"),
        Kind::Symlink,
        b"",
        Some("../../../../../../etc/shadow"),
    );
    let mut m = es.clone();
    m.push(climb.clone());
    let b = [body.clone(), honest(&climb, b"")].concat();
    add("link-escaping", manifest_of(m), b, None);
    // Types no backup writes, listed as files.
    for (name, et) in [
        ("hardlink", tar::EntryType::Link),
        ("device", tar::EntryType::Char),
        ("fifo", tar::EntryType::Fifo),
    ] {
        let e = entry(&format!("{GROUPS}/{name}"), Kind::File, b"", None);
        let mut h = header(&e.path, et, 0, 0o644);
        if name == "hardlink" {
            h.set_link_name("etc/passwd").unwrap();
        }
        h.set_cksum();
        let mut m = es.clone();
        m.push(e);
        add(
            name,
            manifest_of(m),
            [body.clone(), member(&h, b"")].concat(),
            None,
        );
    }
    // A pax size record that disagrees with the header.
    let f = entry(&format!("{GROUPS}/smuggled"), Kind::File, b"abc", None);
    let mut m = es.clone();
    m.push(f.clone());
    let b = [body.clone(), pax(&[("size", "1024")]), honest(&f, b"abc")].concat();
    add("pax-size", manifest_of(m), b, None);
    // A GNU long name member that renames the next entry.
    let f = entry(&format!("{GROUPS}/innocent"), Kind::File, b"abc", None);
    let mut m = es.clone();
    m.push(f.clone());
    let long = evil.as_bytes();
    let mut lh = tar::Header::new_gnu();
    lh.set_entry_type(tar::EntryType::GNULongName);
    lh.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    lh.set_size(long.len() as u64 + 1);
    lh.set_mode(0o644);
    lh.set_cksum();
    let b = [
        body.clone(),
        member(&lh, &[long, b"\0"].concat()),
        honest(&f, b"abc"),
    ]
    .concat();
    add("gnu-longname", manifest_of(m), b, None);
    // The same entry twice.
    let b = [body.clone(), honest(&es[1], b"{}\n")].concat();
    add("duplicate", manifest_of(es.clone()), b, None);
    // An entry the manifest does not list.
    let extra = entry(&format!("{GROUPS}/extra"), Kind::File, b"x", None);
    let b = [body.clone(), honest(&extra, b"x")].concat();
    add("not-in-manifest", manifest_of(es.clone()), b, None);
    // A scope no backup takes: the manifest must not be able to name what to replace.
    let shadow = entry("etc/shadow", Kind::File, b"root::0:0:99999:7:::\n", None);
    let mut m = manifest_of([es.clone(), vec![shadow.clone()]].concat());
    m.scopes.push(ScopeRecord {
        name: "groups".into(),
        path: "etc/shadow".into(),
        kind: "file".into(),
        prefixes: vec![],
        exclude: vec![],
    });
    let b = [body.clone(), honest(&shadow, b"root::0:0:99999:7:::\n")].concat();
    add("foreign-scope", m, b, None);
    // A scope's top as a link: later writes into it would follow it.
    let top = entry(GROUPS, Kind::Symlink, b"", Some(&out));
    add(
        "scope-top-link",
        manifest_of(vec![top.clone()]),
        honest(&top, b""),
        None,
    );
    // A listed entry missing from the archive.
    let mut m = es.clone();
    m.push(entry(&format!("{GROUPS}/gone"), Kind::File, b"x", None));
    add("missing-entry", manifest_of(m), body.clone(), None);
    // Content changed, manifest rewritten to match, the hash beside it is the original's.
    let original = dir.join("original.tar.zst");
    write_archive(&original, &manifest_of(es.clone()), &body, None);
    let original_hash = manifest::sha256_hex(&fs::read(&original).unwrap());
    let mut m = es.clone();
    m[1] = entry(
        &format!("{GROUPS}/topology.json"),
        Kind::File,
        b"evil\n",
        None,
    );
    let b = [honest(&m[0], b""), honest(&m[1], b"evil\n")].concat();
    add("manifest-rewritten", manifest_of(m), b, Some(original_hash));
    // A decompression bomb: a header claiming 1 GiB of zeros for a 3-byte file.
    let f = entry(&format!("{GROUPS}/bomb"), Kind::File, b"abc", None);
    let mut m = es.clone();
    m.push(f.clone());
    let h = header(&f.path, tar::EntryType::Regular, 1 << 30, 0o644);
    let p = dir.join("bomb.tar.zst");
    {
        let mf = manifest_of(m);
        let bytes = mf.to_bytes();
        let mut enc = zstd::Encoder::new(fs::File::create(&p).unwrap(), 1).unwrap();
        enc.write_all(&member(
            &header(
                manifest::MANIFEST_PATH,
                tar::EntryType::Regular,
                bytes.len() as u64,
                0o600,
            ),
            &bytes,
        ))
        .unwrap();
        enc.write_all(&body).unwrap();
        enc.write_all(h.as_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap();
        fs::write(
            gateway_systemd::backup::sidecar_of(&p),
            format!(
                "{}  bomb.tar.zst\n",
                manifest::sha256_hex(&fs::read(&p).unwrap())
            ),
        )
        .unwrap();
    }
    cases.push(("decompression-bomb", p));
    // A stream cut short, and a frame with a flipped byte (from an honest archive).
    let honest_path = dir.join("honest.tar.zst");
    write_archive(&honest_path, &manifest_of(es.clone()), &body, None);
    let bytes = fs::read(&honest_path).unwrap();
    for (name, bytes) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("corrupt-frame", {
            let mut b = bytes.clone();
            let k = b.len() * 2 / 3;
            b[k] ^= 0x55;
            b
        }),
    ] {
        let p = dir.join(format!("{name}.tar.zst"));
        fs::write(&p, bytes).unwrap();
        fs::copy(
            gateway_systemd::backup::sidecar_of(&honest_path),
            gateway_systemd::backup::sidecar_of(&p),
        )
        .unwrap();
        cases.push((name, p));
    }
    cases
}

#[test]
fn hostile_archives_are_refused_with_nothing_changed() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("untouched"), "x").unwrap();
    let cases = hostile_cases(dir.path(), &outside);
    // The honest archive restores: the harness itself is sound.
    let target = target_root(dir.path(), "target");
    let (code, said) = ctl(
        None,
        &[
            "restore",
            dir.path().join("honest.tar.zst").to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "the honest archive: {said}");
    let inside = snapshot(&target, &["opt", "etc", "var"]);
    let outside_before = snapshot(dir.path(), &["outside"]);
    let mut failures = Vec::new();
    for (name, archive) in &cases {
        let (code, said) = ctl(
            None,
            &[
                "restore",
                archive.to_str().unwrap(),
                "--target",
                target.to_str().unwrap(),
            ],
        );
        let (vcode, vsaid) = ctl(None, &["verify", archive.to_str().unwrap()]);
        let changed_inside = diff(&inside, &snapshot(&target, &["opt", "etc", "var"]));
        let changed_outside = diff(&outside_before, &snapshot(dir.path(), &["outside"]));
        let leftovers: Vec<String> = walk_names(&target)
            .into_iter()
            .filter(|n| n.contains(".gateway-restore.") || n.ends_with("intent.json"))
            .collect();
        if code != 65
            || vcode != 65
            || !changed_inside.is_empty()
            || !changed_outside.is_empty()
            || !leftovers.is_empty()
        {
            failures.push(format!(
                "{name}: restore exit {code} ({said}), verify exit {vcode} ({vsaid}), changed inside {changed_inside:?}, outside {changed_outside:?}, left {leftovers:?}"
            ));
        }
    }
    assert!(cases.len() >= 20, "{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn walk_names(base: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(p) = stack.pop() {
        out.push(p.display().to_string());
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

#[test]
fn every_flipped_bit_is_reported() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_root(dir.path());
    let out = dir.path().join("out");
    let (code, said) = ctl(Some(&src), &["backup", "--to", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{said}");
    let archive = only_archive(&out);
    let original = fs::read(&archive).unwrap();
    let flipped = dir.path().join("flipped.tar.zst");
    fs::copy(
        gateway_systemd::backup::sidecar_of(&archive),
        gateway_systemd::backup::sidecar_of(&flipped),
    )
    .unwrap();
    // Every byte position once (the demo's archive is small), a different bit each time.
    let mut missed = Vec::new();
    for k in 0..original.len() {
        let mut b = original.clone();
        b[k] ^= 1 << (k % 8);
        fs::write(&flipped, &b).unwrap();
        let (code, _) = ctl(None, &["verify", flipped.to_str().unwrap()]);
        if code != 65 {
            missed.push((k, code));
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} flips not reported as damaged: {missed:?}",
        missed.len(),
        original.len()
    );
}

// ---- restores killed at random points ----

/// A source host whose scopes differ by `variant`: files changed, removed and added, and a
/// different set of init scripts (each its own swap).
fn variant_root(dir: &Path, variant: u32) -> PathBuf {
    let root = dir.join(format!("source-{variant}"));
    copy_tree(&repo().join("demo/domain"), &root);
    fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    fs::write(root.join("proc/sys/kernel/hostname"), "gw1.example.com\n").unwrap();
    let data = root.join("opt/apigateway/groups/group-2/instance-1/data");
    for k in 0..600u32 {
        let keep = match variant {
            0 => k % 3 != 0,
            _ => k % 2 != 0,
        };
        if keep {
            let sub = data.join(format!("d{}", k % 30));
            fs::create_dir_all(&sub).unwrap();
            fs::write(
                sub.join(format!("f{k}")),
                format!("{variant}:{k}\n").repeat(50),
            )
            .unwrap();
        }
    }
    let init = root.join("etc/init.d");
    let range = match variant {
        0 => 0..150u32,
        _ => 50..200,
    };
    for k in range {
        fs::write(
            init.join(format!("vshell-extra-{k:03}")),
            format!("#!/bin/sh\n# {variant}\n"),
        )
        .unwrap();
    }
    fs::write(
        root.join("opt/apigateway/conf/variant"),
        format!("{variant}\n"),
    )
    .unwrap();
    root
}

/// Without the rollback copies and the carried-over opsdb.d.
fn scopes_of(base: &Path) -> BTreeMap<String, String> {
    let mut s = snapshot(base, &SCOPES);
    s.retain(|k, _| !k.contains("opsdb.d"));
    s
}

#[test]
fn a_restore_killed_anywhere_ends_old_or_new_after_recover() {
    if !prerequisites() {
        return;
    }
    // On a disk (not tmpfs), so that the renames' fsyncs take the time they take in production.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let archives: Vec<PathBuf> = (0..2)
        .map(|v| {
            let src = variant_root(dir.path(), v);
            let out = dir.path().join(format!("out-{v}"));
            let (code, said) = ctl(Some(&src), &["backup", "--to", out.to_str().unwrap()]);
            assert_eq!(code, 0, "{said}");
            only_archive(&out)
        })
        .collect();
    let expected: Vec<BTreeMap<String, String>> = (0..2)
        .map(|v| scopes_of(&dir.path().join(format!("source-{v}"))))
        .collect();
    let target = target_root(dir.path(), "target");
    fs::create_dir_all(target.join("opt/apigateway/conf/opsdb.d")).unwrap();
    fs::write(
        target.join("opt/apigateway/conf/opsdb.d/live.dat"),
        "live data\n",
    )
    .unwrap();
    let restore = |v: usize| {
        Command::new(env!("CARGO_BIN_EXE_gatewayctl"))
            .args(["restore", archives[v].to_str().unwrap(), "--target"])
            .arg(&target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Whole restores first: how long one takes.
    let started = std::time::Instant::now();
    for v in [0, 1, 0] {
        assert!(restore(v).wait().unwrap().success());
    }
    let full = started.elapsed() / 3;
    assert_eq!(
        diff(&expected[0], &scopes_of(&target)),
        Vec::<String>::new()
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut state = 0usize;
    let mut tally: BTreeMap<String, u32> = BTreeMap::new();
    const TRIALS: u32 = 60;
    for trial in 0..TRIALS {
        let next = 1 - state;
        let mut child = restore(next);
        // Half the kills anywhere in a restore; half at a random moment of its swap (the
        // few milliseconds after its intent record says "swapping").
        let span = full.as_micros() as u64 * 6 / 5 + 1;
        let delay = match trial % 2 {
            0 => {
                let d = std::time::Duration::from_micros(rng.next() % span);
                std::thread::sleep(d);
                d
            }
            _ => {
                let started = std::time::Instant::now();
                while started.elapsed() < full * 2
                    && gateway_systemd::backup::restore::pending(&target)
                        .is_none_or(|i| i.phase != "swapping")
                {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                std::thread::sleep(std::time::Duration::from_micros(rng.next() % 3000));
                started.elapsed()
            }
        };
        let _ = child.kill();
        let status = child.wait().unwrap();
        let phase = gateway_systemd::backup::restore::pending(&target)
            .map_or("none".to_string(), |i| i.phase);
        let (code, said) = ctl(
            None,
            &["restore", "--recover", "--target", target.to_str().unwrap()],
        );
        assert_eq!(code, 0, "trial {trial} (seed {seed}): recover: {said}");
        let now = scopes_of(&target);
        let outcome = if diff(&expected[next], &now).is_empty() {
            state = next;
            "new"
        } else if diff(&expected[state], &now).is_empty() {
            "old"
        } else {
            panic!(
                "trial {trial} (seed {seed}, killed after {delay:?} in phase {phase}): neither the old nor the new tree: {:?}",
                diff(&expected[next], &now).into_iter().take(10).collect::<Vec<_>>()
            );
        };
        let kept = fs::read_to_string(target.join("opt/apigateway/conf/opsdb.d/live.dat"));
        assert!(
            kept.as_deref().is_ok_and(|t| t == "live data\n"),
            "trial {trial} (seed {seed}, killed after {delay:?} in phase {phase}, {outcome}): opsdb.d was not carried over: {kept:?}\n{said}"
        );
        assert!(gateway_systemd::backup::restore::pending(&target).is_none());
        let killed = if status.success() {
            "finished"
        } else {
            "killed"
        };
        *tally
            .entry(format!("{killed} in {phase} -> {outcome}"))
            .or_default() += 1;
    }
    eprintln!("{TRIALS} trials (seed {seed}, a whole restore {full:?}): {tally:?}");
    // The trials reached the swap itself, not only its edges.
    let in_swap: u32 = tally
        .iter()
        .filter(|(k, _)| k.contains("killed in swapping"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        in_swap >= 10,
        "only {in_swap} trials were killed while swapping: {tally:?}"
    );
}

/// A file rewritten while the backup reads it is either taken whole (one version, read again
/// until it held still) or listed as changed: never a torn mix that nobody mentions.
#[test]
fn a_file_changing_while_read_is_read_again_or_reported() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_root(dir.path());
    let busy = src.join("opt/apigateway/groups/group-2/instance-1/busy.log");
    const LEN: usize = 8 << 20;
    fs::write(&busy, vec![b'A'; LEN]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).open(&busy).unwrap();
            let mut round = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round = round.wrapping_add(1);
                let block = vec![b'A' + round % 26; 64 * 1024];
                for k in 0..LEN / block.len() {
                    std::os::unix::fs::FileExt::write_at(&f, &block, (k * block.len()) as u64)
                        .unwrap();
                }
            }
        })
    };
    let out = dir.path().join("out");
    let (code, said) = ctl(
        Some(&src),
        &["backup", "--to", out.to_str().unwrap(), "--json"],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(code, 0, "{said}");
    let summary: serde_json::Value = serde_json::from_str(&said).expect(&said);
    let archive = only_archive(&out);
    let (code, said) = ctl(None, &["verify", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "the archive holds what its manifest says: {said}");
    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    assert!(Command::new("tar")
        .args(["--zstd", "-C"])
        .arg(&x)
        .arg("-xf")
        .arg(&archive)
        .status()
        .unwrap()
        .success());
    let taken = fs::read(x.join("opt/apigateway/groups/group-2/instance-1/busy.log")).unwrap();
    let whole = taken.len() == LEN && taken.iter().all(|b| *b == taken[0]);
    let reported = summary["changed"].to_string().contains("busy.log");
    assert!(
        whole || reported,
        "busy.log was taken torn ({} distinct bytes) and not reported: {summary}",
        taken
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    eprintln!("busy.log taken whole: {whole}, reported as changed: {reported}");
}

/// An age identity made by age-keygen: (identity file, public key).
fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    (
        path,
        String::from_utf8_lossy(&public.stdout).trim().to_string(),
    )
}

/// `[backup] recipients`: the archive is an age file whose plaintext never reaches the
/// destination; `age -d | zstd -d | tar -x` restores it without us; verify and restore take
/// it with the identity file and refuse it without one or with another's; `--if-changed`
/// knows an unchanged state without any identity.
#[test]
fn encrypted_archives_round_trip_and_refuse_the_wrong_key() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_root(dir.path());
    let (identity, public) = age_keygen(dir.path(), "backup-key.txt");
    let (other, other_public) = age_keygen(dir.path(), "other-key.txt");
    let secret = "-----BEGIN PRIVATE KEY----- a secret only the archive holds";
    fs::write(src.join("opt/apigateway/conf/certs-server.key"), secret).unwrap();
    // A plaintext archive first: once recipients are added, --if-changed keeps an encrypted
    // one although nothing else changed.
    let out = dir.path().join("out");
    let (code, said) = ctl(Some(&src), &["backup", "--to", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{said}");
    let plaintext = only_archive(&out);
    // Two recipients: either identity decrypts.
    fs::create_dir_all(src.join("etc/gateway-systemd/gateway.toml.d")).unwrap();
    fs::write(
        src.join("etc/gateway-systemd/gateway.toml.d/60-encrypt.toml"),
        format!("[backup]\nrecipients = [\"{public}\", \"{other_public}\"]\n"),
    )
    .unwrap();
    let (code, said) = ctl(
        Some(&src),
        &["backup", "--if-changed", "--to", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("wrote "),
        "encryption added, but no new archive: {said}"
    );
    fs::remove_file(gateway_systemd::backup::sidecar_of(&plaintext)).unwrap();
    fs::remove_file(&plaintext).unwrap();
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].ends_with(".tar.zst.age"), "{names:?}");
    assert_eq!(names[1], format!("{}.sha256", names[0]));
    let archive = out.join(&names[0]);
    let sealed = fs::read(&archive).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    assert!(!sealed
        .windows(b"BEGIN PRIVATE KEY".len())
        .any(|w| w == b"BEGIN PRIVATE KEY"));
    // No plaintext left where it was made.
    let state = src.join("var/lib/gateway-systemd");
    let left: Vec<String> = fs::read_dir(&state)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .filter(|n| n.contains(".tar.zst"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "plaintext left in {}: {left:?}",
        state.display()
    );
    let st = Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{}.sha256", names[0]))
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");

    // Without us: age -d | zstd -d | tar -x.
    let plain = dir.path().join("by-hand");
    fs::create_dir(&plain).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg("age -d -i \"$1\" \"$2\" | zstd -d | tar -x -p -C \"$3\"")
        .args(["sh"])
        .arg(&identity)
        .arg(&archive)
        .arg(&plain)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    assert_eq!(
        fs::read_to_string(plain.join("opt/apigateway/conf/certs-server.key")).unwrap(),
        secret
    );

    // verify: without an identity it says what it needs; with the wrong one it refuses;
    // with either recipient's identity it passes.
    let a = archive.to_str().unwrap();
    let (code, said) = ctl(None, &["verify", a]);
    assert_eq!(code, 66, "{said}");
    assert!(said.contains("--identity"), "{said}");
    let (stranger, _) = age_keygen(dir.path(), "stranger.txt");
    let (code, said) = ctl(
        None,
        &["verify", "--identity", stranger.to_str().unwrap(), a],
    );
    assert_eq!(code, 66, "{said}");
    assert!(said.contains("none of the identities"), "{said}");
    for id in [&identity, &other] {
        let (code, said) = ctl(None, &["verify", "--identity", id.to_str().unwrap(), a]);
        assert_eq!(code, 0, "{said}");
    }
    // A flipped byte in the ciphertext is damage, found by age and the .sha256.
    let damaged = dir.path().join("damaged");
    fs::create_dir(&damaged).unwrap();
    let mut bytes = sealed.clone();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    let copy = damaged.join(&names[0]);
    fs::write(&copy, &bytes).unwrap();
    fs::copy(out.join(&names[1]), damaged.join(&names[1])).unwrap();
    let (code, said) = ctl(
        None,
        &[
            "verify",
            "--identity",
            identity.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 65, "{said}");

    // restore with the identity: the same tree as the source.
    let target = target_root(dir.path(), "restored");
    let (code, said) = ctl(None, &["restore", a, "--target", target.to_str().unwrap()]);
    assert_eq!(code, 66, "restore without an identity: {said}");
    let (code, said) = ctl(
        None,
        &[
            "restore",
            "--identity",
            identity.to_str().unwrap(),
            a,
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{said}");
    let mut want = snapshot(&src, &SCOPES);
    want.retain(|k, _| !k.contains("opsdb.d"));
    assert_eq!(
        diff(&want, &snapshot(&target, &SCOPES)),
        Vec::<String>::new()
    );

    // The host has no identity: --if-changed still knows an unchanged state.
    let (code, said) = ctl(
        Some(&src),
        &["backup", "--if-changed", "--to", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("unchanged since"), "{said}");
    fs::write(src.join("opt/apigateway/conf/certs-server.key"), "rotated").unwrap();
    let (code, said) = ctl(
        Some(&src),
        &["backup", "--if-changed", "--to", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("wrote "), "{said}");
}

/// A failing `before` hook fails the backup before anything is written: no archive, no
/// temporary file; the hook's stderr is in the error, and `on_error` is told.
#[test]
fn a_failing_before_hook_leaves_no_archive() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source_root(dir.path());
    let told = dir.path().join("told");
    fs::create_dir_all(src.join("etc/gateway-systemd/gateway.toml.d")).unwrap();
    fs::write(
        src.join("etc/gateway-systemd/gateway.toml.d/60-hooks.toml"),
        format!(
            "[backup]\nbefore = [\"echo partial > \\\"$BACKUP_HOOK_DIR/dump.sql\\\"\", \"echo 'cqlsh: Connection refused' >&2; exit 7\"]\non_error = [\"echo \\\"$BACKUP_ERROR\\\" > {}\"]\n",
            told.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let (code, said) = ctl(Some(&src), &["backup", "--to", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("Connection refused") && said.contains("exit status 7"),
        "{said}"
    );
    // The hook failed before the backup began: its destination was not even made, and
    // nothing is left in the state directory but the hook's own (emptied next run) output.
    assert!(!out.exists(), "a failed backup made {}", out.display());
    let state = src.join("var/lib/gateway-systemd");
    let left: Vec<String> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(left, ["backup-hooks"], "in {}", state.display());
    let told = fs::read_to_string(&told).unwrap();
    assert!(
        told.contains("before hook") && told.contains("no archive was written"),
        "{told}"
    );
}
