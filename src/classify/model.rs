//! The trained classifier at run time: loads `models/` once (tokenizer.json, model.safetensors, labels.json,
//! config.json) and classifies a diagnostic text plus its signals in plain Rust (a sparse embedding-bag
//! lookup and two small dense layers: a few microseconds, no allocation-heavy tensor ops on the hot path).
//!
//! Architecture (trained by [`super::train`] with candle):
//! `x = [mean(E_text[text features]) ; mean(E_sig[signal tokens])]`, `h = relu(W1 x + b1)`,
//! `p = softmax(W2 h + b2)` over the labels of labels.json.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::features::{each_word, normalise, words, Layout, Signals, TextFeatures, WordFeatures};
use super::memory::Memory;
use super::{Classification, DecidedBy};

/// File names inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer (tokenizers crate JSON).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The label set, in output order.
pub const LABELS_FILE: &str = "labels.json";
/// Sizes and training facts.
pub const CONFIG_FILE: &str = "config.json";
/// The unknown-word token of the tokenizer's vocabulary.
pub const UNK_TOKEN: &str = "[UNK]";

/// Why a model could not be loaded or saved; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file does not exist or cannot be read.
    #[error("cannot read model file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A model file exists but its content is not what it must be.
    #[error("corrupt model file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A model file cannot be written.
    #[error("cannot write model file {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// One output label: a built-in reason or a user's custom category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Reason or category name.
    pub name: String,
    /// A permanent failure with this label is a hard bounce.
    pub hard: bool,
}

/// The status prior as offsets to a model's logits: `β·log q`, where q puts the prior's confidence on the
/// reason the status prior ([`super::status`]) names and spreads the rest evenly over the other labels.
/// Training adds the same offsets as inference, so the network learns what the prior gets wrong (a 5.1.1
/// after DATA is a content filter's answer) instead of being outvoted by it afterwards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorOffsets {
    /// Index of the label the prior names.
    pub label: usize,
    /// Offset of that label.
    pub on: f32,
    /// Offset of every other label.
    pub off: f32,
}

impl PriorOffsets {
    /// The offsets for what the status prior says of an input (`signals.prior_classification()`), with
    /// weight `beta`; `None` when β is 0 or the prior does not decide.
    pub fn of(labels: &[Label], beta: f32, prior: &Classification) -> Option<PriorOffsets> {
        if beta == 0.0 || prior.reason == "onhold" || prior.confidence <= 0.0 {
            return None;
        }
        let label = labels.iter().position(|l| l.name == prior.reason)?;
        let c = prior.confidence.clamp(1e-3, 1.0 - 1e-3);
        let rest = ((1.0 - c) / (labels.len().max(2) - 1) as f32).ln();
        Some(PriorOffsets { label, on: beta * c.ln(), off: beta * rest })
    }

    /// Add the offsets to one input's logits.
    pub fn add_to(&self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            *l += if i == self.label { self.on } else { self.off };
        }
    }
}

/// Sizes of the network and facts about its training (config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Embedding width.
    pub dim: usize,
    /// Hidden layer width.
    pub hidden: usize,
    /// Hash buckets of the text table (after the vocabulary rows).
    pub buckets: u32,
    /// Rows of the signal table.
    pub signal_buckets: u32,
    /// Input cut in characters (documentation; the code uses [`super::features::MAX_TEXT_CHARS`]).
    pub max_text_chars: usize,
    /// Training seed.
    pub seed: u64,
    /// Number of training examples (before augmentation).
    pub examples: usize,
    /// When it was trained (RFC 3339).
    pub trained_at: String,
    /// Weight β of the status prior fused at inference: `logits + β·log q`, where q puts the prior's
    /// confidence on the reason the status prior ([`super::status`]) names and spreads the rest evenly.
    /// 0 = the network alone (it still sees the prior's verdict as a signal token).
    #[serde(default)]
    pub prior_weight: f32,
    /// Similarity from which the nearest-neighbour memory ([`super::memory`]) decides instead of the network
    /// (0 = never; models without a memory ignore it).
    #[serde(default)]
    pub memory_threshold: f32,
}

/// A loaded model.
pub struct Model {
    /// This model among those of the process (the key of the per-thread word cache, see [`WordCache`]).
    id: u64,
    tokenizer: Tokenizer,
    unk: u32,
    layout: Layout,
    labels: Vec<Label>,
    config: ModelConfig,
    text_emb: Vec<f32>,
    signal_emb: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    /// `w1` and `w2` in panels, the layout the dense layers are computed in (see [`panels`]).
    w1p: Vec<f32>,
    w2p: Vec<f32>,
    memory: Memory,
}

/// The weights of a model as flat row-major f32 arrays (what training produces).
pub struct Weights {
    /// Text embedding table, rows = vocabulary + buckets.
    pub text_emb: Vec<f32>,
    /// Signal embedding table.
    pub signal_emb: Vec<f32>,
    /// First layer, `hidden × 2·dim`.
    pub w1: Vec<f32>,
    /// First layer bias.
    pub b1: Vec<f32>,
    /// Output layer, `labels × hidden`.
    pub w2: Vec<f32>,
    /// Output layer bias.
    pub b2: Vec<f32>,
}

/// Features and signal rows of one input, ready for the network.
pub struct Encoded {
    /// Text features (with their names when encoded with names).
    pub text: TextFeatures,
    /// Rows of the signal tokens in the signal table.
    pub signal_rows: Vec<u32>,
    /// The signal tokens, one per row, when encoded with names; else empty.
    pub signal_names: Vec<String>,
}

/// What weighed most in one verdict (for `classify --explain`).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The verdict.
    pub classification: Classification,
    /// The top text features (word, bigram or character gram) with their weight: how much the winning
    /// label's logit drops when the feature is removed.
    pub features: Vec<(String, f32)>,
    /// The signal tokens with their weight, measured the same way.
    pub signals: Vec<(String, f32)>,
    /// The three most likely labels and their probabilities.
    pub top: Vec<(String, f32)>,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    fs::read(path).map_err(|source| ModelError::Read { path: path.to_path_buf(), source })
}

/// Little-endian f16 values → f32 (exact; converted with the CPU's F16C instructions when it has them).
fn f16_to_f32(bytes: &[u8]) -> Vec<f32> {
    use half::f16;
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    // Written into place rather than collected from the chunk iterator, so that the compiler turns the loop into
    // vector moves (the collected form costs ~8 instructions a value: 12 M for the text table, a third of a
    // model load).
    let mut bits = vec![0u16; bytes.len() / 2];
    for (bit, b) in bits.iter_mut().zip(bytes.chunks_exact(2)) {
        *bit = u16::from_le_bytes([b[0], b[1]]);
    }
    let mut out = vec![0f32; bits.len()];
    bits.reinterpret_cast::<f16>().convert_to_f32_slice(&mut out);
    out
}

/// Whether every little-endian f16 value in `bytes` is finite (its five exponent bits, in the high byte, are
/// not all set; f16 → f32 keeps finiteness, so this is the check of the converted weights). Folded without an
/// early exit so that the loop is vectorised: the weights are checked at every model load.
fn all_finite_f16(bytes: &[u8]) -> bool {
    bytes.chunks_exact(2).fold(true, |finite, b| finite & (b[1] & 0x7c != 0x7c))
}

/// Round weights through f16 (the stored precision), so the model in memory equals the one on disk.
fn round_f16(v: Vec<f32>) -> Result<Vec<f32>, String> {
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F16))
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())
}

impl Model {
    /// Assemble a model from trained parts; weights are rounded to f16 so that the model in memory is the
    /// one [`Model::save`] writes.
    pub fn from_parts(
        tokenizer: Tokenizer,
        labels: Vec<Label>,
        config: ModelConfig,
        w: Weights,
    ) -> Result<Model, String> {
        let w = Weights {
            text_emb: round_f16(w.text_emb)?,
            signal_emb: round_f16(w.signal_emb)?,
            w1: round_f16(w.w1)?,
            b1: round_f16(w.b1)?,
            w2: round_f16(w.w2)?,
            b2: round_f16(w.b2)?,
        };
        Model::assemble(tokenizer, labels, config, w)
    }

    /// Assemble a model from weights that are f16 values already (rounded, or read from f16 storage).
    fn assemble(tokenizer: Tokenizer, labels: Vec<Label>, config: ModelConfig, w: Weights) -> Result<Model, String> {
        let vocab = tokenizer.get_vocab_size(false) as u32;
        let unk = tokenizer.token_to_id(UNK_TOKEN).ok_or("the tokenizer has no [UNK] token")?;
        let layout = Layout { vocab, buckets: config.buckets, signal_buckets: config.signal_buckets };
        let (d, h, c) = (config.dim, config.hidden, labels.len());
        let rows = (vocab + config.buckets) as usize;
        let checks = [
            ("text_emb", w.text_emb.len(), rows * d),
            ("signal_emb", w.signal_emb.len(), config.signal_buckets as usize * d),
            ("w1", w.w1.len(), h * 2 * d),
            ("b1", w.b1.len(), h),
            ("w2", w.w2.len(), c * h),
            ("b2", w.b2.len(), c),
        ];
        for (name, got, want) in checks {
            if got != want {
                return Err(format!("tensor {name} has {got} values, expected {want}"));
            }
        }
        static IDS: AtomicU64 = AtomicU64::new(0);
        Ok(Model {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            tokenizer,
            unk,
            layout,
            labels,
            config,
            text_emb: w.text_emb,
            signal_emb: w.signal_emb,
            w1p: panels(&w.w1, h, 2 * d),
            w2p: panels(&w.w2, c, h),
            w1: w.w1,
            b1: w.b1,
            w2: w.w2,
            b2: w.b2,
            memory: Memory::default(),
        })
    }

    /// Load a model directory. Every error names the missing or corrupt file.
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        let labels_path = dir.join(LABELS_FILE);
        let labels: Vec<Label> = serde_json::from_slice(&read(&labels_path)?)
            .map_err(|e| corrupt(&labels_path, e.to_string()))?;
        if labels.is_empty() {
            return Err(corrupt(&labels_path, "no labels"));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config: ModelConfig = serde_json::from_slice(&read(&config_path)?)
            .map_err(|e| corrupt(&config_path, e.to_string()))?;
        let tok_path = dir.join(TOKENIZER_FILE);
        let tokenizer = Tokenizer::from_bytes(read(&tok_path)?).map_err(|e| corrupt(&tok_path, e.to_string()))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let bytes = read(&weights_path)?;
        // The tensors are read in place from the file's bytes (no intermediate tensors): f16 → f32 is exact,
        // so the weights are those that `from_parts` rounds to, without rounding them again.
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&weights_path, e.to_string()))?;
        let view = |name: &str, dtype: Dtype| -> Result<&[u8], ModelError> {
            let t = tensors.tensor(name).map_err(|_| corrupt(&weights_path, format!("tensor {name} is missing")))?;
            if t.dtype() != dtype {
                return Err(corrupt(&weights_path, format!("tensor {name} is {:?}, expected {dtype:?}", t.dtype())));
            }
            Ok(t.data())
        };
        let get = |name: &str| view(name, Dtype::F16).map(f16_to_f32);
        let weights = Weights {
            text_emb: get("text_emb")?,
            signal_emb: get("signal_emb")?,
            w1: get("w1")?,
            b1: get("b1")?,
            w2: get("w2")?,
            b2: get("b2")?,
        };
        for name in ["text_emb", "signal_emb", "w1", "b1", "w2", "b2"] {
            if !all_finite_f16(view(name, Dtype::F16)?) {
                return Err(corrupt(&weights_path, "non-finite weights"));
            }
        }
        let mut model = Model::assemble(tokenizer, labels, config, weights).map_err(|e| corrupt(&weights_path, e))?;
        if tensors.names().contains(&MEMORY_TENSORS[0]) {
            let get_u32 = |name: &str| -> Result<Vec<u32>, ModelError> {
                let data = view(name, Dtype::U32)?;
                // Written into place, like the f16 values in `f16_to_f32`, so that it compiles to vector moves.
                let mut values = vec![0u32; data.len() / 4];
                for (v, b) in values.iter_mut().zip(data.chunks_exact(4)) {
                    *v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                Ok(values)
            };
            let [rows, offsets, labels] = MEMORY_TENSORS.map(get_u32);
            let memory = Memory::from_raw(rows?, offsets?, labels?).map_err(|e| corrupt(&weights_path, e))?;
            if memory.raw().2.iter().any(|&l| l as usize >= model.labels.len()) {
                return Err(corrupt(&weights_path, "memory names a label the model does not have"));
            }
            model.memory = memory;
        }
        Ok(model)
    }

    /// Write the model to a directory: weights as f16 safetensors, tokenizer, labels, config.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let write_err = |path: &Path, e: &dyn std::fmt::Display| ModelError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        fs::create_dir_all(dir).map_err(|e| write_err(dir, &e))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let (d, h, c) = (self.config.dim, self.config.hidden, self.labels.len());
        let rows = (self.layout.vocab + self.layout.buckets) as usize;
        let mut map = std::collections::HashMap::new();
        let parts: [(&str, &Vec<f32>, Vec<usize>); 6] = [
            ("text_emb", &self.text_emb, vec![rows, d]),
            ("signal_emb", &self.signal_emb, vec![self.layout.signal_buckets as usize, d]),
            ("w1", &self.w1, vec![h, 2 * d]),
            ("b1", &self.b1, vec![h]),
            ("w2", &self.w2, vec![c, h]),
            ("b2", &self.b2, vec![c]),
        ];
        for (name, values, shape) in parts {
            let t = Tensor::from_slice(values.as_slice(), shape, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F16))
                .map_err(|e| write_err(&weights_path, &e))?;
            map.insert(name.to_string(), t);
        }
        if !self.memory.is_empty() {
            let (rows, offsets, labels) = self.memory.raw();
            for (name, values) in MEMORY_TENSORS.iter().zip([rows, offsets, labels]) {
                let t = Tensor::from_slice(values, values.len(), &Device::Cpu).map_err(|e| write_err(&weights_path, &e))?;
                map.insert(name.to_string(), t);
            }
        }
        candle_core::safetensors::save(&map, &weights_path).map_err(|e| write_err(&weights_path, &e))?;
        let tok_path = dir.join(TOKENIZER_FILE);
        self.tokenizer.save(&tok_path, false).map_err(|e| write_err(&tok_path, &e))?;
        let labels_path = dir.join(LABELS_FILE);
        let json = serde_json::to_vec_pretty(&self.labels).map_err(|e| write_err(&labels_path, &e))?;
        fs::write(&labels_path, json).map_err(|e| write_err(&labels_path, &e))?;
        let config_path = dir.join(CONFIG_FILE);
        let json = serde_json::to_vec_pretty(&self.config).map_err(|e| write_err(&config_path, &e))?;
        fs::write(&config_path, json).map_err(|e| write_err(&config_path, &e))?;
        Ok(())
    }

    /// The labels in output order.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Sizes and training facts.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Normalise, tokenise and featurise one input. `names` keeps readable feature names (for explain).
    pub fn encode(&self, text: &str, signals: &Signals, names: bool) -> Encoded {
        self.encode_with_prior(text, signals, &signals.prior(), names)
    }

    /// [`Model::encode`] given the reason the status prior names for `signals`.
    fn encode_with_prior(&self, text: &str, signals: &Signals, prior: &str, names: bool) -> Encoded {
        let norm = normalise(text);
        let text = if names {
            let words = words(&norm);
            let ids: Vec<u32> = words.iter().map(|w| self.word_id(w)).collect();
            self.layout.text_features(&words, &ids, self.unk, true)
        } else {
            self.cached_text_features(&norm)
        };
        let mut signal_rows = Vec::with_capacity(12);
        let mut signal_names = Vec::new();
        signals.each_token(prior, |t| {
            if names {
                signal_names.push(t.to_string());
            }
            signal_rows.push(self.layout.signal_row(t));
        });
        Encoded { text, signal_rows, signal_names }
    }

    /// The vocabulary id of a word (`unk` when unknown).
    fn word_id(&self, word: &str) -> u32 {
        self.tokenizer.token_to_id(word).unwrap_or(self.unk)
    }

    /// The text features (no names) of a normalised text, with what each word gives by itself taken from this
    /// thread's [`WordCache`]: the same as [`Layout::text_features`] over [`words`].
    fn cached_text_features(&self, normalised: &str) -> TextFeatures {
        WORD_CACHE.with_borrow_mut(|cache| {
            cache.prepare(self.id);
            let mut order = Vec::with_capacity(normalised.len() / 4);
            each_word(normalised, |word| {
                order.push(cache.entry(word, || self.layout.word_features(word, self.word_id(word), self.unk, false)));
            });
            let words: Vec<(&str, &WordFeatures)> = order
                .iter()
                .map(|&i| {
                    let (word, features) = &cache.entries[i];
                    (&**word, features)
                })
                .collect();
            let mut out = TextFeatures::new(false);
            out.rows.reserve(normalised.len());
            self.layout.join_words(&words, &mut out);
            out
        })
    }

    /// Output logits for the text features at `text_rows` and the signal tokens at `signal_rows`: each table's
    /// rows averaged, then the two dense layers.
    fn logits(&self, text_rows: &[u32], signal_rows: &[u32]) -> Vec<f32> {
        let d = self.config.dim;
        let mut x = vec![0f32; 2 * d];
        let (text, signal) = x.split_at_mut(d);
        mean_of_rows(&self.text_emb, text_rows, text);
        mean_of_rows(&self.signal_emb, signal_rows, signal);
        let mut hidden = dense(&self.w1p, &self.b1, &x);
        hidden.iter_mut().for_each(|v| *v = v.max(0.0));
        dense(&self.w2p, &self.b2, &hidden)
    }

    /// Set the status prior's weight (see [`ModelConfig::prior_weight`]).
    pub fn set_prior_weight(&mut self, weight: f32) {
        self.config.prior_weight = weight;
    }

    /// Set the similarity from which the memory decides (see [`ModelConfig::memory_threshold`]).
    pub fn set_memory_threshold(&mut self, threshold: f32) {
        self.config.memory_threshold = threshold;
    }

    /// The nearest-neighbour memory of the training texts (empty for a model saved without one).
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Replace the nearest-neighbour memory (training builds it from its examples).
    pub fn set_memory(&mut self, memory: Memory) {
        self.memory = memory;
    }

    /// The memory's verdict on encoded input, when its best match reaches the threshold.
    fn recall(&self, enc: &Encoded) -> Option<Classification> {
        let threshold = self.config.memory_threshold;
        if threshold <= 0.0 || self.memory.is_empty() {
            return None;
        }
        let r = self.memory.recall(&enc.text.rows, &enc.signal_rows, self.labels.len())?;
        if r.similarity < threshold {
            return None;
        }
        Some(Classification {
            reason: self.labels[r.label].name.clone(),
            hard_bounce: false,
            confidence: r.similarity * r.agreement,
            decided_by: DecidedBy::Model,
        })
    }

    /// Add the status prior's log-probabilities, weighted, to the network's logits.
    fn fuse(&self, logits: &mut [f32], prior: &Classification) {
        if let Some(offsets) = PriorOffsets::of(&self.labels, self.config.prior_weight, prior) {
            offsets.add_to(logits);
        }
    }

    /// Label probabilities for one input, in label order.
    pub fn probabilities(&self, text: &str, signals: &Signals) -> Vec<f32> {
        let prior = signals.prior_classification();
        let enc = self.encode_with_prior(text, signals, &prior.reason, false);
        let mut logits = self.logits(&enc.text.rows, &enc.signal_rows);
        self.fuse(&mut logits, &prior);
        softmax(&logits)
    }

    /// Classify one input: the most likely label, or `onhold` when its probability is below `min_confidence`.
    /// A close enough match in the nearest-neighbour memory decides before the network.
    pub fn classify(&self, text: &str, signals: &Signals, min_confidence: f32) -> Classification {
        self.classify_with_prior(text, signals, &signals.prior_classification(), min_confidence)
    }

    /// [`Model::classify`] given what the status prior says of `signals` (`signals.prior_classification()`).
    pub(crate) fn classify_with_prior(
        &self,
        text: &str,
        signals: &Signals,
        prior: &Classification,
        min_confidence: f32,
    ) -> Classification {
        let enc = self.encode_with_prior(text, signals, &prior.reason, false);
        if let Some(c) = self.recall(&enc) {
            return self.settle(c, signals, min_confidence);
        }
        let mut logits = self.logits(&enc.text.rows, &enc.signal_rows);
        self.fuse(&mut logits, prior);
        self.verdict(&softmax(&logits), signals, min_confidence)
    }

    /// Apply the confidence threshold and the hard-bounce rule to a memory verdict.
    fn settle(&self, mut c: Classification, signals: &Signals, min_confidence: f32) -> Classification {
        if c.confidence < min_confidence {
            c.reason = "onhold".to_string();
            return c;
        }
        c.hard_bounce = self.labels.iter().any(|l| l.name == c.reason && l.hard) && signals.permanent();
        c
    }

    fn verdict(&self, probs: &[f32], signals: &Signals, min_confidence: f32) -> Classification {
        let (best, &p) = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap_or((0, &0.0));
        let label = &self.labels[best.min(self.labels.len() - 1)];
        if p < min_confidence {
            return Classification {
                reason: "onhold".to_string(),
                hard_bounce: false,
                confidence: p,
                decided_by: DecidedBy::Model,
            };
        }
        Classification {
            reason: label.name.clone(),
            hard_bounce: label.hard && signals.permanent(),
            confidence: p,
            decided_by: DecidedBy::Model,
        }
    }

    /// Classify and say what weighed most: the `top_n` text features and every signal token, by how much the
    /// winning label's logit drops when each is left out.
    pub fn explain(&self, text: &str, signals: &Signals, min_confidence: f32, top_n: usize) -> Explanation {
        let prior = signals.prior_classification();
        let enc = self.encode_with_prior(text, signals, &prior.reason, true);
        let mut logits = self.logits(&enc.text.rows, &enc.signal_rows);
        self.fuse(&mut logits, &prior);
        let probs = softmax(&logits);
        let classification = match self.recall(&enc) {
            Some(c) => self.settle(c, signals, min_confidence),
            None => self.verdict(&probs, signals, min_confidence),
        };
        let best = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
        // Occlusion: every occurrence of a feature name (or the one signal token) left out.
        let mut names: Vec<&str> = enc.text.names.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        let mut features: Vec<(String, f32)> = names
            .into_iter()
            .map(|name| {
                let rows: Vec<u32> =
                    enc.text.rows.iter().zip(&enc.text.names).filter(|(_, n)| *n != name).map(|(&r, _)| r).collect();
                (name.to_string(), logits[best] - self.logits(&rows, &enc.signal_rows)[best])
            })
            .collect();
        features.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        features.truncate(top_n);
        let signals_w = (0..enc.signal_rows.len())
            .map(|i| {
                let mut rows = enc.signal_rows.clone();
                rows.remove(i);
                (enc.signal_names[i].clone(), logits[best] - self.logits(&enc.text.rows, &rows)[best])
            })
            .collect();
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top = order.into_iter().take(3).map(|i| (self.labels[i].name.clone(), probs[i])).collect();
        Explanation { classification, features, signals: signals_w, top }
    }
}

/// What each word gives a text's features by itself ([`WordFeatures`], with its vocabulary id), kept per thread
/// for the model it was computed with: bounce texts repeat their words, and a word's character grams, anagram
/// key and vocabulary lookup cost far more than finding them again. Emptied when it reaches
/// [`WORD_CACHE_WORDS`] words or another model uses the thread.
#[derive(Default)]
struct WordCache {
    /// [`Model::id`] of the model the entries belong to.
    model: u64,
    /// Where each word's entry is.
    index: AHashMap<Box<str>, usize>,
    /// The words and what they give.
    entries: Vec<(Box<str>, WordFeatures)>,
}

/// Words the word cache holds before it starts over (each ~150 bytes: at most a few MB a thread).
const WORD_CACHE_WORDS: usize = 1 << 14;

impl WordCache {
    /// Before a text: start over when the entries belong to another model or the cache is full.
    fn prepare(&mut self, model: u64) {
        if self.model != model || self.entries.len() >= WORD_CACHE_WORDS {
            self.model = model;
            self.index.clear();
            self.entries.clear();
        }
    }

    /// The index of `word`'s entry, computed by `features` if the cache does not have it.
    fn entry(&mut self, word: &str, features: impl FnOnce() -> WordFeatures) -> usize {
        if let Some(&i) = self.index.get(word) {
            return i;
        }
        let i = self.entries.len();
        self.entries.push((word.into(), features()));
        self.index.insert(word.into(), i);
        i
    }
}

thread_local! {
    static WORD_CACHE: RefCell<WordCache> = RefCell::new(WordCache::default());
}

/// Outputs of a dense layer computed at a time: an accumulator of four SSE registers (the build targets
/// baseline x86-64), which stays in registers over all the inputs.
const LANES: usize = 16;

/// Embedding values summed at a time when the width allows (the shipped models' 48): twelve SSE registers.
const WIDE: usize = 48;

/// `out = mean of table[rows]` (rows of `out.len()` values; `out` left as it is, zeros, when `rows` is empty).
/// Each output is the sum of its column over the rows in their order, divided by their number: the sums of
/// adding each row in turn, bit for bit.
fn mean_of_rows(table: &[f32], rows: &[u32], out: &mut [f32]) {
    if rows.is_empty() {
        return;
    }
    if out.len().is_multiple_of(WIDE) {
        add_rows::<WIDE>(table, rows, out);
    } else {
        add_rows::<LANES>(table, rows, out);
    }
    let n = rows.len() as f32;
    out.iter_mut().for_each(|a| *a /= n);
}

/// `out += table[row]` for each of `rows` in turn, `W` outputs at a time over all the rows: the chunk's sums
/// stay in registers, and the CPU fetches the scattered rows ahead (they are mostly cache misses, and no
/// address depends on the sums).
fn add_rows<const W: usize>(table: &[f32], rows: &[u32], out: &mut [f32]) {
    let d = out.len();
    let (chunks, rest) = out.as_chunks_mut::<W>();
    for (c, chunk) in chunks.iter_mut().enumerate() {
        let mut acc = *chunk;
        for &row in rows {
            let start = row as usize * d + c * W;
            let values: &[f32; W] = table[start..start + W].try_into().expect("a chunk is W values");
            for (a, v) in acc.iter_mut().zip(values) {
                *a += v;
            }
        }
        *chunk = acc;
    }
    let done = d - rest.len();
    for (j, a) in rest.iter_mut().enumerate() {
        for &row in rows {
            *a += table[row as usize * d + done + j];
        }
    }
}

/// Names of the memory's tensors in model.safetensors: rows, offsets, labels (all u32).
const MEMORY_TENSORS: [&str; 3] = ["mem_rows", "mem_offsets", "mem_labels"];

/// A `rows × cols` row-major matrix in the layout [`dense`] reads: for each chunk of [`LANES`] rows (outputs),
/// column by column the chunk's [`LANES`] values (a panel, read front to back), then the remaining rows as
/// they are.
fn panels(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let full = rows - rows % LANES;
    let mut out = Vec::with_capacity(m.len());
    for chunk in (0..full).step_by(LANES) {
        for c in 0..cols {
            out.extend((chunk..chunk + LANES).map(|r| m[r * cols + c]));
        }
    }
    out.extend_from_slice(&m[full * cols..]);
    out
}

/// `b + W x` for `W` given in [`panels`]. Every output is the same sum as the plain dot product
/// `b[j] + Σ_i W[j][i]·x[i]` (products added in the order of `i`, starting from -0.0 like `Iterator::sum`), so
/// results are bit for bit those of the row-major loop; a panel keeps [`LANES`] outputs advancing together in
/// vector registers, reading its weights in order, instead of one long chain of dependent additions per output.
fn dense(wp: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
    let mut acc = vec![-0.0f32; b.len()];
    let (chunks, rest) = acc.as_chunks_mut::<LANES>();
    let (panels, rest_rows) = wp.split_at(chunks.len() * LANES * x.len());
    for (chunk, panel) in chunks.iter_mut().zip(panels.chunks_exact(LANES * x.len())) {
        let mut sums = *chunk;
        for (&xi, w) in x.iter().zip(panel.as_chunks::<LANES>().0) {
            for (a, w) in sums.iter_mut().zip(w) {
                *a += w * xi;
            }
        }
        *chunk = sums;
    }
    for (a, row) in rest.iter_mut().zip(rest_rows.chunks_exact(x.len())) {
        for (&xi, w) in x.iter().zip(row) {
            *a += w * xi;
        }
    }
    acc.iter_mut().zip(b).for_each(|(a, bias)| *a += bias);
    acc
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Model::logits` as first written: each row added as it is read.
    fn reference_logits(m: &Model, text_rows: &[u32], signal_rows: &[u32]) -> Vec<f32> {
        let d = m.config.dim;
        let mut x = vec![0f32; 2 * d];
        for (table, rows, part) in [(&m.text_emb, text_rows, 0), (&m.signal_emb, signal_rows, 1)] {
            for &row in rows {
                for j in 0..d {
                    x[part * d + j] += table[row as usize * d + j];
                }
            }
            if !rows.is_empty() {
                x[part * d..(part + 1) * d].iter_mut().for_each(|a| *a /= rows.len() as f32);
            }
        }
        let mut hidden = dense(&m.w1p, &m.b1, &x);
        hidden.iter_mut().for_each(|v| *v = v.max(0.0));
        dense(&m.w2p, &m.b2, &hidden)
    }

    #[test]
    fn logits_equal_the_row_by_row_sums_and_cached_features_the_uncached_on_the_shipped_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let model = Model::load(&dir).expect("the shipped model loads");
        let other = Model::load(&dir).expect("the shipped model loads");
        let signals = Signals {
            kind: Some(crate::parse::Kind::Bounce),
            status: Some("5.1.1".into()),
            reply_code: Some(550),
            ..Signals::default()
        };
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let mut checked = 0;
        for text in crate::classify::testdata::own_corpus_texts() {
            // the text as it is, and long enough to be cut; the second model's turns empty the thread's cache
            for (text, model) in [(text.clone(), &model), (text.repeat(30), &other), (String::new(), &model)] {
                let named = model.encode(&text, &signals, true);
                let plain = model.encode(&text, &signals, false);
                assert_eq!(plain.text.rows, named.text.rows, "{text:?}");
                assert_eq!(plain.signal_rows, named.signal_rows, "{text:?}");
                let (rows, signal_rows) = (&named.text.rows, &named.signal_rows);
                assert_eq!(bits(model.logits(rows, signal_rows)), bits(reference_logits(model, rows, signal_rows)));
                if !rows.is_empty() {
                    let (rows, signal_rows) = (&rows[1..], &signal_rows[1..]);
                    assert_eq!(bits(model.logits(rows, signal_rows)), bits(reference_logits(model, rows, signal_rows)));
                }
            }
            checked += 1;
        }
        assert!(checked > 100, "only {checked} texts read");
    }

    #[test]
    fn the_word_cache_keeps_one_entry_a_word_and_starts_over_for_another_model_or_when_full() {
        let layout = Layout { vocab: 10, buckets: 1 << 10, signal_buckets: 8 };
        let features = |word: &str| layout.word_features(word, 0, 0, false);
        let mut cache = WordCache::default();
        cache.prepare(7);
        assert_eq!(cache.entry("mailbox", || features("mailbox")), 0);
        assert_eq!(cache.entry("full", || features("full")), 1);
        assert_eq!(cache.entry("mailbox", || unreachable!("mailbox is cached")), 0);
        assert_eq!(cache.entries[0], ("mailbox".into(), features("mailbox")));
        cache.prepare(7);
        assert_eq!(cache.entries.len(), 2, "same model: kept");
        cache.prepare(8);
        assert!(cache.entries.is_empty() && cache.index.is_empty(), "another model: emptied");
        for i in 0..WORD_CACHE_WORDS {
            cache.entry(&format!("w{i}"), || features("w"));
        }
        cache.prepare(8);
        assert!(cache.entries.is_empty() && cache.index.is_empty(), "full: emptied");
    }

    #[test]
    fn prior_offsets_favour_the_prior_reason_and_vanish_when_it_does_not_decide() {
        let labels = super::super::train::label_set(&[]);
        let full = Signals { status: Some("5.2.2".into()), ..Signals::default() };
        let o = PriorOffsets::of(&labels, 0.5, &full.prior_classification()).expect("5.2.2 decides");
        assert_eq!(labels[o.label].name, "mailboxfull");
        assert!(o.on > o.off);
        assert!((o.on - 0.5 * 0.9f32.ln()).abs() < 1e-6);
        let mut logits = vec![0.0; labels.len()];
        o.add_to(&mut logits);
        assert_eq!(logits.iter().filter(|&&l| l == o.on).count(), 1);
        assert_eq!(PriorOffsets::of(&labels, 0.0, &full.prior_classification()), None, "weight 0");
        let vague = Signals { status: Some("5.0.0".into()), ..Signals::default() };
        assert_eq!(PriorOffsets::of(&labels, 0.5, &vague.prior_classification()), None, "5.0.0 does not decide");
    }

    #[test]
    fn the_f16_finiteness_check_agrees_with_the_converted_values_on_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let bytes = bits.to_le_bytes();
            assert_eq!(all_finite_f16(&bytes), f16_to_f32(&bytes)[0].is_finite(), "{bits:#06x}");
        }
        assert!(!all_finite_f16(&[0, 0x3c, 0, 0x7c, 0, 0x3c]), "one infinity among finite values");
    }

    #[test]
    fn dense_on_panels_is_bit_for_bit_the_row_major_dot_product() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(6);
        for (rows, cols) in [(96, 96), (34, 96), (35, 96), (16, 3), (1, 1), (7, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let b: Vec<f32> = (0..rows).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let mut x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            x[0] = 0.0;
            let plain: Vec<u32> = (0..rows)
                .map(|j| (b[j] + w[j * cols..(j + 1) * cols].iter().zip(&x).map(|(a, b)| a * b).sum::<f32>()).to_bits())
                .collect();
            let fast: Vec<u32> = dense(&panels(&w, rows, cols), &b, &x).iter().map(|v| v.to_bits()).collect();
            assert_eq!(fast, plain, "{rows}x{cols}");
        }
    }
}
