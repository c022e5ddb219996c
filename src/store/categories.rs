//! The built-in rows of `categories`: every reason of the taxonomy ([`crate::classify::REASONS`]), hard or soft
//! as [`crate::classify::HARD_REASONS`] says, with a one-line description. Users' custom categories live in the
//! same table with `builtin = false`.

use super::{Backend, Pool, Store, StoreError};
use crate::classify::{HARD_REASONS, REASONS};

/// One line on each reason of the taxonomy (see docs/reasons.md).
fn description(reason: &str) -> &'static str {
    match reason {
        "authfailure" => "SPF, DKIM, DMARC or ARC authentication failed",
        "badreputation" => "the sending IP or domain has a bad reputation",
        "blocked" => "the sending IP or host is blocked (blocklist, no rDNS, policy)",
        "contenterror" => "the message content or media was refused",
        "delivered" => "delivered, relayed or expanded: not a failure",
        "emailtoolarge" => "the message is larger than the receiver accepts",
        "expired" => "delivery time expired: the message stayed queued too long",
        "failedstarttls" => "TLS was required but could not be negotiated",
        "feedback" => "an ARF feedback report (complaint or authentication failure): not a bounce",
        "filtered" => "refused by a filter for this recipient (user or domain rules)",
        "hasmoved" => "the mailbox has moved to another address",
        "hostunknown" => "the recipient domain or host does not exist or cannot be routed",
        "mailboxfull" => "the recipient's mailbox is full",
        "mailererror" => "the remote mailer program failed",
        "networkerror" => "a network or DNS error, or a routing loop",
        "norelaying" => "the server refused to relay",
        "notaccept" => "the host or domain accepts no mail (null MX, 521/556)",
        "notcompliantrfc" => "the message does not comply with the RFCs",
        "onhold" => "not decided yet: waits for the model or a person's label",
        "policyviolation" => "refused by the receiver's policy",
        "ratelimited" => "too many messages or connections: rate limited",
        "rejected" => "the envelope sender was rejected",
        "requireptr" => "the sending IP has no valid reverse DNS",
        "securityerror" => "authentication, credentials or a security check failed",
        "spamdetected" => "the message was judged to be spam",
        "suppressed" => "the address is on a suppression list",
        "suspend" => "the recipient's account is disabled or suspended",
        "syntaxerror" => "an SMTP syntax error",
        "systemerror" => "an error of the receiving system",
        "systemfull" => "the receiving system is out of storage",
        "undefined" => "the cause could not be identified",
        "userunknown" => "the recipient address does not exist",
        "vacation" => "an automatic reply (vacation notice): not a failure",
        "virusdetected" => "a virus was found in the message",
        _ => "",
    }
}

/// Insert the built-in reasons that are missing. Existing rows are left alone, so an operator's edits to a
/// built-in's description or hard/soft flag survive upgrades.
pub(super) async fn seed_builtin(store: &Store) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO categories (name, description, hard_bounce, builtin) VALUES ($1, $2, $3, $4) \
                       ON CONFLICT (name) DO NOTHING";
    let context = || format!("cannot seed the built-in categories in {}", store.display_url());
    macro_rules! seed {
        ($pool:expr, $backend:expr) => {{
            let mut tx = $pool.begin().await.map_err(|e| StoreError::sqlx($backend, context(), e))?;
            for reason in REASONS {
                sqlx::query(SQL)
                    .bind(*reason)
                    .bind(description(reason))
                    .bind(HARD_REASONS.contains(reason))
                    .bind(true)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::sqlx($backend, context(), e))?;
            }
            tx.commit().await.map_err(|e| StoreError::sqlx($backend, context(), e))
        }};
    }
    match &store.pool {
        Pool::Sqlite(pool) => seed!(pool, Backend::Sqlite),
        Pool::Postgres(pool) => seed!(pool, Backend::Postgres),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_description() {
        for reason in REASONS {
            assert!(!description(reason).is_empty(), "no description for {reason}");
        }
    }
}
