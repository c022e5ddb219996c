//! Nearest-neighbour memory over the training texts: real bounce streams repeat themselves (one MTA writes
//! the same sentence for every recipient with only the address, host and queue ID changing), so a text whose
//! masked features are nearly those of a training text gets that text's label.
//!
//! Each training example is stored as the set of its text feature rows (the same features the network reads,
//! so masking, n-grams and the vocabulary are shared) and its signal rows. Similarity is the idf-weighted
//! cosine of the text sets, blended with the cosine of the signal sets ([`SIGNAL_SHARE`]) so that the same
//! sentence after a different SMTP command or with another status code is a less close match. The memory
//! answers only when its best match reaches the model's `memory_threshold`; the network decides otherwise.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Share of the signal cosine in the similarity (the text cosine has the rest).
pub const SIGNAL_SHARE: f32 = 0.25;

/// Signal rows are stored beside text rows with this bit set.
const SIGNAL_BIT: u32 = 1 << 31;

/// The memory: stored examples with an inverted index from feature row to the examples that have it.
///
/// The index is built on the first [`Memory::recall`], not when the memory is loaded: a model whose
/// `memory_threshold` is 0 never recalls, and building the index was most of its load time.
#[derive(Debug, Default)]
pub struct Memory {
    /// Every entry's rows (text rows, then signal rows with [`SIGNAL_BIT`]), sorted and distinct, concatenated.
    rows: Vec<u32>,
    /// Start of entry `e` in `rows` is `offsets[e]`; `offsets` has one more element than there are entries.
    offsets: Vec<u32>,
    /// Label index of every entry.
    labels: Vec<u32>,
    /// The inverted index and norms, built on first use.
    index: OnceLock<Index>,
}

/// What [`Memory::recall`] searches, derived from the stored entries.
#[derive(Debug)]
struct Index {
    /// Row → (entries having it, idf weight).
    entries: HashMap<u32, (Vec<u32>, f32)>,
    /// Per entry: norm of its text part and of its signal part.
    norms: Vec<(f32, f32)>,
    /// Weight of a row no entry has (the highest idf).
    unseen_idf: f32,
}

/// What the memory says of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Recall {
    /// Label index of the best match (the most similar entries vote, weighted by similarity).
    pub label: usize,
    /// Similarity of the best match, 0..1.
    pub similarity: f32,
    /// Share of the vote the winning label got among the entries within 0.01 of the best similarity.
    pub agreement: f32,
}

fn sorted_distinct(text_rows: &[u32], signal_rows: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = text_rows
        .iter()
        .map(|&r| r & !SIGNAL_BIT)
        .chain(signal_rows.iter().map(|&r| r | SIGNAL_BIT))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Memory {
    /// Build a memory from entries `(text rows, signal rows, label index)`.
    pub fn build<'a>(entries: impl IntoIterator<Item = (&'a [u32], &'a [u32], usize)>) -> Memory {
        let mut rows = Vec::new();
        let mut offsets = vec![0u32];
        let mut labels = Vec::new();
        for (text, signals, label) in entries {
            rows.extend(sorted_distinct(text, signals));
            offsets.push(rows.len() as u32);
            labels.push(label as u32);
        }
        Memory::from_raw(rows, offsets, labels).unwrap_or_default()
    }

    /// Rebuild the memory from its stored arrays (see [`Memory::raw`]); `Err` names what is inconsistent.
    pub fn from_raw(rows: Vec<u32>, offsets: Vec<u32>, labels: Vec<u32>) -> Result<Memory, String> {
        if offsets.len() != labels.len() + 1 || offsets.first() != Some(&0) {
            return Err(format!("memory has {} offsets for {} entries", offsets.len(), labels.len()));
        }
        if offsets.windows(2).any(|w| w[0] > w[1]) || offsets.last().copied() != Some(rows.len() as u32) {
            return Err("memory offsets are not increasing up to the row count".to_string());
        }
        Ok(Memory { rows, offsets, labels, index: OnceLock::new() })
    }

    /// The inverted index, built on the first call.
    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let (rows, offsets) = (&self.rows, &self.offsets);
            let n = self.labels.len();
            let mut entries: HashMap<u32, (Vec<u32>, f32)> = HashMap::new();
            for e in 0..n {
                for &r in &rows[offsets[e] as usize..offsets[e + 1] as usize] {
                    entries.entry(r).or_default().0.push(e as u32);
                }
            }
            let idf = |df: usize| (1.0 + n as f32 / df as f32).ln();
            for (having, w) in entries.values_mut() {
                *w = idf(having.len());
            }
            let norms = (0..n)
                .map(|e| {
                    let (mut t, mut s) = (0f32, 0f32);
                    for r in &rows[offsets[e] as usize..offsets[e + 1] as usize] {
                        let w = entries[r].1;
                        if r & SIGNAL_BIT == 0 { t += w * w } else { s += w * w }
                    }
                    (t.sqrt(), s.sqrt())
                })
                .collect();
            Index { entries, norms, unseen_idf: idf(1) }
        })
    }

    /// The stored arrays: rows, offsets, labels.
    pub fn raw(&self) -> (&[u32], &[u32], &[u32]) {
        (&self.rows, &self.offsets, &self.labels)
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The best match of an input given by its text rows and signal rows, if any entry shares a row with it.
    pub fn recall(&self, text_rows: &[u32], signal_rows: &[u32], labels: usize) -> Option<Recall> {
        if self.is_empty() {
            return None;
        }
        let index = self.index();
        let query = sorted_distinct(text_rows, signal_rows);
        let (mut qt, mut qs) = (0f32, 0f32);
        let mut dot: HashMap<u32, (f32, f32)> = HashMap::new();
        for r in &query {
            let is_signal = r & SIGNAL_BIT != 0;
            let (entries, w) = match index.entries.get(r) {
                Some((entries, w)) => (entries.as_slice(), *w),
                None => (&[][..], index.unseen_idf),
            };
            let w2 = w * w;
            if is_signal { qs += w2 } else { qt += w2 }
            for &e in entries {
                let d = dot.entry(e).or_default();
                if is_signal { d.1 += w2 } else { d.0 += w2 }
            }
        }
        let (qt, qs) = (qt.sqrt(), qs.sqrt());
        let cos = |num: f32, a: f32, b: f32| if a > 0.0 && b > 0.0 { num / (a * b) } else { 0.0 };
        let mut scored: Vec<(u32, f32)> = dot
            .into_iter()
            .map(|(e, (t, s))| {
                let (nt, ns) = index.norms[e as usize];
                (e, (1.0 - SIGNAL_SHARE) * cos(t, qt, nt) + SIGNAL_SHARE * cos(s, qs, ns))
            })
            .collect();
        let best = scored.iter().map(|&(_, s)| s).fold(0f32, f32::max);
        if best <= 0.0 {
            return None;
        }
        scored.retain(|&(_, s)| s >= best - 0.01);
        let mut votes = vec![0f32; labels.max(1)];
        for &(e, s) in &scored {
            if let Some(v) = votes.get_mut(self.labels[e as usize] as usize) {
                *v += s;
            }
        }
        let total: f32 = votes.iter().sum();
        let (label, &top) = votes.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))?;
        Some(Recall { label, similarity: best.min(1.0), agreement: if total > 0.0 { top / total } else { 0.0 } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_entry_wins_and_signals_count() {
        let m = Memory::build([
            (&[1u32, 2, 3, 4][..], &[10u32][..], 0),
            (&[1u32, 2, 3, 4][..], &[11u32][..], 1),
            (&[7u32, 8, 9][..], &[10u32][..], 2),
        ]);
        assert_eq!(m.len(), 3);
        let r = m.recall(&[1, 2, 3, 4], &[11], 3).expect("a match");
        assert_eq!(r.label, 1);
        assert!(r.similarity > 0.99, "{r:?}");
        let r = m.recall(&[7, 8, 9, 100], &[10], 3).expect("a match");
        assert_eq!(r.label, 2);
        assert!(r.similarity < 0.99 && r.similarity > 0.5, "{r:?}");
        assert_eq!(m.recall(&[500], &[600], 3), None);
    }

    #[test]
    fn raw_arrays_round_trip_and_bad_ones_are_refused() {
        let m = Memory::build([(&[5u32, 6][..], &[1u32][..], 0), (&[6u32][..], &[][..], 1)]);
        let (rows, offsets, labels) = m.raw();
        let back = Memory::from_raw(rows.to_vec(), offsets.to_vec(), labels.to_vec()).expect("consistent");
        assert_eq!(back.recall(&[5, 6], &[1], 2), m.recall(&[5, 6], &[1], 2));
        assert!(Memory::from_raw(vec![1], vec![0, 2], vec![0]).is_err());
        assert!(Memory::from_raw(vec![1], vec![0], vec![0]).is_err());
    }
}
