//! Retention: which archives of a host to keep (`keep_last`, `keep_daily`, `keep_weekly`,
//! `keep_monthly`, as restic and borg count them) and the pruning of the rest. The newest
//! verified archive is never deleted, whatever the policy says.

use super::drill::Listed;
use crate::install::config::BackupSettings;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// How many archives to keep, per rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// The newest n.
    pub last: u32,
    /// The newest of each of the n most recent days that have one (UTC).
    pub daily: u32,
    /// Of ISO weeks.
    pub weekly: u32,
    /// Of months.
    pub monthly: u32,
}

impl Policy {
    /// The policy `[backup]` sets; None when it sets none (keep everything).
    pub fn of(b: &BackupSettings) -> Option<Policy> {
        let any = [b.keep_last, b.keep_daily, b.keep_weekly, b.keep_monthly]
            .iter()
            .any(Option::is_some);
        any.then(|| Policy {
            last: b.keep_last.unwrap_or(0),
            daily: b.keep_daily.unwrap_or(0),
            weekly: b.keep_weekly.unwrap_or(0),
            monthly: b.keep_monthly.unwrap_or(0),
        })
    }
}

/// One archive's fate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// The archive.
    pub archive: PathBuf,
    /// Kept, and by which rules (empty: deleted).
    pub kept_by: Vec<&'static str>,
}

/// Decide for every archive of `host` among `listed` (any order), newest first. `protected`
/// (the newest verified archive) is kept whatever the rules say.
pub fn decide(
    listed: &[Listed],
    host: &str,
    policy: Policy,
    protected: Option<&Path>,
) -> Vec<Decision> {
    let mut mine: Vec<&Listed> = listed.iter().filter(|l| l.host == host).collect();
    mine.sort_by(|a, b| (b.unix, &b.path).cmp(&(a.unix, &a.path)));
    let mut kept: Vec<Vec<&'static str>> = vec![Vec::new(); mine.len()];
    for (i, _) in mine.iter().enumerate().take(policy.last as usize) {
        kept[i].push("last");
    }
    let buckets: [(&'static str, u32, Bucket); 3] = [
        ("daily", policy.daily, |t| {
            let d = date(t);
            (d.year(), d.ordinal() as u32)
        }),
        ("weekly", policy.weekly, |t| {
            let (y, w, _) = date(t).to_iso_week_date();
            (y, w as u32)
        }),
        ("monthly", policy.monthly, |t| {
            let d = date(t);
            (d.year(), u8::from(d.month()) as u32)
        }),
    ];
    for (rule, n, bucket) in buckets {
        let mut seen = BTreeSet::new();
        for (i, l) in mine.iter().enumerate() {
            if seen.len() >= n as usize {
                break;
            }
            // Newest first: the first of a bucket is its newest.
            if seen.insert(bucket(l.unix)) {
                kept[i].push(rule);
            }
        }
    }
    mine.iter()
        .zip(kept)
        .map(|(l, mut by)| {
            if protected == Some(l.path.as_path()) && by.is_empty() {
                by.push("newest verified");
            }
            Decision {
                archive: l.path.clone(),
                kept_by: by,
            }
        })
        .collect()
}

/// The calendar bucket (day, ISO week, month) a time falls in.
type Bucket = fn(i64) -> (i32, u32);

fn date(unix: i64) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date()
}

/// Delete what `decisions` do not keep (each archive with its `.sha256`); the paths deleted,
/// or the first error (what was deleted before it stays deleted: each archive is whole or gone).
pub fn prune(decisions: &[Decision]) -> Result<Vec<PathBuf>, super::BackupError> {
    let mut gone = Vec::new();
    for d in decisions.iter().filter(|d| d.kept_by.is_empty()) {
        // The sidecar first: an archive without one is refused by verify, never trusted.
        let sidecar = super::sidecar_of(&d.archive);
        match std::fs::remove_file(&sidecar) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(super::BackupError::io("cannot delete", &sidecar)(e))
            }
            _ => {}
        }
        std::fs::remove_file(&d.archive)
            .map_err(super::BackupError::io("cannot delete", &d.archive))?;
        gone.push(d.archive.clone());
    }
    if let Some(dir) = decisions.first().and_then(|d| d.archive.parent()) {
        if let Ok(f) = std::fs::File::open(dir) {
            let _ = f.sync_all();
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2026-01-01T12:00:00Z, a Thursday (ISO week 1 of 2026).
    const T0: i64 = 1_767_268_800;

    fn series(times: &[i64]) -> Vec<Listed> {
        times
            .iter()
            .map(|&t| Listed {
                path: PathBuf::from(format!("/b/{}", super::super::archive_name("gw1", t))),
                host: "gw1".into(),
                unix: t,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        let mut k: Vec<String> = d
            .iter()
            .filter(|d| !d.kept_by.is_empty())
            .map(|d| d.archive.file_name().unwrap().to_string_lossy()[4..19].to_string())
            .collect();
        k.sort();
        k
    }

    #[test]
    fn a_year_of_archives_every_six_hours_keeps_exactly_what_the_policy_says() {
        // 365 days, four archives a day at 00, 06, 12, 18 h.
        let times: Vec<i64> = (0..365 * 4)
            .map(|i| T0 - 12 * 3600 + i * 6 * 3600)
            .collect();
        let listed = series(&times);
        let policy = Policy {
            last: 3,
            daily: 7,
            weekly: 4,
            monthly: 6,
        };
        let d = decide(&listed, "gw1", policy, None);
        let k = kept(&d);
        // The newest 3 (2026-12-31 18h, 12h, 06h); the 18h of the last 7 days (12-25..12-31);
        // the newest of the last 4 ISO weeks: 12-31 (week 53 runs to Sunday 2027-01-03), then
        // the Sundays 12-27, 12-20, 12-13; the newest of the last 6 months: their last day's 18h.
        let want: Vec<&str> = vec![
            "20260731T180000", // monthly July
            "20260831T180000",
            "20260930T180000",
            "20261031T180000",
            "20261130T180000",
            "20261213T180000", // weekly (week 50 ends on Sunday 12-13)
            "20261220T180000", // weekly (week 51)
            "20261225T180000", // daily ...
            "20261226T180000",
            "20261227T180000", // daily and weekly (week 52)
            "20261228T180000",
            "20261229T180000",
            "20261230T180000",
            "20261231T060000", // last
            "20261231T120000", // last
            "20261231T180000", // last, daily, weekly (week 53 of 2026), monthly December
        ];
        assert_eq!(k, want);
        assert_eq!(d.len(), 365 * 4);
    }

    #[test]
    fn no_rule_keeps_nothing_but_the_newest_verified_is_never_deleted() {
        let listed = series(&[T0, T0 + DAY, T0 + 2 * DAY]);
        let newest = listed[2].path.clone();
        let d = decide(&listed, "gw1", Policy::default(), Some(&newest));
        assert_eq!(kept(&d), vec!["20260103T120000"]);
        assert_eq!(d[0].kept_by, vec!["newest verified"]);
    }

    #[test]
    fn other_hosts_archives_are_never_decided() {
        let mut listed = series(&[T0, T0 + DAY]);
        listed.push(Listed {
            path: PathBuf::from("/b/gw2-20260101T120000Z.tar.zst"),
            host: "gw2".into(),
            unix: T0,
        });
        let d = decide(
            &listed,
            "gw1",
            Policy {
                last: 1,
                ..Policy::default()
            },
            None,
        );
        assert_eq!(d.len(), 2);
        assert!(d
            .iter()
            .all(|d| !d.archive.to_string_lossy().contains("gw2")));
    }

    #[test]
    fn the_policy_is_read_from_backup_settings() {
        let mut b = BackupSettings::default();
        assert_eq!(Policy::of(&b), None);
        b.keep_daily = Some(7);
        assert_eq!(
            Policy::of(&b),
            Some(Policy {
                daily: 7,
                ..Policy::default()
            })
        );
    }
}
