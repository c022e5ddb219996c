//! Recipient diagnostics → [`Classification`]: a reason from the taxonomy of design.md, hard/soft,
//! a confidence and what decided it.
//!
//! Two deciders: the structured-signal prior ([`status`]) and the trained neural classifier ([`model`],
//! trained by [`train`] on [`features`]). [`init`] loads a model directory once and installs it for the whole
//! process; [`classify_all`] uses it when installed and the prior otherwise. Apart from [`init`] (which reads
//! the model files) everything here is pure: no I/O, no database, no async.

use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Serialize;

pub mod features;
pub mod memory;
pub mod model;
pub mod perturb;
pub mod train;

pub use features::{Signals, MAX_TEXT_CHARS};
pub use model::{Explanation, Model, ModelError};

/// Which signal decided a classification; stored in `bounces.decided_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecidedBy {
    /// The neural classifier.
    Model,
    /// Structured signals: enhanced status code, reply code, DSN action, message kind.
    Status,
    /// A label a user confirmed.
    User,
}

impl DecidedBy {
    /// The lowercase name used in the database and in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Model => "model",
            DecidedBy::Status => "status",
            DecidedBy::User => "user",
        }
    }
}

/// The verdict on one recipient.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// A reason of the taxonomy (or a user's custom category).
    pub reason: String,
    /// Will never succeed as is.
    pub hard_bounce: bool,
    /// 0..1.
    pub confidence: f32,
    /// Which signal decided it.
    pub decided_by: DecidedBy,
}

pub mod status;

/// The default taxonomy of design.md (the reason names of Sisimai 5, December 2025).
pub const REASONS: &[&str] = &[
    "authfailure", "badreputation", "blocked", "contenterror", "delivered", "emailtoolarge", "expired",
    "failedstarttls", "feedback", "filtered", "hasmoved", "hostunknown", "mailboxfull", "mailererror",
    "networkerror", "norelaying", "notaccept", "notcompliantrfc", "onhold", "policyviolation", "ratelimited",
    "rejected", "requireptr", "securityerror", "spamdetected", "suppressed", "suspend", "syntaxerror",
    "systemerror", "systemfull", "undefined", "userunknown", "vacation", "virusdetected",
];

/// Reasons that make a permanent failure a hard bounce: retrying the same address will never succeed.
/// Matches Sisimai's hard-bounce set so results compare across tools.
pub const HARD_REASONS: &[&str] = &["userunknown", "hostunknown", "hasmoved", "notaccept"];

/// Default minimum confidence: below it the model answers `onhold` instead of guessing.
pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.5;

/// The installed model and its confidence threshold.
struct Installed {
    model: Arc<Model>,
    min_confidence: f32,
}

static INSTALLED: RwLock<Option<Installed>> = RwLock::new(None);

/// Load the model in `model_dir` and install it for the whole process (replacing any installed one).
/// The error names the missing or corrupt file; nothing is installed then.
pub fn init(model_dir: &Path, min_confidence: f32) -> Result<(), ModelError> {
    let model = Model::load(model_dir)?;
    install(Arc::new(model), min_confidence);
    Ok(())
}

/// Install an already loaded (or freshly trained) model for the whole process.
pub fn install(model: Arc<Model>, min_confidence: f32) {
    let mut slot = INSTALLED.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    *slot = Some(Installed { model, min_confidence: min_confidence.clamp(0.0, 1.0) });
}

/// The installed model and threshold, if any.
pub fn installed() -> Option<(Arc<Model>, f32)> {
    let slot = INSTALLED.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    slot.as_ref().map(|i| (Arc::clone(&i.model), i.min_confidence))
}

/// Classify one recipient: message kinds and DSN actions that are not failures (ARF → `feedback`,
/// auto-reply → `vacation`, delivered/relayed/expanded → `delivered`) are decided by the signals; every
/// failure by `model` when given, else by the status prior.
pub fn classify_recipient(
    kind: crate::parse::Kind,
    recipient: &crate::parse::Recipient,
    model: Option<(&Model, f32)>,
) -> Classification {
    let text = recipient.diagnostic.as_deref().unwrap_or("");
    classify_signals(text, &Signals::of_recipient(kind, recipient), model)
}

/// Classify a text with its signals: non-failures by the signals, failures by `model` when given, else by
/// the status prior.
pub fn classify_signals(text: &str, signals: &Signals, model: Option<(&Model, f32)>) -> Classification {
    let prior = signals.prior_classification();
    if prior.confidence >= 1.0 {
        return prior;
    }
    match model {
        Some((m, min_confidence)) => m.classify_with_prior(text, signals, &prior, min_confidence),
        None => prior,
    }
}

/// Classify every recipient of a parsed message, in order: with the installed model when there is one
/// ([`init`]), with the status prior otherwise.
pub fn classify_all(parsed: &crate::parse::Parsed) -> Vec<Classification> {
    let installed = installed();
    let model = installed.as_ref().map(|(m, c)| (m.as_ref(), *c));
    parsed.recipients.iter().map(|r| classify_recipient(parsed.kind, r, model)).collect()
}

/// Classify one bare diagnostic text (`rebound classify --text`): the enhanced status code and reply code
/// written in it are its only signals. Without an installed model, the prior decides from those codes.
pub fn classify_text(text: &str) -> Classification {
    let recipient = recipient_of_text(text);
    match installed() {
        Some((m, min_confidence)) => m.classify(text, &text_signals(&recipient), min_confidence),
        None => status::classify(crate::parse::Kind::Bounce, &recipient),
    }
}

/// Explain the installed model's verdict on a text (`classify --explain`): the `top_n` text features and
/// every signal with their weight. `None` when no model is installed.
pub fn explain(text: &str, signals: Option<&Signals>, top_n: usize) -> Option<Explanation> {
    let (m, min_confidence) = installed()?;
    let own;
    let signals = match signals {
        Some(s) => s,
        None => {
            own = text_signals(&recipient_of_text(text));
            &own
        }
    };
    Some(m.explain(text, signals, min_confidence, top_n))
}

/// The signals of a bare text: no message kind, no action.
fn text_signals(recipient: &crate::parse::Recipient) -> Signals {
    Signals { kind: None, ..Signals::of_recipient(crate::parse::Kind::Bounce, recipient) }
}

/// A recipient carrying a bare text's own signals, read as the parser reads a diagnostic
/// ([`crate::parse::smtp`]): the reply code and enhanced status of its failure reply and the SMTP command
/// it answered. Texts are cut at [`MAX_TEXT_CHARS`].
pub fn recipient_of_text(text: &str) -> crate::parse::Recipient {
    let head: String = text.chars().take(MAX_TEXT_CHARS).collect();
    let (reply_code, status) = crate::parse::smtp::codes(&head);
    crate::parse::Recipient {
        smtp_command: crate::parse::smtp::smtp_command_for(&head, reply_code).map(str::to_string),
        reply_code,
        status,
        diagnostic: Some(head),
        ..crate::parse::Recipient::default()
    }
}

/// Test data shared by the modules whose fast paths are checked against reference implementations.
#[cfg(test)]
pub(crate) mod testdata {
    /// The texts of the own corpus files (`models/corpus/diagnostics.jsonl` and `perturbed.jsonl`). A file
    /// that is absent is skipped with a printed reason; when the directory exists, some text must be read.
    pub(crate) fn own_corpus_texts() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/corpus");
        let mut texts = Vec::new();
        for name in ["diagnostics.jsonl", "perturbed.jsonl"] {
            let Ok(data) = std::fs::read_to_string(dir.join(name)) else {
                println!("skipping {name}: not found in {}", dir.display());
                continue;
            };
            let text = |line: &str| {
                let row: serde_json::Value = serde_json::from_str(line).ok()?;
                row["text"].as_str().map(str::to_string)
            };
            texts.extend(data.lines().filter_map(text));
        }
        assert!(!texts.is_empty() || !dir.exists(), "no texts read from {}", dir.display());
        texts
    }
}
