//! Training the classifier with candle: deterministic for a seed, minutes on two cores.
//!
//! The dense layers are candle `Var`s trained by AdamW through candle's autograd. The two embedding tables
//! are large and sparse (a batch touches a few thousand of ~40,000 rows), so each step gathers the touched
//! rows into a small candle `Var`, lets autograd compute their gradient, and applies a lazy (sparse) Adam
//! update to those rows only — the same arithmetic as dense Adam on the rows that have a gradient, without
//! touching the rest of the table.
//!
//! Augmentation (deterministic): every example is also seen with its status codes stripped from the text and
//! its status and reply code removed from the signals, so the model does not lean on codes a text may lack,
//! and every batch drops 10% of the text features at random (feature dropout).
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
    /// Learning rate (Adam).
    pub lr: f64,
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
            min_word_count: 2,
            class_weight_power: 0.5,
            feature_dropout: 0.1,
            label_smoothing: 0.1,
            prior_weight: 0.5,
            memory_threshold: 0.0,
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// There is nothing to learn from.
    #[error("no training examples")]
    NoExamples,
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
        let mut bare = ex.signals.clone();
        bare.status = None;
        bare.reply_code = None;
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
    let mut prepared = Vec::with_capacity(inputs.len());
    for ((text, signals, label), &original) in inputs.iter().zip(&original) {
        let mut feats = Vec::new();
        let ws = words(text);
        let ids: Vec<u32> = ws.iter().map(|w| tokenizer.token_to_id(w).unwrap_or(unk)).collect();
        layout.text_features(&ws, &ids, unk, false, &mut feats);
        prepared.push(Prepared {
            text_rows: feats.into_iter().map(|f| f.row).collect(),
            signal_rows: signals.tokens().iter().map(|t| layout.signal_row(t)).collect(),
            prior: PriorOffsets::of(&labels, cfg.prior_weight, &signals.prior_classification()),
            label: *label,
            original,
        });
    }

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

    let mut order: Vec<usize> = (0..prepared.len()).collect();
    let mut step = 0u64;
    for _epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch) {
            step += 1;
            let mut text_bag = BatchBag::default();
            let mut signal_bag = BatchBag::default();
            let mut targets = Vec::with_capacity(batch.len());
            let mut offsets = vec![0f32; batch.len() * labels.len()];
            let mut weights = Vec::with_capacity(batch.len());
            for (b, &i) in batch.iter().enumerate() {
                let p = &prepared[i];
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
                text_emb.adam(&text_bag.rows, &g.flatten_all()?.to_vec1::<f32>()?, cfg.lr, step);
            }
            if let Some(g) = grads.get(gs.as_tensor()) {
                signal_emb.adam(&signal_bag.rows, &g.flatten_all()?.to_vec1::<f32>()?, cfg.lr, step);
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
