//! Amazon SES notifications delivered by mail through SNS: a JSON document (optionally inside an SNS
//! envelope) of type Bounce or Delivery, sometimes folded over several lines by the mail system.

use serde_json::Value;

use super::Recipient;
use super::fields::split_typed;
use super::smtp;
use super::text::clean_address;

/// Parses the SES JSON notification in `text`, if there is one. Returns its recipients (bounced or
/// delivered) or `None` when the text is not an SES Bounce/Delivery notification.
pub(crate) fn recipients(text: &str) -> Option<Vec<Recipient>> {
    let start = text.find('{')?;
    let unfolded = text[start..].replace("\r\n ", "").replace("\n ", "").replace("\r ", "");
    let value: Value = serde_json::Deserializer::from_str(&unfolded).into_iter::<Value>().next()?.ok()?;
    let value = match value.get("Message").and_then(Value::as_str) {
        Some(inner) => serde_json::from_str(inner).ok()?,
        None => value,
    };
    let kind = value.get("notificationType").or_else(|| value.get("eventType"))?.as_str()?;
    let mut out = Vec::new();
    match kind {
        "Bounce" => {
            let bounce = value.get("bounce")?;
            let reporting = bounce.get("reportingMTA").and_then(Value::as_str).map(|m| split_typed(m).1.to_string());
            let permanent = bounce.get("bounceType").and_then(Value::as_str) == Some("Permanent");
            for r in bounce.get("bouncedRecipients")?.as_array()? {
                let Some(addr) = r.get("emailAddress").and_then(Value::as_str).and_then(clean_address) else {
                    continue;
                };
                let diag = r.get("diagnosticCode").and_then(Value::as_str).map(|d| split_typed(d).1.to_string());
                let status = r.get("status").and_then(Value::as_str).and_then(smtp::enhanced_status);
                let action = r.get("action").and_then(Value::as_str).map(str::to_ascii_lowercase);
                out.push(Recipient {
                    recipient: addr,
                    action: action.or_else(|| Some(if permanent { "failed" } else { "delayed" }.to_string())),
                    status: status.or_else(|| diag.as_deref().and_then(smtp::enhanced_status)),
                    reply_code: diag.as_deref().and_then(smtp::reply_code),
                    smtp_command: diag.as_deref().and_then(smtp::smtp_command).map(str::to_string),
                    diagnostic_type: Some("smtp".to_string()).filter(|_| diag.is_some()),
                    diagnostic: diag,
                    reporting_mta: reporting.clone(),
                    arrival_date: bounce.get("timestamp").and_then(Value::as_str).map(str::to_string),
                    ..Recipient::default()
                });
            }
        }
        "Delivery" => {
            let delivery = value.get("delivery")?;
            let response = delivery.get("smtpResponse").and_then(Value::as_str).map(str::to_string);
            let reporting = delivery.get("reportingMTA").and_then(Value::as_str).map(|m| split_typed(m).1.to_string());
            for r in delivery.get("recipients")?.as_array()? {
                let Some(addr) = r.as_str().and_then(clean_address) else { continue };
                out.push(Recipient {
                    recipient: addr,
                    action: Some("delivered".to_string()),
                    status: response.as_deref().and_then(smtp::enhanced_status),
                    reply_code: response.as_deref().and_then(smtp::reply_code),
                    diagnostic_type: Some("smtp".to_string()).filter(|_| response.is_some()),
                    diagnostic: response.clone(),
                    reporting_mta: reporting.clone(),
                    arrival_date: delivery.get("timestamp").and_then(Value::as_str).map(str::to_string),
                    ..Recipient::default()
                });
            }
        }
        _ => return None,
    }
    Some(out).filter(|o| !o.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_bounce_notification() {
        let text = "{\"notificationType\":\"Bounce\",\"bounce\":{\"bounceType\":\"Permanent\",\"bouncedRecipients\":\
            [{\"emailAddress\":\"a@example.org\",\"action\":\"failed\",\"status\":\"5.1.1\",\"diagnosticCode\":\n \
            \"smtp; 550 5.1.1 user unknown\"}],\"reportingMTA\":\"dsn; a1.example.com\"}}\n--\nfooter";
        let r = recipients(text).expect("recipients");
        assert_eq!(r[0].recipient, "a@example.org");
        assert_eq!(r[0].reply_code, Some(550));
        assert_eq!(r[0].reporting_mta.as_deref(), Some("a1.example.com"));
    }

    #[test]
    fn other_json_is_not_ses() {
        assert!(recipients("{\"hello\": 1}").is_none());
        assert!(recipients("no json at all").is_none());
    }
}
