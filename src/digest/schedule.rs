//! Scheduled digests (`[digest] schedule`, `out_dir` and `to`): `serve` runs [`run`], which sleeps until the
//! next due time, writes the HTML and text digests of the period that just ended into `out_dir`, queues
//! them for the `to` addresses in the report outbox ([`super::mail`]), and repeats.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveTime, Timelike, Utc, Weekday};
use serde::Deserialize;

use super::mail::Mailer;
use super::{Digest, DigestConfig, DigestError, Period, Since, render};
use crate::store::Store;

/// When digests are made (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Schedule {
    /// Never (the default).
    #[default]
    Off,
    /// At the start of every hour, covering the last hour.
    Hourly,
    /// Every day at this time, covering the last 24 hours.
    Daily(NaiveTime),
    /// Every week on this day at this time, covering the last 7 days.
    Weekly(Weekday, NaiveTime),
}

impl Schedule {
    /// The first due time strictly after `now`, or `None` when off.
    pub fn next_after(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let date = now.date_naive();
        match self {
            Schedule::Off => None,
            Schedule::Hourly => {
                let hour = date.and_hms_opt(now.hour(), 0, 0)?.and_utc();
                Some(hour + Duration::hours(1))
            }
            Schedule::Daily(at) => {
                let today = date.and_time(at).and_utc();
                Some(if today > now { today } else { today + Duration::days(1) })
            }
            Schedule::Weekly(day, at) => {
                let ahead = (day.num_days_from_monday() + 7 - now.weekday().num_days_from_monday()) % 7;
                let candidate = (date + Duration::days(i64::from(ahead))).and_time(at).and_utc();
                Some(if candidate > now { candidate } else { candidate + Duration::days(7) })
            }
        }
    }

    /// The period each digest covers.
    pub fn since(self) -> Option<Since> {
        let length = match self {
            Schedule::Off => return None,
            Schedule::Hourly => Duration::hours(1),
            Schedule::Daily(_) => Duration::days(1),
            Schedule::Weekly(..) => Duration::days(7),
        };
        Since::new(length).ok()
    }
}

impl FromStr for Schedule {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Schedule, DigestError> {
        let bad = || {
            DigestError::Config(format!(
                "invalid digest schedule {s:?}: expected off, hourly, \"daily HH:MM\" or \"weekly DAY HH:MM\" (UTC)"
            ))
        };
        let time = |t: &str| NaiveTime::parse_from_str(t, "%H:%M").map_err(|_| bad());
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            ["off"] => Ok(Schedule::Off),
            ["hourly"] => Ok(Schedule::Hourly),
            ["daily"] => Ok(Schedule::Daily(NaiveTime::MIN)),
            ["daily", at] => Ok(Schedule::Daily(time(at)?)),
            ["weekly", day, at] => Ok(Schedule::Weekly(day.parse().map_err(|_| bad())?, time(at)?)),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Schedule {
    type Error = DigestError;

    fn try_from(s: String) -> Result<Schedule, DigestError> {
        s.parse()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Off => f.write_str("off"),
            Schedule::Hourly => f.write_str("hourly"),
            Schedule::Daily(at) => write!(f, "daily {}", at.format("%H:%M")),
            Schedule::Weekly(day, at) => write!(f, "weekly {day} {}", at.format("%H:%M")),
        }
    }
}

/// Write `contents` to `path` through a temporary file in the same directory, so readers never see half a file.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), DigestError> {
    let write_error = |source| DigestError::Write { path: path.to_path_buf(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(write_error)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        write_error(e)
    })
}

/// Write the HTML and text digests of `digest` into `dir`, named after the end of its period; returns the
/// two paths.
pub fn write_digest(digest: &Digest, dir: &Path, until: DateTime<Utc>) -> Result<[PathBuf; 2], DigestError> {
    let stem = format!("digest-{}", until.format("%Y%m%d-%H%M"));
    let html = dir.join(format!("{stem}.html"));
    let text = dir.join(format!("{stem}.txt"));
    write_atomically(&html, &render::html(digest)?)?;
    write_atomically(&text, &render::text(digest)?)?;
    Ok([html, text])
}

/// The scheduled digest of the period of length `since` ending at `due`: written into `out_dir` and queued
/// for `to` (once per period and recipient, whichever process gets there first).
pub async fn make(
    store: &Store,
    config: &DigestConfig,
    mailer: Option<&Mailer>,
    since: Since,
    due: DateTime<Utc>,
) -> Result<(), DigestError> {
    let digest = super::collect(store, Period::ending(due, since)).await?;
    if let Some(dir) = &config.out_dir {
        let [html, text] = write_digest(&digest, dir, due)?;
        tracing::info!(html = %html.display(), text = %text.display(), "digest written");
    }
    if let Some(mailer) = mailer {
        let key = format!("{since}:{}", due.format("%Y%m%dT%H%MZ"));
        let ids = mailer.queue(store, &digest, &config.to, Some(&key)).await?;
        tracing::info!(queued = ids.len(), recipients = config.to.len(), "digest mail queued");
    }
    Ok(())
}

/// Run the schedule until `shutdown` resolves: at each due time write the digests into `out_dir` and
/// queue them for `to` with `mailer` (which `serve` builds when `to` is not empty). A failed digest is
/// logged and the next one is still made. Returns at once when the schedule is off.
pub async fn run(
    store: Store,
    config: DigestConfig,
    mailer: Option<Mailer>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DigestError> {
    config.validate()?;
    let Some(since) = config.schedule.since() else {
        return Ok(());
    };
    if let Some(dir) = &config.out_dir {
        std::fs::create_dir_all(dir).map_err(|source| DigestError::Write { path: dir.clone(), source })?;
    }
    let mailer = mailer.filter(|_| !config.to.is_empty());
    tokio::pin!(shutdown);
    loop {
        let Some(due) = config.schedule.next_after(Utc::now()) else {
            return Ok(());
        };
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        // Several processes may share the database: the first to claim this due time makes the digest.
        match store.claim_once("digest", due).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(%due, "digest already made by a process sharing the database");
                continue;
            }
            Err(e) => tracing::warn!(error = %e, "cannot claim the digest run; making it anyway"),
        }
        if let Err(e) = make(&store, &config, mailer.as_ref(), since, due).await {
            tracing::error!(error = %e, "cannot make the scheduled digest");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        crate::digest::parse_time(s).unwrap()
    }

    #[test]
    fn schedules_parse_and_print() {
        for s in ["off", "hourly", "daily 07:30", "weekly Mon 06:00"] {
            assert_eq!(s.parse::<Schedule>().unwrap().to_string(), s);
        }
        assert_eq!("daily".parse::<Schedule>().unwrap(), Schedule::Daily(NaiveTime::MIN));
        for bad in ["", "daily 25:00", "weekly 07:00", "monthly", "hourly 07:00"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn next_due_time_is_strictly_after_now() {
        let now = t("2026-12-01 13:45:10");
        assert_eq!(Schedule::Hourly.next_after(now), Some(t("2026-12-01 14:00")));
        let daily: Schedule = "daily 07:00".parse().unwrap();
        assert_eq!(daily.next_after(now), Some(t("2026-12-02 07:00")));
        assert_eq!(daily.next_after(t("2026-12-01 06:59")), Some(t("2026-12-01 07:00")));
        assert_eq!(daily.next_after(t("2026-12-01 07:00")), Some(t("2026-12-02 07:00")));
        // 2026-12-01 is a Tuesday.
        let weekly: Schedule = "weekly Mon 06:00".parse().unwrap();
        assert_eq!(weekly.next_after(now), Some(t("2026-12-07 06:00")));
        let tuesday: Schedule = "weekly Tue 14:00".parse().unwrap();
        assert_eq!(tuesday.next_after(now), Some(t("2026-12-01 14:00")));
        assert_eq!(Schedule::Off.next_after(now), None);
    }

    #[test]
    fn config_rejects_unknown_keys_bad_addresses_and_a_schedule_going_nowhere() {
        let ok: DigestConfig = toml::from_str("schedule = \"daily 07:00\"\nout_dir = \"/var/lib/rebound/digests\"").unwrap();
        ok.validate().unwrap();
        assert!(toml::from_str::<DigestConfig>("schedul = \"daily\"").is_err());
        assert!(toml::from_str::<DigestConfig>("schedule = \"sometimes\"").is_err());
        let no_dir: DigestConfig = toml::from_str("schedule = \"hourly\"").unwrap();
        assert!(no_dir.validate().is_err());
        let no_from: DigestConfig = toml::from_str("to = [\"ops@example.com\"]").unwrap();
        assert!(no_from.validate().unwrap_err().to_string().contains("from"));
        let mail: DigestConfig =
            toml::from_str("schedule = \"hourly\"\nto = [\"ops@example.com\"]\nfrom = \"rebound@example.com\"").unwrap();
        mail.validate().unwrap();
        let bad: DigestConfig = toml::from_str("to = [\"ops\"]\nfrom = \"rebound@example.com\"").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("\"ops\""));
        DigestConfig::default().validate().unwrap();
    }
}
