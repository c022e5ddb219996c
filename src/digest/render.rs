//! Digest → documents, with the minijinja templates under `templates/` (compiled into the binary).
//! The HTML template auto-escapes everything but the charts, which plotters drew (escaping their text itself).

use minijinja::{Environment, Value, context};

use super::{Digest, DigestError, charts};

/// Reasons shown in the reasons chart.
const CHART_REASONS: usize = 12;

fn environment() -> Result<Environment<'static>, DigestError> {
    let mut env = Environment::new();
    env.add_template("digest.html", include_str!("templates/digest.html"))?;
    env.add_template("digest.txt", include_str!("templates/digest.txt"))?;
    env.add_filter("ljust", |value: Value, width: usize| {
        let s = value.to_string();
        let pad = width.saturating_sub(s.chars().count());
        format!("{s}{}", " ".repeat(pad))
    });
    env.add_filter("rjust", |value: Value, width: usize| {
        let s = value.to_string();
        let pad = width.saturating_sub(s.chars().count());
        format!("{}{s}", " ".repeat(pad))
    });
    env.add_filter("thousands", |value: i64| thousands(value));
    Ok(env)
}

/// `1234567` → `1,234,567`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One self-contained HTML page: inline CSS and SVG, no script, nothing fetched.
pub fn html(digest: &Digest) -> Result<String, DigestError> {
    let timeline = charts::timeline(&digest.series)?;
    let reasons = charts::reasons(&digest.reasons, CHART_REASONS)?;
    let env = environment()?;
    let page = env.get_template("digest.html")?.render(context! {
        d => digest,
        timeline_svg => timeline.map(Value::from_safe_string),
        reasons_svg => reasons.map(Value::from_safe_string),
    })?;
    Ok(page)
}

/// The same digest in plain text.
pub fn text(digest: &Digest) -> Result<String, DigestError> {
    let env = environment()?;
    Ok(env.get_template("digest.txt")?.render(context! { d => digest })?)
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-12345), "-12,345");
    }
}
