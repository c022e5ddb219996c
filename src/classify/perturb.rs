//! The perturbed evaluation set: every diagnostic text paraphrased (phrase and word substitutions, spelling
//! variants, a typo, case changes) and stripped of its status and reply codes. Deterministic for a seed.
//! The robustness target of issue 6 compares accuracy on these texts with accuracy on the originals.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::features::strip_codes;

/// Phrase substitutions (lowercase source → alternatives). Applied where the source occurs.
pub(crate) const PHRASES: &[(&str, &[&str])] = &[
    ("does not exist", &["doesn't exist", "is not present", "cannot be found", "is nonexistent"]),
    ("doesn't exist", &["does not exist", "is not present"]),
    ("user unknown", &["unknown user", "recipient not known", "no such user"]),
    ("unknown user", &["user unknown", "user not known"]),
    ("no such user", &["user not found", "unknown recipient"]),
    ("not found", &["could not be found", "not located", "missing"]),
    ("mailbox", &["mail box", "mail-box", "inbox", "mailbox account"]),
    ("mail box", &["mailbox", "inbox"]),
    ("is full", &["is at capacity", "has no space left", "is full up"]),
    ("over quota", &["over its quota", "above quota", "past its storage limit"]),
    ("quota exceeded", &["exceeded quota", "storage quota reached"]),
    ("exceeded", &["surpassed", "gone over"]),
    ("rejected", &["refused", "declined", "denied"]),
    ("refused", &["rejected", "declined"]),
    ("denied", &["refused", "rejected"]),
    ("blocked", &["blacklisted", "block-listed", "barred"]),
    ("message", &["mail", "email", "msg"]),
    ("recipient", &["rcpt", "addressee", "receiver"]),
    ("address", &["addr", "e-mail address"]),
    ("account", &["acct", "user account"]),
    ("temporarily", &["temporary", "for now"]),
    ("disabled", &["deactivated", "suspended"]),
    ("please try again later", &["retry later", "try later"]),
    ("try again later", &["retry later", "come back later"]),
    ("connection", &["connexion", "session"]),
    ("timed out", &["timeout", "took too long"]),
    ("too many", &["excessive", "too much"]),
    ("spam", &["junk mail", "unsolicited mail", "SPAM"]),
    ("virus", &["malware", "infected content"]),
    ("relay", &["relaying"]),
    ("domain", &["mail domain", "dns domain"]),
    ("host", &["server", "machine"]),
    ("cannot", &["can't", "can not", "is unable to"]),
    ("can't", &["cannot", "can not"]),
    ("not allowed", &["not permitted", "forbidden"]),
    ("policy", &["rules", "local policy"]),
    ("size", &["length"]),
    ("too large", &["too big", "oversized"]),
    ("expired", &["timed out", "ran out of time"]),
];

/// Paraphrase a text deterministically for `rng`: up to three phrase substitutions, a letter swap in one long
/// word, maybe a case change, then status and reply codes stripped.
pub fn perturb_text(text: &str, rng: &mut StdRng) -> String {
    let mut s = strip_codes(text).to_lowercase();
    let mut candidates: Vec<&(&str, &[&str])> = PHRASES.iter().filter(|(p, _)| s.contains(p)).collect();
    candidates.shuffle(rng);
    for (phrase, alts) in candidates.into_iter().take(3) {
        if let Some(alt) = alts.choose(rng) {
            s = s.replacen(phrase, alt, 1);
        }
    }
    let mut words: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    let long: Vec<usize> = (0..words.len()).filter(|&i| words[i].chars().filter(|c| c.is_alphabetic()).count() >= 6).collect();
    if let Some(&i) = long.choose(rng) {
        let mut chars: Vec<char> = words[i].chars().collect();
        let pos = rng.gen_range(1..chars.len().saturating_sub(2).max(2));
        if pos + 1 < chars.len() && chars[pos].is_alphabetic() && chars[pos + 1].is_alphabetic() {
            chars.swap(pos, pos + 1);
        }
        words[i] = chars.into_iter().collect();
    }
    let joined = words.join(" ");
    match rng.gen_range(0..4) {
        0 => joined.to_uppercase(),
        1 => {
            let mut c = joined.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
        }
        _ => joined,
    }
}

/// A seeded generator for row `index` (each row's perturbation is independent of the others).
pub fn rng_for(seed: u64, index: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbation_is_deterministic_strips_codes_and_changes_wording() {
        let t = "550 5.1.1 The email account that you tried to reach does not exist";
        let a = perturb_text(t, &mut rng_for(7, 3));
        let b = perturb_text(t, &mut rng_for(7, 3));
        assert_eq!(a, b);
        assert!(!a.contains("5.1.1") && !a.contains("550"), "{a}");
        assert_ne!(a.to_lowercase(), t.to_lowercase());
    }
}
