//! Sources of raw messages and the way into the database: files, directories, Maildir and mbox
//! ([`files`]), one message on stdin ([`stdin`]), the LMTP listener ([`lmtp`]), the import driver with its
//! progress bar ([`import`]) and the group-commit writer every source shares ([`writer`]).
//!
//! Every source turns raw bytes into a [`NewMessage`] with [`prepare`] (hash, parse, classify) and hands it
//! to the writer; a message is acknowledged only when the writer reports its commit.

pub mod files;
pub mod import;
pub mod lmtp;
pub mod stdin;
pub mod writer;

use sha2::{Digest, Sha256};

use crate::classify::{self, ModelError};
use crate::config::ClassifyConfig;
use crate::parse::{self, Parsed};
use crate::store::NewMessage;

/// Install the model of `[classify]` for every message this process classifies. Returns whether one was
/// installed: a missing model directory means the structured-signal prior decides (logged as a warning);
/// a model that exists but cannot be loaded is an error.
pub fn install_model(config: &ClassifyConfig) -> Result<bool, ModelError> {
    if !config.model.is_dir() {
        tracing::warn!(model = %config.model.display(),
                       "no model directory; reasons come from the structured signals (status codes) alone");
        return Ok(false);
    }
    classify::init(&config.model, config.min_confidence)?;
    tracing::debug!(model = %config.model.display(), min_confidence = config.min_confidence, "model loaded");
    Ok(true)
}

/// Hash, parse and classify one raw message. Never panics: should the parser or classifier panic on some
/// input, the message is kept as `unparsed` with the reason, so one bad message never aborts a batch.
pub fn prepare(raw: Vec<u8>, source: String, envelope_from: Option<String>, envelope_to: Vec<String>) -> NewMessage {
    let sha256: [u8; 32] = Sha256::digest(&raw).into();
    let analysed = std::panic::catch_unwind(|| {
        let parsed = parse::parse(&raw);
        let classifications = classify::classify_all(&parsed);
        (parsed, classifications)
    });
    let (parsed, classifications) = analysed.unwrap_or_else(|_| {
        tracing::error!(%source, "parser panicked on this message; storing it as unparsed");
        (Parsed::unparsed("internal error: the parser panicked on this message"), Vec::new())
    });
    NewMessage { raw, sha256, source, parsed, classifications, envelope_from, envelope_to }
}

/// One step of reading a line of at most `room` bytes from a buffered reader's `available` bytes: appends up to and
/// including the first `end` byte (LF, or CR for files with old Mac line ends; or `room` bytes) to `buf`; returns
/// how many bytes to consume and whether `end` ended the line. Shared by the file readers and the LMTP session.
pub(crate) fn take_line(available: &[u8], buf: &mut Vec<u8>, room: usize, end: u8) -> (usize, bool) {
    let window = &available[..available.len().min(room)];
    match memchr::memchr(end, window) {
        Some(i) => {
            buf.extend_from_slice(&window[..=i]);
            (i + 1, true)
        }
        None => {
            buf.extend_from_slice(window);
            (window.len(), false)
        }
    }
}
