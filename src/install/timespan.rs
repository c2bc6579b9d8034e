//! Time spans in our config, written the way systemd writes them (`10s`, `5min`, `1min 30s`).

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A duration read from config: an integer number of seconds, or a systemd-style span string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct TimeSpan(pub Duration);

impl TimeSpan {
    /// A span of whole seconds.
    pub const fn secs(s: u64) -> Self {
        TimeSpan(Duration::from_secs(s))
    }

    /// Parse `10`, `10s`, `500ms`, `5min`, `1h 30min`, `2m30s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("{text:?} is not a time span; write e.g. \"10s\", \"500ms\", \"5min\" or a number of seconds")
        };
        let mut total = Duration::ZERO;
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = rest[digits..].trim_start();
            let unit_len = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            let millis_per: u64 = match unit {
                "ms" | "msec" => 1,
                "" | "s" | "sec" | "second" | "seconds" => 1_000,
                "m" | "min" | "minute" | "minutes" => 60_000,
                "h" | "hr" | "hour" | "hours" => 3_600_000,
                _ => return Err(bad()),
            };
            let part = n.checked_mul(millis_per).ok_or_else(bad)?;
            total = total
                .checked_add(Duration::from_millis(part))
                .ok_or_else(bad)?;
        }
        Ok(TimeSpan(total))
    }

    /// Whole seconds, rounded up (what an environment variable for the launcher carries).
    pub fn as_secs_ceil(self) -> u64 {
        let d = self.0;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    /// True for a zero span (which disables the feature it configures).
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl std::ops::Add for TimeSpan {
    type Output = TimeSpan;
    fn add(self, other: TimeSpan) -> TimeSpan {
        TimeSpan(self.0.saturating_add(other.0))
    }
}

/// Systemd's own notation, so generated units read naturally: `10s`, `1500ms`.
impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a time span: a number of seconds or a string like \"10s\"",
            )
        })? {
            Raw::Secs(s) => Ok(TimeSpan::secs(s)),
            Raw::Text(t) => TimeSpan::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_notation() {
        assert_eq!(TimeSpan::parse("10").unwrap(), TimeSpan::secs(10));
        assert_eq!(TimeSpan::parse("10s").unwrap(), TimeSpan::secs(10));
        assert_eq!(TimeSpan::parse("5min").unwrap(), TimeSpan::secs(300));
        assert_eq!(TimeSpan::parse("1min 30s").unwrap(), TimeSpan::secs(90));
        assert_eq!(TimeSpan::parse("2m30s").unwrap(), TimeSpan::secs(150));
        assert_eq!(
            TimeSpan::parse("1500ms").unwrap(),
            TimeSpan(Duration::from_millis(1500))
        );
        for bad in ["", "s", "ten", "10 parsecs", "-1", "99999999999999999999h"] {
            assert!(TimeSpan::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_like_systemd() {
        assert_eq!(TimeSpan::secs(40).to_string(), "40s");
        assert_eq!(TimeSpan(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(TimeSpan(Duration::from_millis(1500)).as_secs_ceil(), 2);
    }
}
