//! `rebound model train|eval|perturb`: rebuild the classifier in `models/` from the corpus it owns (plus the
//! shared bounce corpus when present), measure it on labelled corpora (also by grouped k-fold
//! cross-validation), and build the perturbed evaluation set.
//!
//! Corpora:
//! - JSONL text corpus: one object per line with `text`, `status`, `reply_code`, `reason` (and optionally
//!   `action`, `smtp_command`, `kind`, `group`, `source`), like `models/corpus/diagnostics.jsonl`;
//! - .eml corpus: a directory with `labels.jsonl` (`file`, `recipient_index`, `mta_module`,
//!   `expected_reason_consolidated_2025_12`, `label_from`, `content_norm_sha256`) beside the messages, like
//!   `../shared/corpus/bounces`. Only rows with `label_from = tests` are used unless `--all-labels`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use crate::classify::perturb::{perturb_text, rng_for};
use crate::classify::train::{label_set, train, Augment, Example, TrainConfig};
use crate::classify::{self, Model, Signals, DEFAULT_MIN_CONFIDENCE};
use crate::exit;
use crate::ingest::files::Messages;
use crate::parse::Kind;

/// Default place of the model artifacts.
pub const DEFAULT_MODEL_DIR: &str = "models";
/// Default training corpus owned by the repository.
pub const DEFAULT_CORPUS: &str = "models/corpus/diagnostics.jsonl";
/// Default location of the shared bounce corpus (read at train time, never copied into the repository).
pub const DEFAULT_SHARED: &str = "../shared/corpus/bounces";

/// Arguments of `rebound model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ModelCommand,
}

/// The `model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Rebuild models/ (weights, tokenizer, labels, config) from the corpus; deterministic for a seed.
    Train(TrainArgs),
    /// Per-reason precision/recall, accuracy, macro average and confusions on a labelled corpus.
    Eval(EvalArgs),
    /// Write the perturbed evaluation set (paraphrased, status codes stripped) of a JSONL corpus.
    Perturb(PerturbArgs),
    /// The model versions trained from the database's labels, with their figures (* = active).
    List(super::versions::ListArgs),
    /// Activate an earlier model version (default: the one promoted before the active one).
    Rollback(super::versions::RollbackArgs),
}

/// Options shared by training and cross-validation.
#[derive(Debug, Clone, Args)]
pub struct TrainOptions {
    /// The JSONL training corpus owned by the repository.
    #[arg(long, default_value = DEFAULT_CORPUS, value_name = "FILE")]
    pub train_corpus: PathBuf,
    /// The shared .eml corpus added to training when the directory exists.
    #[arg(long, default_value = DEFAULT_SHARED, value_name = "DIR")]
    pub shared: PathBuf,
    /// Do not train on the shared corpus even if it exists.
    #[arg(long)]
    pub no_shared: bool,
    /// Random seed (initialisation, shuffling, dropout, folds).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Passes over the data.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Embedding width.
    #[arg(long, default_value_t = TrainConfig::default().dim)]
    pub dim: usize,
    /// Learning rate at the first step.
    #[arg(long, default_value_t = TrainConfig::default().lr)]
    pub lr: f64,
    /// Whether the learning rate falls linearly to zero over the run (`--lr-decay false`: constant).
    #[arg(long, default_value_t = TrainConfig::default().lr_decay, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub lr_decay: bool,
    /// Class weight exponent: 0 plain, 1 balanced.
    #[arg(long, default_value_t = TrainConfig::default().class_weight_power)]
    pub class_weight_power: f32,
    /// Weight of the status prior fused at inference (0 = the network alone).
    #[arg(long, default_value_t = TrainConfig::default().prior_weight)]
    pub prior_weight: f32,
    /// Similarity from which the nearest-neighbour memory of the training texts decides (0 = never).
    #[arg(long, default_value_t = TrainConfig::default().memory_threshold)]
    pub memory_threshold: f32,
    /// Noisy copies of every example per epoch (training-time augmentation; 0 = off).
    #[arg(long, default_value_t = Augment::default().copies)]
    pub augment_copies: usize,
    /// Augmentation: probability of swapping a training-thesaurus phrase for another of its group.
    #[arg(long, default_value_t = Augment::default().synonym)]
    pub augment_synonym: f32,
    /// Augmentation: probability of a letter edit in a word of four letters or more.
    #[arg(long, default_value_t = Augment::default().typo)]
    pub augment_typo: f32,
    /// Augmentation: probability of dropping a word.
    #[arg(long, default_value_t = Augment::default().word_dropout)]
    pub augment_word_dropout: f32,
    /// Use .eml labels from every source, not only label_from = tests.
    #[arg(long)]
    pub all_labels: bool,
}

impl TrainOptions {
    /// The hyper-parameters these options give.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            seed: self.seed,
            epochs: self.epochs,
            dim: self.dim,
            lr: self.lr,
            lr_decay: self.lr_decay,
            class_weight_power: self.class_weight_power,
            prior_weight: self.prior_weight,
            memory_threshold: self.memory_threshold,
            augment: Augment {
                copies: self.augment_copies,
                synonym: self.augment_synonym,
                typo: self.augment_typo,
                word_dropout: self.augment_word_dropout,
                ..Augment::default()
            },
            ..TrainConfig::default()
        }
    }
}

/// Arguments of `rebound model train`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  nice -n 10 rebound model train --seed 42 --out models\n  \
rebound model train --from-db --config config/rebound.toml   corpus + labels, kept in the database")]
pub struct TrainArgs {
    /// Training options.
    #[command(flatten)]
    pub train: TrainOptions,
    /// Where to write the artifacts.
    #[arg(long, default_value = DEFAULT_MODEL_DIR, value_name = "DIR")]
    pub out: PathBuf,
    /// Also learn from the labels in the database (custom categories included); the model is stored as a
    /// new version in the database and promoted only if it is not worse than the one in use on held-back
    /// labels (models/ is left alone).
    #[arg(long, conflicts_with = "out")]
    pub from_db: bool,
    /// With --from-db: where the database is (and [classify] of the config).
    #[command(flatten)]
    pub db: super::DbOptions,
}

/// How k-fold groups are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// Copies of one message (content_norm_sha256) stay together.
    Content,
    /// Whole MTA formats (mta_module) are held out together.
    Mta,
}

/// Arguments of `rebound model eval`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  rebound model eval --corpus ../shared/corpus/bounces                   the model in models/
  rebound model eval --corpus ../shared/corpus/bounces --kfold 5          grouped 5-fold cross-validation
  rebound model eval --corpus ../shared/corpus/bounces --kfold 5 --group-by mta   leave-MTA-out
  rebound model eval --corpus models/corpus/perturbed.jsonl --kfold 5     robustness (paraphrased, no codes)")]
pub struct EvalArgs {
    /// The labelled corpus: a directory with labels.jsonl and .eml files, or a JSONL text corpus.
    #[arg(long, value_name = "PATH")]
    pub corpus: PathBuf,
    /// The model to evaluate (without --kfold).
    #[arg(long, default_value = DEFAULT_MODEL_DIR, value_name = "DIR")]
    pub model: PathBuf,
    /// Cross-validate instead: train K models, each without one fold of the corpus, and evaluate each on its
    /// fold. The fold's groups are also removed from the training corpus.
    #[arg(long, value_name = "K")]
    pub kfold: Option<usize>,
    /// How folds are grouped (.eml corpora).
    #[arg(long, value_enum, default_value_t = GroupBy::Content)]
    pub group_by: GroupBy,
    /// Below this confidence the verdict is onhold (counted as an error unless the label is onhold).
    #[arg(long, default_value_t = DEFAULT_MIN_CONFIDENCE)]
    pub min_confidence: f32,
    /// Print every misclassified item.
    #[arg(long)]
    pub errors: bool,
    /// Also write every item with its prediction as JSONL (origin, group, mta, label, predicted, confidence,
    /// text and signals) to this file, for error analysis.
    #[arg(long, value_name = "FILE")]
    pub dump_items: Option<PathBuf>,
    /// With --kfold, also report the accuracy each of these status-prior weights would give (same folds,
    /// same trained models), e.g. `--sweep-prior-weight 0,0.5,1,2`.
    #[arg(long, value_delimiter = ',', value_name = "W,...")]
    pub sweep_prior_weight: Vec<f32>,
    /// With --kfold, also report the accuracy each of these memory thresholds would give (same folds, same
    /// trained models), e.g. `--sweep-memory-threshold 0,0.8,0.9,0.95`.
    #[arg(long, value_delimiter = ',', value_name = "T,...")]
    pub sweep_memory_threshold: Vec<f32>,
    /// Training options for --kfold.
    #[command(flatten)]
    pub train: TrainOptions,
}

/// Arguments of `rebound model perturb`.
#[derive(Debug, Args)]
pub struct PerturbArgs {
    /// The JSONL corpus to perturb.
    #[arg(long = "in", default_value = DEFAULT_CORPUS, value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write the perturbed corpus.
    #[arg(long, default_value = "models/corpus/perturbed.jsonl", value_name = "FILE")]
    pub out: PathBuf,
    /// Seed of the perturbations.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Run a `model` subcommand; returns the exit code.
pub async fn run(args: ModelArgs) -> Result<i32, super::Failure> {
    use super::Failure;
    let joined = |r: Result<anyhow::Result<i32>, tokio::task::JoinError>| r.map_err(Failure::data)?.map_err(Failure::data);
    match args.command {
        ModelCommand::Train(a) if a.from_db => super::versions::train_from_db(a).await,
        ModelCommand::Train(a) => joined(tokio::task::spawn_blocking(move || train_cmd(&a)).await),
        ModelCommand::Eval(a) => joined(tokio::task::spawn_blocking(move || eval_cmd(&a)).await),
        ModelCommand::Perturb(a) => perturb_cmd(&a).map_err(Failure::data),
        ModelCommand::List(a) => super::versions::list(a).await,
        ModelCommand::Rollback(a) => super::versions::rollback(a).await,
    }
}

/// One labelled item of a corpus.
#[derive(Debug, Clone)]
pub struct Item {
    /// Diagnostic text.
    pub text: String,
    /// Structured signals.
    pub signals: Signals,
    /// Expected label.
    pub label: String,
    /// Group for k-fold (copies of one message, or one source row and its perturbations).
    pub group: String,
    /// MTA format (`mta_module`), or the JSONL row's source.
    pub mta: String,
    /// Where it comes from (file and recipient, or corpus line).
    pub origin: String,
}

#[derive(Debug, Deserialize)]
struct TextRow {
    text: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reply_code: Option<u16>,
    reason: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    smtp_command: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LabelRow {
    file: String,
    recipient_index: usize,
    #[serde(default)]
    mta_module: Option<String>,
    expected_reason_consolidated_2025_12: Option<String>,
    #[serde(default)]
    label_from: Option<String>,
    #[serde(default)]
    content_norm_sha256: Option<String>,
}

fn kind_of(name: &str) -> Option<Kind> {
    Some(match name {
        "dsn" => Kind::Dsn,
        "bounce" => Kind::Bounce,
        "arf" => Kind::Arf,
        "autoreply" => Kind::Autoreply,
        "unparsed" => Kind::Unparsed,
        _ => return None,
    })
}

/// Read a JSONL text corpus. Rows without a `group` are their own group, `corpus:LINE`.
pub fn load_text_corpus(path: &Path) -> anyhow::Result<Vec<Item>> {
    let data = fs::read_to_string(path).with_context(|| format!("cannot read corpus {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: TextRow = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a corpus row", path.display(), i + 1))?;
        items.push(Item {
            text: row.text,
            signals: Signals {
                kind: row.kind.as_deref().and_then(kind_of),
                status: row.status,
                reply_code: row.reply_code,
                action: row.action,
                smtp_command: row.smtp_command,
            },
            label: row.reason,
            group: row.group.unwrap_or_else(|| format!("corpus:{}", i + 1)),
            mta: row.source.unwrap_or_default(),
            origin: format!("{}:{}", path.display(), i + 1),
        });
    }
    Ok(items)
}

/// Largest message of a labelled .eml corpus that is read (larger ones are an error naming the file).
const MAX_CORPUS_MESSAGE: usize = 64 * 1024 * 1024;

/// Read an .eml corpus with its labels.jsonl: every labelled recipient is parsed out of its message.
pub fn load_eml_corpus(dir: &Path, all_labels: bool) -> anyhow::Result<Vec<Item>> {
    let labels_path = dir.join("labels.jsonl");
    let data = fs::read_to_string(&labels_path)
        .with_context(|| format!("cannot read {}", labels_path.display()))?;
    // Every recipient of a file, in order: an mbox file's messages one after the other, as the labels count
    // them (`recipient_index` runs across the whole file).
    let mut parsed_cache: HashMap<String, Vec<(Kind, crate::parse::Recipient)>> = HashMap::new();
    let mut items = Vec::new();
    for (i, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: LabelRow = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a label row", labels_path.display(), i + 1))?;
        if !all_labels && row.label_from.as_deref() != Some("tests") {
            continue;
        }
        let Some(label) = row.expected_reason_consolidated_2025_12 else { continue };
        if !parsed_cache.contains_key(&row.file) {
            let path = dir.join(&row.file);
            let mut recipients = Vec::new();
            for message in Messages::new(std::slice::from_ref(&path), MAX_CORPUS_MESSAGE) {
                let message = message.with_context(|| format!("cannot read {}", path.display()))?;
                let parsed = crate::parse::parse(&message.bytes);
                recipients.extend(parsed.recipients.into_iter().map(|r| (parsed.kind, r)));
            }
            parsed_cache.insert(row.file.clone(), recipients);
        }
        let (kind, recipient) = row
            .recipient_index
            .checked_sub(1)
            .and_then(|k| parsed_cache[&row.file].get(k))
            .cloned()
            .unwrap_or((Kind::Unparsed, crate::parse::Recipient::default()));
        items.push(Item {
            text: recipient.diagnostic.clone().unwrap_or_default(),
            signals: Signals::of_recipient(kind, &recipient),
            label,
            group: row.content_norm_sha256.unwrap_or_else(|| row.file.clone()),
            mta: row.mta_module.unwrap_or_default(),
            origin: format!("{}#{}", row.file, row.recipient_index),
        });
    }
    Ok(items)
}

/// Read a corpus of either form.
pub fn load_corpus(path: &Path, all_labels: bool) -> anyhow::Result<Vec<Item>> {
    if path.is_dir() {
        load_eml_corpus(path, all_labels)
    } else {
        load_text_corpus(path)
    }
}

fn examples(items: &[&Item]) -> Vec<Example> {
    items
        .iter()
        .map(|it| Example { text: it.text.clone(), signals: it.signals.clone(), label: it.label.clone() })
        .collect()
}

/// The training items: the repository corpus, plus the shared corpus when it exists and is wanted.
fn training_items(opts: &TrainOptions) -> anyhow::Result<(Vec<Item>, Vec<Item>)> {
    let own = load_text_corpus(&opts.train_corpus)?;
    let shared = if !opts.no_shared && opts.shared.join("labels.jsonl").is_file() {
        load_eml_corpus(&opts.shared, opts.all_labels)?
    } else {
        Vec::new()
    };
    Ok((own, shared))
}

fn train_cmd(args: &TrainArgs) -> anyhow::Result<i32> {
    let (own, shared) = training_items(&args.train)?;
    if shared.is_empty() {
        eprintln!("rebound: training on {} only (no shared corpus at {})", args.train.train_corpus.display(), args.train.shared.display());
    }
    let all: Vec<&Item> = own.iter().chain(shared.iter()).collect();
    let started = Instant::now();
    let model = train(&examples(&all), label_set(&[]), &args.train.config())?;
    model.save(&args.out)?;
    eprintln!(
        "rebound: trained on {} examples ({} own, {} shared) in {:.1}s; wrote {}",
        all.len(),
        own.len(),
        shared.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(exit::OK)
}

fn perturb_cmd(args: &PerturbArgs) -> anyhow::Result<i32> {
    let items = load_text_corpus(&args.input)?;
    let mut out = std::io::BufWriter::new(
        fs::File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?,
    );
    for (i, it) in items.iter().enumerate() {
        let text = perturb_text(&it.text, &mut rng_for(args.seed, i));
        let row = serde_json::json!({
            "text": text,
            "status": null,
            "reply_code": it.signals.reply_code,
            "smtp_command": it.signals.smtp_command,
            "reason": it.label,
            "group": it.group,
            "source": format!("perturbed (seed {}) from {}", args.seed, it.origin),
        });
        writeln!(out, "{row}")?;
    }
    out.flush()?;
    eprintln!("rebound: wrote {} perturbed rows to {}", items.len(), args.out.display());
    Ok(exit::OK)
}

/// Predictions of one evaluation: (item index, predicted label, confidence).
type Predictions = Vec<(usize, String, f32)>;

fn predict(model: &Model, items: &[Item], idx: &[usize], min_confidence: f32) -> Predictions {
    idx.iter()
        .map(|&i| {
            let it = &items[i];
            let c = classify::classify_signals(&it.text, &it.signals, Some((model, min_confidence)));
            (i, c.reason, c.confidence)
        })
        .collect()
}

fn eval_cmd(args: &EvalArgs) -> anyhow::Result<i32> {
    let items = load_corpus(&args.corpus, args.train.all_labels)?;
    if items.is_empty() {
        bail!("no labelled items in {}", args.corpus.display());
    }
    let started = Instant::now();
    let preds = match args.kfold {
        None => {
            let model = Model::load(&args.model)?;
            let idx: Vec<usize> = (0..items.len()).collect();
            predict(&model, &items, &idx, args.min_confidence)
        }
        Some(k) if k >= 2 => cross_validate(args, &items, k)?,
        Some(_) => bail!("--kfold needs at least 2 folds"),
    };
    report(&items, &preds, args.errors);
    if let Some(path) = &args.dump_items {
        dump_items(path, &items, &preds)?;
    }
    eprintln!("rebound: evaluated {} items in {:.1}s", items.len(), started.elapsed().as_secs_f64());
    Ok(exit::OK)
}

fn cross_validate(args: &EvalArgs, items: &[Item], k: usize) -> anyhow::Result<Predictions> {
    let is_eml = args.corpus.is_dir();
    let key = |it: &Item| match args.group_by {
        GroupBy::Mta if is_eml => it.mta.clone(),
        _ => it.group.clone(),
    };
    let mut groups: Vec<String> = items.iter().map(key).collect::<BTreeSet<_>>().into_iter().collect();
    groups.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.train.seed));
    let fold_of: HashMap<&str, usize> = groups.iter().enumerate().map(|(i, g)| (g.as_str(), i % k)).collect();
    let own = load_text_corpus(&args.train.train_corpus)?;
    let shared = if is_eml || args.train.no_shared || !args.train.shared.join("labels.jsonl").is_file() {
        Vec::new()
    } else {
        load_eml_corpus(&args.train.shared, args.train.all_labels)?
    };
    let mut preds = Vec::new();
    // (what, value, correct, total) of every swept setting
    let mut sweep: Vec<(&str, f32, usize, usize)> = args
        .sweep_prior_weight
        .iter()
        .map(|&w| ("prior weight", w, 0, 0))
        .chain(args.sweep_memory_threshold.iter().map(|&t| ("memory threshold", t, 0, 0)))
        .collect();
    for fold in 0..k {
        let test: Vec<usize> = (0..items.len()).filter(|&i| fold_of[key(&items[i]).as_str()] == fold).collect();
        let test_groups: BTreeSet<&str> = test.iter().map(|&i| items[i].group.as_str()).collect();
        // The repository corpus without the fold's groups (a perturbed corpus's groups name its source rows,
        // so neither a text nor its paraphrase is trained on when it is tested).
        let mut train_items: Vec<&Item> = own.iter().filter(|it| !test_groups.contains(it.group.as_str())).collect();
        if is_eml {
            train_items.extend((0..items.len()).filter(|&i| fold_of[key(&items[i]).as_str()] != fold).map(|i| &items[i]));
        }
        train_items.extend(shared.iter());
        let started = Instant::now();
        let mut model = train(&examples(&train_items), label_set(&[]), &args.train.config())?;
        for (what, value, ok, n) in &mut sweep {
            let is_prior = *what == "prior weight";
            model.set_prior_weight(if is_prior { *value } else { args.train.prior_weight });
            model.set_memory_threshold(if is_prior { args.train.memory_threshold } else { *value });
            let p = predict(&model, items, &test, args.min_confidence);
            *ok += p.iter().filter(|(i, l, _)| *l == items[*i].label).count();
            *n += p.len();
        }
        model.set_prior_weight(args.train.prior_weight);
        model.set_memory_threshold(args.train.memory_threshold);
        let p = predict(&model, items, &test, args.min_confidence);
        let correct = p.iter().filter(|(i, l, _)| *l == items[*i].label).count();
        eprintln!(
            "fold {fold}: trained on {} in {:.1}s, {}/{} correct",
            train_items.len(),
            started.elapsed().as_secs_f64(),
            correct,
            p.len()
        );
        preds.extend(p);
    }
    for (what, value, ok, n) in sweep {
        eprintln!("{what} {value}: accuracy {:.4} ({ok}/{n})", ok as f64 / n.max(1) as f64);
    }
    preds.sort_by_key(|p| p.0);
    Ok(preds)
}

/// Write every predicted item as one JSON object a line (see [`EvalArgs::dump_items`]).
fn dump_items(path: &Path, items: &[Item], preds: &Predictions) -> anyhow::Result<()> {
    let mut out =
        std::io::BufWriter::new(fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?);
    for (i, label, confidence) in preds {
        let it = &items[*i];
        let row = serde_json::json!({
            "origin": it.origin,
            "group": it.group,
            "mta": it.mta,
            "label": it.label,
            "predicted": label,
            "confidence": confidence,
            "text": it.text,
            "status": it.signals.status,
            "reply_code": it.signals.reply_code,
            "action": it.signals.action,
            "smtp_command": it.signals.smtp_command,
            "kind": it.signals.kind.map(Kind::as_str),
        });
        writeln!(out, "{row}")?;
    }
    out.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Print per-label precision/recall/F1, accuracy, macro averages, coverage by confidence and confusions.
fn report(items: &[Item], preds: &Predictions, list_errors: bool) {
    let mut tp: BTreeMap<&str, usize> = BTreeMap::new();
    let mut gold: BTreeMap<&str, usize> = BTreeMap::new();
    let mut predicted: BTreeMap<&str, usize> = BTreeMap::new();
    let mut confusion: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut correct = 0usize;
    for (i, label, _) in preds {
        let g = items[*i].label.as_str();
        *gold.entry(g).or_default() += 1;
        *predicted.entry(label.as_str()).or_default() += 1;
        if label == g {
            correct += 1;
            *tp.entry(g).or_default() += 1;
        } else {
            *confusion.entry((g, label.as_str())).or_default() += 1;
        }
    }
    println!("{:<16} {:>6} {:>9} {:>7} {:>6}", "reason", "n", "precision", "recall", "f1");
    let (mut sp, mut sr, mut sf) = (0.0, 0.0, 0.0);
    for (&g, &n) in &gold {
        let t = *tp.get(g).unwrap_or(&0) as f64;
        let p = predicted.get(g).map_or(0.0, |&m| t / m as f64);
        let r = t / n as f64;
        let f = if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 };
        sp += p;
        sr += r;
        sf += f;
        println!("{g:<16} {n:>6} {p:>9.3} {r:>7.3} {f:>6.3}");
    }
    let c = gold.len() as f64;
    let n = preds.len().max(1);
    println!("accuracy {:.4} ({correct}/{})", correct as f64 / n as f64, preds.len());
    println!("macro precision {:.4} recall {:.4} f1 {:.4} over {} reasons", sp / c, sr / c, sf / c, gold.len());
    for threshold in [0.5f32, 0.7, 0.9] {
        let covered: Vec<_> = preds.iter().filter(|p| p.2 >= threshold && p.1 != "onhold").collect();
        let ok = covered.iter().filter(|p| p.1 == items[p.0].label).count();
        println!(
            "confidence >= {threshold}: coverage {:.3}, accuracy {:.3}",
            covered.len() as f64 / n as f64,
            ok as f64 / covered.len().max(1) as f64
        );
    }
    let mut conf: Vec<_> = confusion.into_iter().collect();
    conf.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("confusions (expected -> predicted: count):");
    for ((g, p), count) in conf.iter().take(25) {
        println!("  {g} -> {p}: {count}");
    }
    if list_errors {
        for (i, label, confidence) in preds {
            let it = &items[*i];
            if *label != it.label {
                let text: String = it.text.chars().take(160).collect();
                println!(
                    "ERR {} expected {} got {} ({confidence:.2}) status={:?} reply={:?} cmd={:?} kind={:?} text={text:?}",
                    it.origin, it.label, label, it.signals.status, it.signals.reply_code, it.signals.smtp_command, it.signals.kind
                );
            }
        }
    }
}
