//! Training the classifier with candle: deterministic for a seed, minutes on two cores.
//!
//! The dense layers are candle `Var`s trained by AdamW through candle's autograd. The two embedding tables
//! are large and sparse (a batch touches a few thousand of ~40,000 rows), so each step gathers the touched
//! rows into a small candle `Var`, lets autograd compute their gradient, and applies a lazy (sparse) Adam
//! update to those rows only — the same arithmetic as dense Adam on the rows that have a gradient, without
//! touching the rest of the table. The learning rate of both falls linearly from `lr` to zero over the run
//! (as in fastText), so training ends settled rather than wherever the last batches pushed the weights.
//!
//! Augmentation (deterministic for the seed): every example is also seen with its status codes stripped from
//! the text and its status and reply code removed from the signals, so the model does not lean on codes a text
//! may lack, and every batch drops 10% of the text features at random (feature dropout). With
//! [`Augment::copies`] > 0, every epoch also sees fresh noisy copies of every example ([`augment_text`]):
//! phrases swapped for others of a training-only `THESAURUS` group, words dropped, letters swapped, dropped,
//! doubled or replaced, codes stripped from half of them — so a paraphrase or a typo it was never shown moves
//! the prediction less.
//!
//! The status prior's offsets (see [`PriorOffsets`]) are added to the logits in training as at inference.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::{Lowercase, Sequence, NFKC};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

use super::features::{normalise, strip_codes, words, Layout, Signals, MAX_TEXT_CHARS};
use super::memory::Memory;
use super::model::{Label, Model, ModelConfig, PriorOffsets, Weights, UNK_TOKEN};

/// One labelled training example.
#[derive(Debug, Clone)]
pub struct Example {
    /// The diagnostic text.
    pub text: String,
    /// Its structured signals.
    pub signals: Signals,
    /// The label (a reason or custom category name).
    pub label: String,
}

/// Hyper-parameters of a training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// RNG seed: the same seed and data give the same model.
    pub seed: u64,
    /// Passes over the (augmented) data.
    pub epochs: usize,
    /// Examples per step.
    pub batch: usize,
    /// Embedding width.
    pub dim: usize,
    /// Hidden layer width.
    pub hidden: usize,
    /// Hash buckets of the text table.
    pub buckets: u32,
    /// Rows of the signal table.
    pub signal_buckets: u32,
    /// Learning rate (Adam) at the first step.
    pub lr: f64,
    /// Whether the learning rate falls linearly to zero over the run (as fastText does), so the last steps
    /// settle instead of leaving the weights where the last noisy batches pushed them.
    pub lr_decay: bool,
    /// Words seen fewer times than this get no vocabulary row (their character grams still count).
    pub min_word_count: u64,
    /// Class weight = (count)^-power, normalised: 0 = plain, 0.5 = between, 1 = balanced (rare reasons
    /// count as much as common ones).
    pub class_weight_power: f32,
    /// Probability of dropping a text feature in a training batch.
    pub feature_dropout: f32,
    /// Label smoothing ε: the target puts 1-ε on the label and ε spread over all labels, which keeps the
    /// confidence of a bag-of-features model from saturating on texts it knows little about.
    pub label_smoothing: f32,
    /// Weight of the status prior fused at inference (stored in config.json).
    pub prior_weight: f32,
    /// Similarity from which the nearest-neighbour memory of the training texts decides (stored in
    /// config.json; 0 = the network always decides).
    pub memory_threshold: f32,
    /// Noisy copies of the examples seen in every epoch.
    pub augment: Augment,
}

/// The training-time text augmentation: how many noisy copies of every example an epoch adds, and how noisy
/// they are (see [`augment_text`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Noisy copies of every example per epoch, drawn afresh each epoch (0 = no augmentation).
    pub copies: usize,
    /// Probability of replacing a `THESAURUS` phrase found in the text by another member of its group.
    pub synonym: f32,
    /// Probability of one letter edit (swap with the next, drop, double, replace) in a word of four letters
    /// or more.
    pub typo: f32,
    /// Probability of dropping a word (a text keeps at least one).
    pub word_dropout: f32,
    /// Probability that a copy keeps its status and reply codes; otherwise they are stripped from its text and
    /// signals.
    pub keep_codes: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { copies: 2, synonym: 0.5, typo: 0.15, word_dropout: 0.1, keep_codes: 0.5 }
    }
}

/// Training-only paraphrase groups: phrases (lowercase) that real bounce texts use interchangeably for the same
/// fault. An augmented copy may replace a member it contains by another member of its group.
///
/// Written for training and kept apart from the evaluation's table (`perturb::PHRASES`): no group holds two
/// members of which one contains a phrase of that table and the other one of its alternatives (tested), so the
/// perturbed evaluation measures how the model carries wording it was never taught to equate.
const THESAURUS: &[&[&str]] = &[
    &["user unknown", "invalid recipient", "recipient unknown", "no such recipient", "invalid user", "no such account",
      "unknown local part", "bad destination mailbox address", "recipient invalid"],
    &["does not exist", "no longer exists", "is not valid", "is invalid", "is not a valid user", "is not recognized"],
    &["not found", "unavailable", "not listed", "unknown here"],
    &["mailbox", "mail account", "mail folder", "maildrop", "email account"],
    &["is full", "is over quota", "has run out of space", "is out of storage", "has exceeded its storage limit",
      "has reached its size limit", "is overfull"],
    &["quota exceeded", "over the quota", "quota full", "exceeds its quota", "quota limit reached"],
    &["disabled", "inactive", "locked", "frozen", "closed"],
    &["rejected", "not accepted", "turned away", "bounced"],
    &["blocked", "banned", "denylisted", "listed on a blocklist"],
    &["spam", "bulk mail", "spam-like content", "unwanted mail", "spammy"],
    &["virus", "infected attachment", "trojan", "worm", "virus-infected content"],
    &["timed out", "no response", "did not respond in time", "was too slow to respond"],
    &["expired", "gave up", "could not be delivered in time", "delivery time limit reached"],
    &["too large", "exceeds the size limit", "over the size limit", "bigger than allowed"],
    &["too many connections", "connection rate limit reached", "connection limit exceeded"],
    &["try again later", "retry in a while", "please resend later"],
    &["relay access denied", "unable to relay", "relay not permitted"],
    &["host not found", "domain not found", "no mx record", "unknown domain", "name does not resolve"],
    &["not allowed", "prohibited", "not authorized", "disallowed"],
];

/// Whether `s[at..at + len]` is a whole-word occurrence (no letter or digit right before or after it).
fn word_bounded(s: &str, at: usize, len: usize) -> bool {
    let before = s[..at].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
    let after = s[at + len..].chars().next().is_none_or(|c| !c.is_alphanumeric());
    before && after
}

/// Byte offset of the first whole-word occurrence of `phrase` in `s`.
fn find_phrase(s: &str, phrase: &str) -> Option<usize> {
    s.match_indices(phrase).map(|(at, _)| at).find(|&at| word_bounded(s, at, phrase.len()))
}

/// One random letter edit of `word` at a letter: swap it with the next letter, drop it, double it or replace
/// it by another letter a–z.
fn letter_edit(word: &str, rng: &mut StdRng) -> String {
    let mut chars: Vec<char> = word.chars().collect();
    let letters: Vec<usize> = (0..chars.len()).filter(|&i| chars[i].is_alphabetic()).collect();
    let Some(&i) = letters.choose(rng) else { return word.to_string() };
    match rng.gen_range(0..4) {
        0 if i + 1 < chars.len() && chars[i + 1].is_alphabetic() => chars.swap(i, i + 1),
        0 if i > 0 && chars[i - 1].is_alphabetic() => chars.swap(i - 1, i),
        1 => {
            chars.remove(i);
        }
        2 => chars.insert(i, chars[i]),
        _ => {
            let other = loop {
                let c = char::from(b'a' + rng.gen_range(0..26u8));
                if c != chars[i] {
                    break c;
                }
            };
            chars[i] = other;
        }
    }
    chars.into_iter().collect()
}

/// A noisy copy of a diagnostic text for training, deterministic for `rng`: lowercased (the features are
/// case-blind), each `THESAURUS` phrase it contains replaced with probability `aug.synonym` by another member
/// of its group, each word dropped with probability `aug.word_dropout` (one word stays), and each remaining word
/// of four letters or more given one letter edit with probability `aug.typo`.
pub fn augment_text(text: &str, aug: &Augment, rng: &mut StdRng) -> String {
    let mut s = text.to_lowercase();
    for group in THESAURUS {
        for (k, member) in group.iter().enumerate() {
            let Some(at) = find_phrase(&s, member) else { continue };
            if rng.r#gen::<f32>() < aug.synonym {
                let pick = rng.gen_range(0..group.len() - 1);
                let other = group[if pick >= k { pick + 1 } else { pick }];
                s.replace_range(at..at + member.len(), other);
                break;
            }
        }
    }
    let words: Vec<&str> = s.split_whitespace().collect();
    let keep = rng.gen_range(0..words.len().max(1));
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        if i != keep && rng.r#gen::<f32>() < aug.word_dropout {
            continue;
        }
        let letters = w.chars().filter(|c| c.is_alphabetic()).count();
        if letters >= 4 && rng.r#gen::<f32>() < aug.typo {
            out.push(letter_edit(w, rng));
        } else {
            out.push((*w).to_string());
        }
    }
    out.join(" ")
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 42,
            epochs: 20,
            batch: 32,
            dim: 48,
            hidden: 96,
            buckets: 1 << 15,
            signal_buckets: 1 << 10,
            lr: 0.01,
            lr_decay: true,
            min_word_count: 2,
            class_weight_power: 0.5,
            feature_dropout: 0.1,
            label_smoothing: 0.1,
            prior_weight: 0.5,
            memory_threshold: 0.0,
            augment: Augment::default(),
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// There is nothing to learn from.
    #[error("no training examples")]
    NoExamples,
    /// The learning rate is zero, negative or not a number.
    #[error("learning rate {0} must be a finite number above 0")]
    LearningRate(f64),
    /// An example names a label that is neither a built-in reason nor a declared category.
    #[error("example {index} has unknown label {label:?} (not a reason of the taxonomy nor a declared category)")]
    UnknownLabel {
        /// Index of the example.
        index: usize,
        /// Its label.
        label: String,
    },
    /// A custom category has too few examples to be learned.
    #[error("category {name:?} has {count} examples; at least {min} are needed to learn it")]
    TooFewExamples {
        /// The category.
        name: String,
        /// How many examples it has.
        count: usize,
        /// How many it needs.
        min: usize,
    },
    /// The tokenizer could not be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The trained parts do not fit together (a bug, reported rather than panicking).
    #[error("assembling the model: {0}")]
    Assemble(String),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Minimum examples of a custom category (built-in reasons are always in the label set).
pub const MIN_CATEGORY_EXAMPLES: usize = 5;

struct Prepared {
    text_rows: Vec<u32>,
    signal_rows: Vec<u32>,
    /// The status prior's offsets, added to the logits in training as they are at inference.
    prior: Option<PriorOffsets>,
    label: usize,
    /// An example as given (not an augmented copy): these go into the memory.
    original: bool,
}

/// Build the tokenizer: NFKC + lowercase, whitespace/punctuation pre-tokenizer, word-level vocabulary of the
/// (normalised) training texts.
pub fn build_tokenizer(texts: &[String], min_count: u64) -> Result<Tokenizer, TrainError> {
    let err = |e: tokenizers::Error| TrainError::Tokenizer(e.to_string());
    let model = WordLevel::builder().unk_token(UNK_TOKEN.to_string()).build().map_err(err)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(NormalizerWrapper::Sequence(Sequence::new(vec![
            NormalizerWrapper::NFKC(NFKC),
            NormalizerWrapper::Lowercase(Lowercase),
        ]))))
        .map_err(err)?;
    tokenizer.with_pre_tokenizer(Some(Whitespace));
    let mut trainer = TrainerWrapper::WordLevelTrainer(
        WordLevelTrainer::builder()
            .min_frequency(min_count)
            .vocab_size(50_000)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(UNK_TOKEN, true)])
            .build()
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?,
    );
    // Train on the words as [`words`] splits them, so the vocabulary holds exactly what inference looks up.
    let split: Vec<String> = texts.iter().map(|t| words(t).join(" ")).collect();
    tokenizer.train(&mut trainer, split.iter()).map_err(err)?;
    Ok(tokenizer)
}

/// The signals of an example's code-stripped copy: its status and reply code removed.
fn without_codes(signals: &Signals) -> Signals {
    Signals { status: None, reply_code: None, ..signals.clone() }
}

/// The label set: the built-in reasons (every one, so the output layer is stable) followed by custom
/// categories in the given order.
pub fn label_set(custom: &[Label]) -> Vec<Label> {
    let mut labels: Vec<Label> = super::REASONS
        .iter()
        .map(|r| Label { name: r.to_string(), hard: super::HARD_REASONS.contains(r) })
        .collect();
    for c in custom {
        if !labels.iter().any(|l| l.name == c.name) {
            labels.push(c.clone());
        }
    }
    labels
}

/// Train a model on `examples` with the given labels. Deterministic for a seed.
pub fn train(examples: &[Example], labels: Vec<Label>, cfg: &TrainConfig) -> Result<Model, TrainError> {
    if examples.is_empty() {
        return Err(TrainError::NoExamples);
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(TrainError::LearningRate(cfg.lr));
    }
    let index: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.name.as_str(), i)).collect();
    let mut counts = vec![0usize; labels.len()];
    for (i, ex) in examples.iter().enumerate() {
        let k = *index
            .get(ex.label.as_str())
            .ok_or_else(|| TrainError::UnknownLabel { index: i, label: ex.label.clone() })?;
        counts[k] += 1;
    }
    for (k, label) in labels.iter().enumerate() {
        let builtin = super::REASONS.contains(&label.name.as_str());
        if !builtin && counts[k] < MIN_CATEGORY_EXAMPLES {
            return Err(TrainError::TooFewExamples {
                name: label.name.clone(),
                count: counts[k],
                min: MIN_CATEGORY_EXAMPLES,
            });
        }
    }

    // Texts as the model sees them, with the augmented copies.
    let mut inputs: Vec<(String, Signals, usize)> = Vec::with_capacity(examples.len() * 2);
    let mut original = Vec::with_capacity(examples.len() * 2);
    for ex in examples {
        let k = index[ex.label.as_str()];
        inputs.push((normalise(&ex.text), ex.signals.clone(), k));
        original.push(true);
        let stripped = strip_codes(&ex.text);
        let bare = without_codes(&ex.signals);
        if stripped != ex.text || bare != ex.signals {
            inputs.push((normalise(&stripped), bare, k));
            original.push(false);
        }
    }
    let texts: Vec<String> = inputs.iter().map(|(t, _, _)| t.clone()).collect();
    let tokenizer = build_tokenizer(&texts, cfg.min_word_count)?;
    let vocab = tokenizer.get_vocab_size(false) as u32;
    let unk = tokenizer.token_to_id(UNK_TOKEN).unwrap_or(0);
    let layout = Layout { vocab, buckets: cfg.buckets, signal_buckets: cfg.signal_buckets };
    let prepare = |text: &str, signals: &Signals, label: usize, original: bool| {
        let ws = words(text);
        let ids: Vec<u32> = ws.iter().map(|w| tokenizer.token_to_id(w).unwrap_or(unk)).collect();
        let prior = signals.prior_classification();
        let mut signal_rows = Vec::with_capacity(12);
        signals.each_token(&prior.reason, |t| signal_rows.push(layout.signal_row(t)));
        Prepared {
            text_rows: layout.text_features(&ws, &ids, unk, false).rows,
            signal_rows,
            prior: PriorOffsets::of(&labels, cfg.prior_weight, &prior),
            label,
            original,
        }
    };
    let prepared: Vec<Prepared> = inputs
        .iter()
        .zip(&original)
        .map(|((text, signals, label), &original)| prepare(text, signals, *label, original))
        .collect();
    // The noisy copies of an epoch, from their own generator so that the rest of training draws the same
    // numbers with augmentation on or off.
    let mut augment_rng = StdRng::seed_from_u64(cfg.seed ^ 0xA06_3E47);
    let augmented = |rng: &mut StdRng| -> Vec<Prepared> {
        let mut out = Vec::with_capacity(examples.len() * cfg.augment.copies);
        for ex in examples {
            for _ in 0..cfg.augment.copies {
                let mut signals = ex.signals.clone();
                let mut text = augment_text(&ex.text, &cfg.augment, rng);
                if rng.r#gen::<f32>() >= cfg.augment.keep_codes {
                    text = strip_codes(&text);
                    signals = without_codes(&signals);
                }
                out.push(prepare(&normalise(&text), &signals, index[ex.label.as_str()], false));
            }
        }
        out
    };

    // Class weights over the examples actually present.
    let present = counts.iter().filter(|&&c| c > 0).count().max(1) as f32;
    let total: f32 = counts.iter().sum::<usize>() as f32;
    let class_weight: Vec<f32> = counts
        .iter()
        .map(|&c| if c == 0 { 0.0 } else { (total / (present * c as f32)).powf(cfg.class_weight_power) })
        .collect();

    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let d = cfg.dim;
    let rows = (vocab + cfg.buckets) as usize;
    let mut init = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-scale..scale)).collect() };
    let mut text_emb = SparseTable::new(init(rows * d, 0.1), d);
    let mut signal_emb = SparseTable::new(init(cfg.signal_buckets as usize * d, 0.1), d);
    let dev = Device::Cpu;
    let s1 = (6.0 / (2 * d + cfg.hidden) as f32).sqrt();
    let s2 = (6.0 / (cfg.hidden + labels.len()) as f32).sqrt();
    let w1 = Var::from_vec(init(cfg.hidden * 2 * d, s1), (cfg.hidden, 2 * d), &dev)?;
    let b1 = Var::from_vec(vec![0f32; cfg.hidden], cfg.hidden, &dev)?;
    let w2 = Var::from_vec(init(labels.len() * cfg.hidden, s2), (labels.len(), cfg.hidden), &dev)?;
    let b2 = Var::from_vec(vec![0f32; labels.len()], labels.len(), &dev)?;
    let params = ParamsAdamW { lr: cfg.lr, weight_decay: 1e-4, ..ParamsAdamW::default() };
    let mut opt = AdamW::new(vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()], params)?;

    let mut order: Vec<usize> = (0..prepared.len() + examples.len() * cfg.augment.copies).collect();
    let total_steps = (cfg.epochs * order.len().div_ceil(cfg.batch)) as f64;
    let mut step = 0u64;
    for _epoch in 0..cfg.epochs {
        let noisy = augmented(&mut augment_rng);
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch) {
            let lr = if cfg.lr_decay { cfg.lr * (1.0 - step as f64 / total_steps) } else { cfg.lr };
            opt.set_learning_rate(lr);
            step += 1;
            let mut text_bag = BatchBag::default();
            let mut signal_bag = BatchBag::default();
            let mut targets = Vec::with_capacity(batch.len());
            let mut offsets = vec![0f32; batch.len() * labels.len()];
            let mut weights = Vec::with_capacity(batch.len());
            for (b, &i) in batch.iter().enumerate() {
                let p = prepared.get(i).unwrap_or_else(|| &noisy[i - prepared.len()]);
                for &r in &p.text_rows {
                    if rng.r#gen::<f32>() >= cfg.feature_dropout {
                        text_bag.add(b, r);
                    }
                }
                for &r in &p.signal_rows {
                    signal_bag.add(b, r);
                }
                if let Some(prior) = &p.prior {
                    prior.add_to(&mut offsets[b * labels.len()..(b + 1) * labels.len()]);
                }
                targets.push(p.label as u32);
                weights.push(class_weight[p.label]);
            }
            let bsz = batch.len();
            let gt = Var::from_vec(text_emb.gather(&text_bag.rows), (text_bag.rows.len(), d), &dev)?;
            let gs = Var::from_vec(signal_emb.gather(&signal_bag.rows), (signal_bag.rows.len(), d), &dev)?;
            let at = text_bag.mean_matrix(bsz, &dev)?;
            let as_ = signal_bag.mean_matrix(bsz, &dev)?;
            let x = Tensor::cat(&[at.matmul(gt.as_tensor())?, as_.matmul(gs.as_tensor())?], 1)?;
            let h = x.matmul(&w1.as_tensor().t()?)?.broadcast_add(b1.as_tensor())?.relu()?;
            let logits = (h.matmul(&w2.as_tensor().t()?)?.broadcast_add(b2.as_tensor())?
                + Tensor::from_vec(offsets, (bsz, labels.len()), &dev)?)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let tgt = Tensor::from_vec(targets, bsz, &dev)?;
            let eps = f64::from(cfg.label_smoothing);
            let picked = ((logp.gather(&tgt.unsqueeze(1)?, 1)?.squeeze(1)? * (1.0 - eps))?
                + (logp.mean(D::Minus1)? * eps)?)?;
            let wsum: f32 = weights.iter().sum();
            let wt = Tensor::from_vec(weights, bsz, &dev)?;
            let loss = ((picked * wt)?.sum_all()? * (-1.0 / f64::from(wsum.max(1e-6))))?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            if let Some(g) = grads.get(gt.as_tensor()) {
                text_emb.adam(&text_bag.rows, &g.flatten_all()?.to_vec1::<f32>()?, lr, step);
            }
            if let Some(g) = grads.get(gs.as_tensor()) {
                signal_emb.adam(&signal_bag.rows, &g.flatten_all()?.to_vec1::<f32>()?, lr, step);
            }
        }
    }

    let config = ModelConfig {
        dim: d,
        hidden: cfg.hidden,
        buckets: cfg.buckets,
        signal_buckets: cfg.signal_buckets,
        max_text_chars: MAX_TEXT_CHARS,
        seed: cfg.seed,
        examples: examples.len(),
        trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        prior_weight: cfg.prior_weight,
        memory_threshold: cfg.memory_threshold,
    };
    let flat = |v: &Var| -> Result<Vec<f32>, candle_core::Error> {
        v.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    };
    let weights = Weights {
        text_emb: text_emb.values,
        signal_emb: signal_emb.values,
        w1: flat(&w1)?,
        b1: flat(&b1)?,
        w2: flat(&w2)?,
        b2: flat(&b2)?,
    };
    let memory = Memory::build(
        prepared.iter().filter(|p| p.original).map(|p| (p.text_rows.as_slice(), p.signal_rows.as_slice(), p.label)),
    );
    let mut model = Model::from_parts(tokenizer, labels, config, weights).map_err(TrainError::Assemble)?;
    model.set_memory(memory);
    Ok(model)
}

/// The distinct table rows a batch touches, and how often each example uses each.
#[derive(Default)]
struct BatchBag {
    rows: Vec<u32>,
    column: HashMap<u32, usize>,
    uses: Vec<(usize, usize)>,
}

impl BatchBag {
    fn add(&mut self, example: usize, row: u32) {
        let next = self.rows.len();
        let col = *self.column.entry(row).or_insert(next);
        if col == next {
            self.rows.push(row);
        }
        self.uses.push((example, col));
    }

    /// `(batch × rows)` matrix whose row b averages the rows example b uses (with multiplicity).
    fn mean_matrix(&self, batch: usize, dev: &Device) -> Result<Tensor, candle_core::Error> {
        let n = self.rows.len();
        let mut count = vec![0f32; batch];
        for &(b, _) in &self.uses {
            count[b] += 1.0;
        }
        let mut m = vec![0f32; batch * n];
        for &(b, col) in &self.uses {
            m[b * n + col] += 1.0 / count[b];
        }
        Tensor::from_vec(m, (batch, n), dev)
    }
}

/// An embedding table trained with lazy Adam: only rows with a gradient move.
struct SparseTable {
    values: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    dim: usize,
}

impl SparseTable {
    fn new(values: Vec<f32>, dim: usize) -> SparseTable {
        let n = values.len();
        SparseTable { values, m: vec![0.0; n], v: vec![0.0; n], dim }
    }

    fn gather(&self, rows: &[u32]) -> Vec<f32> {
        let d = self.dim;
        let mut out = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            out.extend_from_slice(&self.values[r as usize * d..(r as usize + 1) * d]);
        }
        out
    }

    /// Lazy Adam on the given distinct rows; `grad` holds one gradient row per entry of `rows`.
    fn adam(&mut self, rows: &[u32], grad: &[f32], lr: f64, step: u64) {
        let d = self.dim;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let t = step.min(i32::MAX as u64) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let lr = lr as f32;
        for (j, &r) in rows.iter().enumerate() {
            let g = &grad[j * d..(j + 1) * d];
            let base = r as usize * d;
            for (k, &gk) in g.iter().enumerate() {
                let i = base + k;
                self.m[i] = b1 * self.m[i] + (1.0 - b1) * gk;
                self.v[i] = b2 * self.v[i] + (1.0 - b2) * gk * gk;
                self.values[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Optimal-string-alignment distance (edits: insert, delete, replace, swap of two neighbours).
    fn osa_distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }

    #[test]
    fn letter_edits_are_single_edits_of_every_kind() {
        let mut rng = StdRng::seed_from_u64(1);
        let (mut longer, mut shorter, mut same_len) = (0, 0, 0);
        for _ in 0..400 {
            let e = letter_edit("mailbox", &mut rng);
            assert!(osa_distance("mailbox", &e) <= 1, "{e}");
            match e.chars().count() {
                8 => longer += 1,
                6 => shorter += 1,
                _ => same_len += 1,
            }
        }
        assert!(longer > 0 && shorter > 0 && same_len > 0, "{longer} {shorter} {same_len}");
        assert_eq!(letter_edit("550", &mut rng), "550");
    }

    #[test]
    fn augmentation_is_deterministic_for_a_seed_and_varies_between_seeds() {
        let text = "550 5.1.1 The email account that you tried to reach does not exist. Please check the address.";
        let aug = Augment::default();
        let run = |seed| augment_text(text, &aug, &mut StdRng::seed_from_u64(seed));
        assert_eq!(run(3), run(3));
        let distinct: std::collections::HashSet<String> = (0..20).map(run).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn augmentation_swaps_thesaurus_phrases_drops_words_and_makes_typos() {
        let mut rng = StdRng::seed_from_u64(5);
        let only_synonyms = Augment { synonym: 1.0, typo: 0.0, word_dropout: 0.0, ..Augment::default() };
        let group = THESAURUS.iter().find(|g| g.contains(&"user unknown")).expect("a user-unknown group");
        for _ in 0..20 {
            let out = augment_text("Recipient address rejected: User unknown in local table", &only_synonyms, &mut rng);
            assert!(!out.contains("user unknown"), "{out}");
            // (a member with "mailbox" may have had that word swapped in turn by the mailbox group)
            assert!(group.iter().any(|m| out.contains(m) || m.contains("mailbox")), "{out}");
        }
        // "unknown" inside "unknownx" is not a whole-word phrase
        assert_eq!(find_phrase("xuser unknown", "user unknown"), None);
        assert_eq!(find_phrase("a user unknown.", "user unknown"), Some(2));
        let drop_all = Augment { synonym: 0.0, typo: 0.0, word_dropout: 1.0, ..Augment::default() };
        let out = augment_text("one two three four", &drop_all, &mut rng);
        assert_eq!(out.split_whitespace().count(), 1, "{out}");
        let typos = Augment { synonym: 0.0, typo: 1.0, word_dropout: 0.0, ..Augment::default() };
        let out = augment_text("mailbox quota exceeded for the box", &typos, &mut rng);
        let edited = out.split(' ').zip("mailbox quota exceeded for the box".split(' ')).filter(|(a, b)| a != b).count();
        assert!(edited >= 3, "{out}");
        assert!(out.ends_with(" for the box"), "short words keep their letters: {out}");
    }

    #[test]
    fn the_training_thesaurus_never_pairs_a_phrase_with_its_evaluation_alternative() {
        for group in THESAURUS {
            for a in group.iter() {
                for b in group.iter().filter(|b| *b != a) {
                    for (phrase, alts) in super::super::perturb::PHRASES {
                        let phrase = phrase.to_lowercase();
                        for alt in alts.iter().map(|s| s.to_lowercase()) {
                            let taught = find_phrase(a, &phrase).is_some()
                                && find_phrase(b, &alt).is_some()
                                && find_phrase(b, &phrase).is_none();
                            assert!(!taught, "{a:?} ~ {b:?} would teach the evaluation's {phrase:?} -> {alt:?}");
                        }
                    }
                }
            }
        }
    }

    fn tiny_examples() -> Vec<Example> {
        let ex = |text: &str, label: &str| Example { text: text.into(), signals: Signals::default(), label: label.into() };
        vec![
            ex("550 5.1.1 user unknown", "userunknown"),
            ex("mailbox is full", "mailboxfull"),
            ex("no such user here", "userunknown"),
            ex("quota exceeded for this mailbox", "mailboxfull"),
        ]
    }

    fn tiny_config() -> TrainConfig {
        TrainConfig { epochs: 2, dim: 8, hidden: 8, buckets: 256, signal_buckets: 16, ..TrainConfig::default() }
    }

    fn probabilities_after_training(cfg: &TrainConfig) -> Vec<f32> {
        let model = train(&tiny_examples(), label_set(&[]), cfg).expect("trains");
        model.probabilities("the mailbox is over quota", &Signals::default())
    }

    #[test]
    fn training_with_augmentation_is_deterministic() {
        let cfg = tiny_config();
        assert_eq!(probabilities_after_training(&cfg), probabilities_after_training(&cfg));
        let plain = TrainConfig { augment: Augment { copies: 0, ..Augment::default() }, ..cfg.clone() };
        assert_ne!(probabilities_after_training(&cfg), probabilities_after_training(&plain), "the noisy copies change training");
    }

    #[test]
    fn the_learning_rate_decay_changes_training_deterministically() {
        let decayed = TrainConfig { lr_decay: true, ..tiny_config() };
        let constant = TrainConfig { lr_decay: false, ..tiny_config() };
        let p = probabilities_after_training(&decayed);
        assert_eq!(p, probabilities_after_training(&decayed));
        assert_ne!(p, probabilities_after_training(&constant));
        assert!(p.iter().all(|x| x.is_finite()));
        for lr in [0.0, -0.01, f64::NAN, f64::INFINITY] {
            let err = train(&tiny_examples(), label_set(&[]), &TrainConfig { lr, ..tiny_config() }).err();
            assert!(matches!(err, Some(TrainError::LearningRate(_))), "{lr}: {err:?}");
        }
    }
}
