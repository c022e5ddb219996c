//! The classifier's life beside its users: custom categories declared in the configuration, retraining from
//! the labels people confirmed in the database, evaluation of the candidate against the model in use on a
//! held-back slice of those labels, promotion, rollback, and the models kept in `model_versions`.
//!
//! Unlike the rest of [`crate::classify`], this module does I/O: it reads and writes the database and the
//! model files.
//!
//! - Models retrained from users' labels live in the database (`model_versions.weights`, the files of
//!   [`Model::save`] packed into one blob with a SHA-256 trailer), never in `models/`. [`install_active`] loads
//!   the active version when there is one, else the shipped model directory; a corrupt version is an error.
//! - [`retrain`] trains a candidate on the built-in corpus plus the labelled bounces (custom categories are
//!   learned beside the built-in reasons, after them in the label set), keeping a seeded, stratified slice of
//!   the labels out of training; both the candidate and the current model are measured on that slice and the
//!   candidate is promoted only if it is not worse. Every candidate is recorded with its metrics, promoted or
//!   not, so the labels it saw do not trigger another retraining.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use super::model::{Label, Model, ModelError};
use super::train::{self, Example, MIN_CATEGORY_EXAMPLES, TrainConfig, TrainError};
use super::{REASONS, Signals};
use crate::config::ClassifyConfig;
use crate::digest::Schedule;
use crate::store::{LabelledBounce, NewModelVersion, Store, StoreError};

/// A custom category declared in `[classify]` (`[[classify.categories]]` or `[classify.categories.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    /// Its name, e.g. `gmail-throttle`: a word that is not a built-in reason.
    pub name: String,
    /// One line on what it means.
    #[serde(default)]
    pub description: Option<String>,
    /// A permanent failure in this category means the address is dead.
    #[serde(default)]
    pub hard_bounce: bool,
}

/// The body of `[classify.categories.NAME]` (the name is the table's key).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    hard_bounce: bool,
}

/// Deserialize `[classify] categories` written either as an array of tables or as a table of tables.
pub fn de_categories<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CategoryConfig>, D::Error> {
    struct Either;
    impl<'de> Visitor<'de> for Either {
        type Value = Vec<CategoryConfig>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("[[classify.categories]] tables or [classify.categories.NAME] tables")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(c) = seq.next_element::<CategoryConfig>()? {
                out.push(c);
            }
            Ok(out)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((name, body)) = map.next_entry::<String, CategoryBody>()? {
                out.push(CategoryConfig { name, description: body.description, hard_bounce: body.hard_bounce });
            }
            Ok(out)
        }
    }
    d.deserialize_any(Either)
}

/// Check declared categories: a name is one word (no spaces or control characters), not a built-in
/// reason, and declared once.
pub fn validate_categories(categories: &[CategoryConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for c in categories {
        let name = c.name.as_str();
        if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(format!("invalid category name {name:?}: use one word such as gmail-throttle"));
        }
        if REASONS.contains(&name) {
            return Err(format!("category {name:?} clashes with the built-in reason of that name"));
        }
        if !seen.insert(name) {
            return Err(format!("category {name:?} is declared twice"));
        }
    }
    Ok(())
}

/// When `serve` retrains: `off`, `every DURATION` (e.g. `every 6h`, `every 30s`), or a schedule of
/// [`Schedule`] (`hourly`, `daily HH:MM`, `weekly DAY HH:MM`, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum RetrainSchedule {
    /// Never retrain by itself (the default; `rebound model train --from-db` still does).
    #[default]
    Off,
    /// At a fixed interval from start.
    Every(Duration),
    /// At calendar times.
    At(Schedule),
}

impl RetrainSchedule {
    /// The next time to look for new labels strictly after `now`, or `None` when off.
    pub fn next_after(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            RetrainSchedule::Off => None,
            RetrainSchedule::Every(every) => Some(now + chrono::Duration::from_std(every).ok()?),
            RetrainSchedule::At(schedule) => schedule.next_after(now),
        }
    }
}

impl FromStr for RetrainSchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<RetrainSchedule, String> {
        let bad = |why: &str| format!("invalid retrain schedule {s:?}: {why}");
        match s.trim().strip_prefix("every ") {
            Some(every) => {
                let d = crate::config::parse_duration(every).map_err(|e| bad(&e.to_string()))?;
                if d < Duration::from_secs(1) {
                    return Err(bad("the interval must be at least 1s"));
                }
                Ok(RetrainSchedule::Every(d))
            }
            None => match s.parse::<Schedule>().map_err(|_| {
                bad("expected off, \"every DURATION\" (e.g. \"every 6h\"), hourly, \"daily HH:MM\" or \"weekly DAY HH:MM\"")
            })? {
                Schedule::Off => Ok(RetrainSchedule::Off),
                at => Ok(RetrainSchedule::At(at)),
            },
        }
    }
}

impl TryFrom<String> for RetrainSchedule {
    type Error = String;

    fn try_from(s: String) -> Result<RetrainSchedule, String> {
        s.parse()
    }
}

impl fmt::Display for RetrainSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetrainSchedule::Off => f.write_str("off"),
            RetrainSchedule::Every(d) => write!(f, "every {}s", d.as_secs()),
            RetrainSchedule::At(s) => s.fmt(f),
        }
    }
}

/// Why a model could not be retrained, stored, loaded from the database or activated.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Training failed (too few examples of a category, ...).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The shipped model (or a model being packed) could not be read or written.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A version's stored weights cannot be turned back into a model.
    #[error("corrupt model version {id} in the database (model_versions.weights): {reason}")]
    Corrupt {
        /// `model_versions.id`.
        id: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A label names something that is not a category (inserted by hand without the foreign-key check).
    #[error("label {label_id} (bounce {bounce_id}) names {reason:?}, which is neither a reason nor a category")]
    UnknownLabel {
        /// `labels.id`.
        label_id: i64,
        /// `bounces.id`.
        bounce_id: i64,
        /// The unknown name.
        reason: String,
    },
    /// The built-in training corpus could not be read.
    #[error("cannot read the training corpus: {0}")]
    Corpus(String),
    /// No such version, or a version without weights in the database.
    #[error("{0}")]
    Version(String),
    /// A scratch directory for packing or unpacking a model could not be used.
    #[error("scratch directory {path}: {source}")]
    Scratch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The training task panicked or was cancelled.
    #[error("the training task failed: {0}")]
    Task(String),
}

/// Which model classifies: a database version or the shipped directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `model_versions.id`.
    Version(i64),
    /// The model directory of `[classify] model`.
    Shipped(PathBuf),
    /// No model: the status prior alone.
    Prior,
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Version(id) => write!(f, "model version {id} (database)"),
            ModelSource::Shipped(dir) => write!(f, "the shipped model in {}", dir.display()),
            ModelSource::Prior => f.write_str("the status-code prior (no model)"),
        }
    }
}

// ---- models as database blobs --------------------------------------------------------------------------

/// First bytes of a packed model.
const MAGIC: &[u8; 8] = b"RBMODEL1";

/// A directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, LifecycleError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "rebound-model-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).map_err(|source| LifecycleError::Scratch { path: path.clone(), source })?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pack a model into one blob: the files [`Model::save`] writes, each as (name length u16, name, data
/// length u64, data), after a magic and a count, followed by the SHA-256 of everything before it.
pub fn pack(model: &Model) -> Result<Vec<u8>, LifecycleError> {
    let dir = Scratch::new()?;
    model.save(&dir.0)?;
    let scratch_err = |source| LifecycleError::Scratch { path: dir.0.clone(), source };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&dir.0).map_err(scratch_err)? {
        let entry = entry.map_err(scratch_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        files.push((name, std::fs::read(entry.path()).map_err(scratch_err)?));
    }
    files.sort();
    let mut out = Vec::with_capacity(files.iter().map(|f| f.1.len() + f.0.len() + 10).sum::<usize>() + 44);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (name, data) in &files {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Unpack the blob of version `id` (see [`pack`]) and load it. Any damage is [`LifecycleError::Corrupt`].
pub fn unpack(id: i64, blob: &[u8]) -> Result<Model, LifecycleError> {
    let corrupt = |reason: String| LifecycleError::Corrupt { id, reason };
    if blob.len() < MAGIC.len() + 4 + 32 || &blob[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a packed rebound model (bad header)".into()));
    }
    let (body, sum) = blob.split_at(blob.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(corrupt("checksum mismatch: the stored weights were damaged".into()));
    }
    let mut rest = &body[MAGIC.len()..];
    let mut take = |n: usize| -> Result<&[u8], LifecycleError> {
        if rest.len() < n {
            return Err(corrupt("truncated".into()));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    let dir = Scratch::new()?;
    for _ in 0..count {
        let len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let name = std::str::from_utf8(take(len)?).map_err(|_| corrupt("a file name is not UTF-8".into()))?.to_string();
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(corrupt(format!("bad file name {name:?}")));
        }
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let data = take(usize::try_from(len).map_err(|_| corrupt("file too large".into()))?)?;
        let path = dir.0.join(&name);
        std::fs::write(&path, data).map_err(|source| LifecycleError::Scratch { path, source })?;
    }
    let prefix = format!("{}/", dir.0.display());
    Model::load(&dir.0).map_err(|e| corrupt(e.to_string().replace(&prefix, "")))
}

/// Load version `id` from the database.
pub async fn load_version(store: &Store, id: i64) -> Result<Model, LifecycleError> {
    let blob = store
        .model_weights(id)
        .await?
        .ok_or_else(|| LifecycleError::Version(format!("model version {id} does not exist or has no stored weights")))?;
    unpack(id, &blob)
}

/// The model that classifies now: the active database version, else the shipped directory when it exists,
/// else none.
pub async fn current_model(store: &Store, config: &ClassifyConfig) -> Result<(Option<Model>, ModelSource), LifecycleError> {
    if let Some(active) = store.model_versions().await?.into_iter().find(|v| v.active) {
        return Ok((Some(load_version(store, active.id).await?), ModelSource::Version(active.id)));
    }
    if config.model.is_dir() {
        return Ok((Some(Model::load(&config.model)?), ModelSource::Shipped(config.model.clone())));
    }
    Ok((None, ModelSource::Prior))
}

/// Load the model that must classify (see [`current_model`]) and install it for the whole process. A
/// corrupt database version or shipped model is an error (`serve` refuses to start).
pub async fn install_active(store: &Store, config: &ClassifyConfig) -> Result<ModelSource, LifecycleError> {
    let (model, source) = current_model(store, config).await?;
    match model {
        Some(m) => super::install(Arc::new(m), config.min_confidence),
        None => tracing::warn!(model = %config.model.display(),
                               "no model directory and no model version in the database; reasons come from the \
                                structured signals (status codes) alone"),
    }
    tracing::info!("classifying with {source}");
    Ok(source)
}

/// Insert or update the categories declared in `[classify]` in the `categories` table.
pub async fn sync_categories(store: &Store, categories: &[CategoryConfig]) -> Result<(), StoreError> {
    for c in categories {
        store.upsert_category(&c.name, c.description.as_deref(), c.hard_bounce).await?;
    }
    Ok(())
}

// ---- retraining ----------------------------------------------------------------------------------------

/// Share of each label's examples held back from training to compare the candidate with the current model.
pub const HOLDOUT_SHARE: f64 = 0.2;

/// What [`retrain`] needs besides the store.
#[derive(Debug, Clone)]
pub struct RetrainOptions {
    /// The built-in examples (the repository's corpus, and the shared one when wanted).
    pub base: Vec<Example>,
    /// What the base is, for `model_versions.trained_on`.
    pub base_name: String,
    /// Hyper-parameters; the seed also fixes the held-back slice.
    pub train: TrainConfig,
    /// `[classify]`: the shipped model to compare with when no version is active, and `min_confidence`.
    pub classify: ClassifyConfig,
    /// Retrain only when at least this many labels are newer than the last recorded version (0: always).
    pub min_new_labels: usize,
}

/// The figures recorded in `model_versions.metrics` for every candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The highest `labels.id` the candidate could see (training or held back).
    pub labels_through: i64,
    /// Labelled bounces used (latest label of each bounce).
    pub labels: usize,
    /// Of which held back from training.
    pub held_back: usize,
    /// Training examples (base corpus plus the labels not held back).
    pub examples: usize,
    /// Custom categories learned, in output order.
    pub categories: Vec<String>,
    /// Candidate's accuracy on the held-back labels.
    pub candidate_accuracy: f64,
    /// The model in use's accuracy on the same labels.
    pub current_accuracy: f64,
    /// What the candidate was compared with.
    pub compared_with: String,
    /// Whether it became the active version.
    pub promoted: bool,
    /// Why, in words.
    pub decision: String,
    /// Training seed.
    pub seed: u64,
}

/// What [`retrain`] did.
pub enum Outcome {
    /// Another process holds the retraining lock.
    Busy,
    /// Fewer new labels than `min_new_labels` since the last version.
    NotEnoughLabels {
        /// New labels since the last version.
        new: usize,
        /// How many are needed.
        needed: usize,
    },
    /// A candidate was trained and recorded.
    Trained {
        /// Its `model_versions.id`.
        version: i64,
        /// Its metrics (including whether it was promoted).
        metrics: Metrics,
        /// The candidate, to install when promoted.
        model: Box<Model>,
    },
}

/// The highest `labels_through` any recorded version saw (0 when none).
async fn labels_seen(store: &Store) -> Result<i64, StoreError> {
    Ok(store
        .model_versions()
        .await?
        .iter()
        .filter_map(|v| serde_json::from_str::<Metrics>(&v.metrics_json).ok())
        .map(|m| m.labels_through)
        .max()
        .unwrap_or(0))
}

/// How many labels are newer than the last recorded version.
pub async fn new_label_count(store: &Store) -> Result<usize, StoreError> {
    Ok(store.labelled_bounces(labels_seen(store).await?).await?.len())
}

/// The training example of a labelled bounce.
fn example_of(b: &LabelledBounce) -> Example {
    let kind = match b.kind.as_str() {
        "dsn" => crate::parse::Kind::Dsn,
        "arf" => crate::parse::Kind::Arf,
        "autoreply" => crate::parse::Kind::Autoreply,
        "unparsed" => crate::parse::Kind::Unparsed,
        _ => crate::parse::Kind::Bounce,
    };
    Example {
        text: b.diagnostic.clone().unwrap_or_default(),
        signals: Signals {
            kind: Some(kind),
            status: b.status.clone(),
            reply_code: b.reply_code.and_then(|c| u16::try_from(c).ok()),
            action: b.action.as_ref().map(|a| a.to_ascii_lowercase()),
            smtp_command: b.smtp_command.as_ref().map(|c| c.to_ascii_uppercase()),
        },
        label: b.reason.clone(),
    }
}

/// A stable hash of `value` under `seed`.
fn seeded_hash(seed: u64, value: &str) -> u64 {
    // DefaultHasher::new() has fixed keys, so this is stable within a build; that is all the split needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

/// Split the labelled examples into (training, held back): per label, whole groups of the same normalised
/// text in seeded order, about [`HOLDOUT_SHARE`] of each label, never leaving a custom category fewer than
/// [`MIN_CATEGORY_EXAMPLES`] training examples.
pub fn split_holdout(examples: Vec<Example>, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut by_label: BTreeMap<String, BTreeMap<String, Vec<Example>>> = BTreeMap::new();
    for ex in examples {
        let group = super::features::words(&super::features::normalise(&ex.text)).join(" ");
        by_label.entry(ex.label.clone()).or_default().entry(group).or_default().push(ex);
    }
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (label, groups) in by_label {
        let n: usize = groups.values().map(Vec::len).sum();
        let floor = if REASONS.contains(&label.as_str()) { 1 } else { MIN_CATEGORY_EXAMPLES };
        let target = ((n as f64 * HOLDOUT_SHARE).floor() as usize).min(n.saturating_sub(floor));
        let mut order: Vec<(u64, Vec<Example>)> =
            groups.into_iter().map(|(g, exs)| (seeded_hash(seed, &g), exs)).collect();
        order.sort_by_key(|(h, _)| *h);
        let mut taken = 0usize;
        for (_, exs) in order {
            if taken + exs.len() <= target {
                taken += exs.len();
                held.extend(exs);
            } else {
                train.extend(exs);
            }
        }
    }
    (train, held)
}

/// Accuracy of `model` (or the status prior when `None`) on `examples`, at `min_confidence`.
pub fn accuracy(model: Option<&Model>, examples: &[Example], min_confidence: f32) -> f64 {
    if examples.is_empty() {
        return 0.0;
    }
    let ok = examples
        .iter()
        .filter(|ex| super::classify_signals(&ex.text, &ex.signals, model.map(|m| (m, min_confidence))).reason == ex.label)
        .count();
    ok as f64 / examples.len() as f64
}

/// Retrain from the database when enough new labels exist (see the module documentation). The candidate is
/// recorded in `model_versions` with its [`Metrics`] and made active only if it is not worse than the model
/// in use on the held-back labels. On Postgres only one process retrains at a time ([`Outcome::Busy`]).
pub async fn retrain(store: &Store, opts: RetrainOptions) -> Result<Outcome, LifecycleError> {
    let Some(lock) = store.try_retrain_lock().await? else { return Ok(Outcome::Busy) };
    let result = retrain_locked(store, opts).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "cannot release the retraining lock; its connection is closed instead");
    }
    result
}

async fn retrain_locked(store: &Store, opts: RetrainOptions) -> Result<Outcome, LifecycleError> {
    let seen = labels_seen(store).await?;
    let new = store.labelled_bounces(seen).await?.len();
    if new < opts.min_new_labels {
        return Ok(Outcome::NotEnoughLabels { new, needed: opts.min_new_labels });
    }
    let labelled = store.labelled_bounces(0).await?;
    let categories = store.categories().await?;
    let known: HashMap<&str, &crate::store::Category> = categories.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &labelled {
        if !known.contains_key(b.reason.as_str()) {
            return Err(LifecycleError::UnknownLabel {
                label_id: b.label_id,
                bounce_id: b.bounce_id,
                reason: b.reason.clone(),
            });
        }
        *counts.entry(b.reason.as_str()).or_default() += 1;
    }
    // Custom categories with labels, in name order, after the built-in reasons.
    let mut custom = Vec::new();
    for c in categories.iter().filter(|c| !c.builtin && !REASONS.contains(&c.name.as_str())) {
        let count = counts.get(c.name.as_str()).copied().unwrap_or(0);
        if count == 0 {
            continue;
        }
        if count < MIN_CATEGORY_EXAMPLES {
            return Err(TrainError::TooFewExamples { name: c.name.clone(), count, min: MIN_CATEGORY_EXAMPLES }.into());
        }
        custom.push(Label { name: c.name.clone(), hard: c.hard_bounce });
    }
    let labels_through = labelled.iter().map(|b| b.label_id).max().unwrap_or(seen);
    let (train_part, held) = split_holdout(labelled.iter().map(example_of).collect(), opts.train.seed);
    let (current, source) = current_model(store, &opts.classify).await?;

    let mut examples = opts.base;
    examples.extend(train_part);
    let n_examples = examples.len();
    let cfg = opts.train.clone();
    let label_set = train::label_set(&custom);
    let min_confidence = opts.classify.min_confidence;
    let held_for_task = held.clone();
    let (candidate, candidate_accuracy, current_accuracy) = tokio::task::spawn_blocking(move || {
        let candidate = train::train(&examples, label_set, &cfg)?;
        let cand = accuracy(Some(&candidate), &held_for_task, min_confidence);
        let cur = accuracy(current.as_ref(), &held_for_task, min_confidence);
        Ok::<_, TrainError>((candidate, cand, cur))
    })
    .await
    .map_err(|e| LifecycleError::Task(e.to_string()))??;

    let (promoted, decision) = if held.is_empty() {
        (false, format!(
            "not promoted: no label could be held back to compare with {source} (a reason needs at least 5 \
             labelled bounces with different texts, a custom category {})",
            MIN_CATEGORY_EXAMPLES + 1
        ))
    } else if candidate_accuracy >= current_accuracy {
        (true, format!(
            "promoted: {candidate_accuracy:.3} on {} held-back labels, not worse than {current_accuracy:.3} of {source}",
            held.len()
        ))
    } else {
        (false, format!(
            "not promoted: {candidate_accuracy:.3} on {} held-back labels, worse than {current_accuracy:.3} of {source}",
            held.len()
        ))
    };
    let metrics = Metrics {
        labels_through,
        labels: labelled.len(),
        held_back: held.len(),
        examples: n_examples,
        categories: custom.iter().map(|l| l.name.clone()).collect(),
        candidate_accuracy,
        current_accuracy,
        compared_with: source.to_string(),
        promoted,
        decision,
        seed: opts.train.seed,
    };
    let blob = pack(&candidate)?;
    let metrics_json = serde_json::to_string(&metrics).map_err(|e| LifecycleError::Task(e.to_string()))?;
    let trained_on = format!("{} + {} labels (through label {labels_through})", opts.base_name, labelled.len() - held.len());
    let version = store
        .record_model_version(
            NewModelVersion { trained_on: &trained_on, metrics_json: &metrics_json, path: None, weights: Some(&blob) },
            promoted,
        )
        .await?;
    Ok(Outcome::Trained { version, metrics, model: Box::new(candidate) })
}

/// Roll back: activate version `to`, or without it the latest promoted version older than the active one,
/// or — when there is none — no version (the shipped model). The target is loaded first, so a corrupt
/// version is never activated. Returns what classifies now.
pub async fn rollback(store: &Store, config: &ClassifyConfig, to: Option<i64>) -> Result<ModelSource, LifecycleError> {
    let versions = store.model_versions().await?;
    let target = match to {
        Some(id) => {
            if !versions.iter().any(|v| v.id == id) {
                return Err(LifecycleError::Version(format!("there is no model version {id} (see rebound model list)")));
            }
            Some(id)
        }
        None => {
            let active = versions
                .iter()
                .find(|v| v.active)
                .ok_or_else(|| LifecycleError::Version("no model version is active: nothing to roll back".into()))?;
            versions
                .iter()
                .rev()
                .filter(|v| v.id < active.id && v.has_weights)
                .find(|v| serde_json::from_str::<Metrics>(&v.metrics_json).is_ok_and(|m| m.promoted))
                .map(|v| v.id)
        }
    };
    match target {
        Some(id) => {
            load_version(store, id).await?;
            store.activate_model_version(id).await?;
            Ok(ModelSource::Version(id))
        }
        None => {
            store.deactivate_model_versions().await?;
            Ok(if config.model.is_dir() { ModelSource::Shipped(config.model.clone()) } else { ModelSource::Prior })
        }
    }
}

/// `serve`'s self-update loop: at every due time of `[classify] retrain_schedule`, reload the active model if another process
/// changed it (a rollback, a `model train --from-db`), then retrain when at least `min_new_labels` new labels
/// exist, installing the candidate when it is promoted. Failures are logged; the loop goes on until
/// `shutdown` resolves. Returns at once when the schedule is off.
pub async fn run_schedule(
    store: Store,
    classify: ClassifyConfig,
    make_options: impl Fn() -> Result<RetrainOptions, LifecycleError>,
    mut loaded: ModelSource,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let Some(due) = classify.retrain_schedule.next_after(Utc::now()) else { return };
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let active = store.model_versions().await.map(|vs| vs.into_iter().find(|v| v.active).map(|v| v.id));
        let expected = match &loaded {
            ModelSource::Version(id) => Some(*id),
            _ => None,
        };
        match active {
            Ok(active) if active != expected => match install_active(&store, &classify).await {
                Ok(source) => loaded = source,
                Err(e) => tracing::error!(error = %e, "the active model changed but cannot be loaded; keeping {loaded}"),
            },
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the model versions"),
        }
        // Count first: reading the corpus is not worth it when there is nothing new to learn.
        match new_label_count(&store).await {
            Ok(new) if new < classify.min_new_labels => {
                tracing::debug!(new, needed = classify.min_new_labels, "not enough new labels to retrain");
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot count the new labels");
                continue;
            }
        }
        let options = match make_options() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot retrain");
                continue;
            }
        };
        match retrain(&store, options).await {
            Ok(Outcome::Busy) => tracing::info!("another process is retraining; skipped"),
            Ok(Outcome::NotEnoughLabels { new, needed }) => {
                tracing::debug!(new, needed, "not enough new labels to retrain")
            }
            Ok(Outcome::Trained { version, metrics, model }) => {
                tracing::info!(version, decision = %metrics.decision, "retrained from the labels");
                if metrics.promoted {
                    super::install(Arc::from(model), classify.min_confidence);
                    loaded = ModelSource::Version(version);
                }
            }
            Err(e) => tracing::error!(error = %e, "retraining failed"),
        }
    }
}

/// Read the built-in training examples: the repository's JSONL corpus, plus the shared .eml corpus when
/// `shared` is given and holds a `labels.jsonl`.
pub fn base_examples(corpus: &Path, shared: Option<&Path>, all_labels: bool) -> Result<Vec<Example>, LifecycleError> {
    let err = |e: anyhow::Error| LifecycleError::Corpus(format!("{e:#}"));
    let mut items = crate::cli::model::load_text_corpus(corpus).map_err(err)?;
    if let Some(dir) = shared.filter(|d| d.join("labels.jsonl").is_file()) {
        items.extend(crate::cli::model::load_eml_corpus(dir, all_labels).map_err(err)?);
    }
    Ok(items
        .into_iter()
        .map(|it| Example { text: it.text, signals: it.signals, label: it.label })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str, label: &str) -> Example {
        Example { text: text.into(), signals: Signals::default(), label: label.into() }
    }

    #[test]
    fn schedules_parse() {
        assert_eq!("off".parse::<RetrainSchedule>().unwrap(), RetrainSchedule::Off);
        assert_eq!("every 30s".parse::<RetrainSchedule>().unwrap(), RetrainSchedule::Every(Duration::from_secs(30)));
        assert!(matches!("daily 03:00".parse::<RetrainSchedule>().unwrap(), RetrainSchedule::At(_)));
        assert!("every 0s".parse::<RetrainSchedule>().is_err());
        assert!("sometimes".parse::<RetrainSchedule>().is_err());
        let now = Utc::now();
        assert_eq!(RetrainSchedule::Every(Duration::from_secs(5)).next_after(now), Some(now + chrono::Duration::seconds(5)));
        assert_eq!(RetrainSchedule::Off.next_after(now), None);
    }

    #[test]
    fn categories_must_not_clash_with_reasons() {
        let c = |name: &str| CategoryConfig { name: name.into(), description: None, hard_bounce: false };
        assert!(validate_categories(&[c("gmail-throttle"), c("needs-whitelisting")]).is_ok());
        assert!(validate_categories(&[c("userunknown")]).unwrap_err().contains("built-in"));
        assert!(validate_categories(&[c("two words")]).is_err());
        assert!(validate_categories(&[c("x"), c("x")]).unwrap_err().contains("twice"));
    }

    #[test]
    fn holdout_is_stratified_grouped_and_keeps_enough_of_a_category() {
        let mut all = Vec::new();
        const WORDS: &[&str] = &["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"];
        for w in WORDS {
            all.push(ex(&format!("mailbox {w} is full"), "mailboxfull"));
        }
        for w in &WORDS[..6] {
            all.push(ex(&format!("throttled by gmail, try {w}"), "gmail-throttle"));
        }
        // Texts that differ only in numbers are one group (numbers are masked).
        for i in 0..5 {
            all.push(ex(&format!("quota exceeded by {} bytes", 100_000 + 1234 * i), "systemfull"));
        }
        // Copies of one text stay on one side.
        all.push(ex("no such user here", "userunknown"));
        all.push(ex("no such user here", "userunknown"));
        let (train, held) = split_holdout(all.clone(), 7);
        assert_eq!(train.len() + held.len(), all.len());
        assert_eq!(held.iter().filter(|e| e.label == "mailboxfull").count(), 2);
        assert_eq!(held.iter().filter(|e| e.label == "gmail-throttle").count(), 1);
        assert_eq!(held.iter().filter(|e| e.label == "userunknown").count(), 0);
        assert_eq!(held.iter().filter(|e| e.label == "systemfull").count(), 0);
        let (train2, held2) = split_holdout(all, 7);
        let texts = |v: &[Example]| v.iter().map(|e| e.text.clone()).collect::<Vec<_>>();
        assert_eq!((texts(&train), texts(&held)), (texts(&train2), texts(&held2)), "fixed seed, same split");
    }

    #[test]
    fn damaged_blobs_are_refused() {
        assert!(matches!(unpack(3, b"garbage"), Err(LifecycleError::Corrupt { id: 3, .. })));
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&1u32.to_le_bytes());
        let sum = Sha256::digest(&blob);
        blob.extend_from_slice(&sum);
        let e = unpack(4, &blob).err().expect("refused").to_string();
        assert!(e.contains("corrupt model version 4") && e.contains("truncated"), "{e}");
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert!(unpack(4, &blob).err().expect("refused").to_string().contains("checksum"));
    }
}
