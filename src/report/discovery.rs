//! RFC 6652: whether, and where, a domain wants SPF failure reports. Its SPF record carries the
//! modifiers `ra=` (the local-part of the reporting address, at the record's domain), `rp=` (the
//! percentage of failures to report, 0..=100, default 100) and `rr=` (which results: `all`, or a
//! colon-separated list of `e` evaluation errors, `f` fail, `s` softfail, `n` neutral/none; default
//! `all`). Without `ra=` no report is sent.

use crate::spf::{EvaluatedRecord, Reach, SpfResult};

/// The reporting request of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    /// Where to send: `ra@domain`.
    pub address: String,
    /// The domain whose record asked.
    pub domain: String,
    /// Percentage of failures to report (`rp=`).
    pub percent: u8,
    /// Report `fail`.
    pub fail: bool,
    /// Report `softfail`.
    pub softfail: bool,
    /// Report `neutral` and `none`.
    pub neutral: bool,
    /// Report `temperror` and `permerror`.
    pub errors: bool,
}

impl ReportRequest {
    /// True when the domain asked for reports of this result (`rr=`).
    pub fn wants(&self, result: SpfResult) -> bool {
        match result {
            SpfResult::Fail => self.fail,
            SpfResult::SoftFail => self.softfail,
            SpfResult::Neutral | SpfResult::None => self.neutral,
            SpfResult::TempError | SpfResult::PermError => self.errors,
            SpfResult::Pass => false,
        }
    }
}

/// The request published in the records of an evaluation: the top-level record, else a record reached
/// by `redirect=` (never one reached by `include:`, which speaks for another domain).
pub fn find(records: &[EvaluatedRecord]) -> Option<ReportRequest> {
    records
        .iter()
        .filter(|r| matches!(r.reached_by, Reach::Top | Reach::Redirect))
        .find_map(|r| parse(&r.domain, &r.record))
}

/// Reads `ra=`, `rp=`, `rr=` from one record. Malformed values make the request void (no report), as a
/// report to a guessed address would be worse than none.
pub fn parse(domain: &str, record: &str) -> Option<ReportRequest> {
    let mut ra = None;
    let mut rp = 100u8;
    let mut rr = None;
    for term in record.split(' ').filter(|t| !t.is_empty()) {
        let Some((name, value)) = term.split_once('=') else { continue };
        match name.to_ascii_lowercase().as_str() {
            "ra" => ra = Some(value),
            "rp" => rp = value.parse::<u8>().ok().filter(|p| *p <= 100)?,
            "rr" => rr = Some(value),
            _ => {}
        }
    }
    let ra = ra?;
    let local_ok = !ra.is_empty()
        && ra.len() <= 64
        && ra.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-/=?^_`{|}~.".contains(&b))
        && !ra.starts_with('.')
        && !ra.ends_with('.')
        && !ra.contains("..");
    if !local_ok || domain.is_empty() {
        return None;
    }
    let mut req = ReportRequest {
        address: format!("{ra}@{}", domain.trim_end_matches('.').to_ascii_lowercase()),
        domain: domain.to_ascii_lowercase(),
        percent: rp,
        fail: false,
        softfail: false,
        neutral: false,
        errors: false,
    };
    match rr {
        None => {
            req.fail = true;
            req.softfail = true;
            req.neutral = true;
            req.errors = true;
        }
        Some(list) => {
            for kind in list.split(':') {
                match kind.to_ascii_lowercase().as_str() {
                    "all" => {
                        req.fail = true;
                        req.softfail = true;
                        req.neutral = true;
                        req.errors = true;
                    }
                    "f" => req.fail = true,
                    "s" => req.softfail = true,
                    "n" => req.neutral = true,
                    "e" => req.errors = true,
                    _ => {}
                }
            }
        }
    }
    Some(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(domain: &str, record: &str, reached_by: Reach) -> EvaluatedRecord {
        EvaluatedRecord { domain: domain.into(), record: record.into(), reached_by }
    }

    #[test]
    fn rfc_6652_modifiers() {
        let r = parse("Example.com", "v=spf1 -all ra=postmaster rp=10 rr=e:f").unwrap();
        assert_eq!(r.address, "postmaster@example.com");
        assert_eq!(r.percent, 10);
        assert!(r.wants(SpfResult::Fail) && r.wants(SpfResult::PermError));
        assert!(!r.wants(SpfResult::SoftFail) && !r.wants(SpfResult::Pass));
        let all = parse("example.com", "v=spf1 -all ra=spf-reports").unwrap();
        assert_eq!(all.percent, 100);
        assert!(all.wants(SpfResult::SoftFail));
    }

    #[test]
    fn no_ra_or_bad_values_mean_no_report() {
        assert!(parse("example.com", "v=spf1 -all").is_none());
        assert!(parse("example.com", "v=spf1 -all ra=a@evil.example").is_none());
        assert!(parse("example.com", "v=spf1 -all ra=x rp=250").is_none());
        assert!(parse("example.com", "v=spf1 -all ra=").is_none());
    }

    #[test]
    fn included_records_do_not_choose_the_address() {
        let records = vec![
            rec("example.com", "v=spf1 include:esp.example.net -all", Reach::Top),
            rec("esp.example.net", "v=spf1 ip4:192.0.2.0/24 -all ra=abuse", Reach::Include),
        ];
        assert!(find(&records).is_none());
        let redirected = vec![
            rec("example.com", "v=spf1 redirect=_spf.example.com", Reach::Top),
            rec("_spf.example.com", "v=spf1 -all ra=reports", Reach::Redirect),
        ];
        assert_eq!(find(&redirected).unwrap().address, "reports@_spf.example.com");
    }
}
