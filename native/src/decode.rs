//! The fast path of `monitor.events.BatchDecoder`: events of the common shape become rows of per-model
//! columns; anything else is left (model -1) to the exact Python decoder, which also words the rejection.
//! The rules are those of `Decoder` in monitor/events.py, narrowed wherever being sure would cost.

use std::borrow::Cow;
use std::fmt::Write as _;

use ahash::{AHashMap, AHashSet};
use rustc_hash::FxHashMap;

use crate::json::{read_event, Kind, Labels, Scalar, Scratch, Top};
use crate::mapped::Reading;
use crate::threads;
use crate::timestamp;

const MAX_ID_BYTES: usize = 256;
const MAX_VERSION_BYTES: usize = 64;
const EPOCH_2000: f64 = 946_684_800.0;
const EPOCH_2100: f64 = 4_102_444_800.0;
/// At or above this an epoch number is milliseconds (as in monitor.events.parse_timestamp).
const MILLIS_CUTOFF: f64 = 1e11;

#[derive(Clone, Copy)]
enum Feature {
    Numeric(usize),
    Categorical(usize),
}

/// One configured model, as the decoder needs it.
pub struct ModelSpec {
    pub labels: Vec<String>,
    pub thresholds: Vec<f64>,
    pub multiclass: bool,
    pub n_numeric: usize,
    pub n_categorical: usize,
    /// Per categorical feature: value string -> bin, None when the model has no reference.
    pub categories: Vec<Option<FxHashMap<String, i64>>>,
    pub other_bin: Vec<i64>,
    label_index: FxHashMap<String, usize>,
    features: FxHashMap<String, Feature>,
}

impl ModelSpec {
    pub fn new(
        labels: Vec<String>,
        thresholds: Vec<f64>,
        multiclass: bool,
        numeric: Vec<String>,
        categorical: Vec<String>,
        categories: Vec<Option<FxHashMap<String, i64>>>,
        other_bin: Vec<i64>,
    ) -> Result<Self, String> {
        if thresholds.len() != labels.len() {
            return Err("thresholds must hold one value per label".into());
        }
        if categories.len() != categorical.len() || other_bin.len() != categorical.len() {
            return Err("categories and other_bin must hold one entry per categorical feature".into());
        }
        let label_index: FxHashMap<String, usize> = labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect();
        if label_index.len() != labels.len() {
            return Err("labels must be distinct".into());
        }
        let mut features = FxHashMap::default();
        let named = numeric
            .iter()
            .enumerate()
            .map(|(i, n)| (n, Feature::Numeric(i)))
            .chain(categorical.iter().enumerate().map(|(i, n)| (n, Feature::Categorical(i))));
        for (name, slot) in named {
            if features.insert(name.clone(), slot).is_some() {
                return Err(format!("feature {name:?} is configured twice"));
            }
        }
        Ok(ModelSpec {
            thresholds,
            multiclass,
            n_numeric: numeric.len(),
            n_categorical: categorical.len(),
            categories,
            other_bin,
            label_index,
            features,
            labels,
        })
    }

    /// The index of a configured label; producers usually send few labels, so for small label sets a
    /// scan beats hashing.
    fn index_of(&self, label: &str) -> Option<usize> {
        if self.labels.len() <= 8 {
            self.labels.iter().position(|l| l == label)
        } else {
            self.label_index.get(label).copied()
        }
    }

    fn bin(&self, j: usize, value: &str) -> i64 {
        match &self.categories[j] {
            None => 0,
            Some(map) => map.get(value).copied().unwrap_or(self.other_bin[j]),
        }
    }
}

/// A block's ids in one UTF-8 buffer with their spans, written as each event is decoded (while its line
/// is in cache). Python takes them as they are (monitor.spans.TextSpans), without a str per id; building
/// this from a list of ids afterwards was a cache miss per id, on one thread.
#[derive(Default, Debug, PartialEq)]
pub struct Ids {
    pub data: Vec<u8>,
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
}

impl Ids {
    pub fn push(&mut self, id: &str) {
        self.starts.push(self.data.len() as i64);
        self.data.extend_from_slice(id.as_bytes());
        self.ends.push(self.data.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Room for `n` more ids of about `len` bytes (the first one's), as a block's other columns are
    /// reserved for the rest of its chunk; longer ids grow the buffer as usual.
    fn reserve(&mut self, n: usize, len: usize) {
        self.data.reserve(n * len);
        self.starts.reserve(n);
        self.ends.reserve(n);
    }

    /// `more`'s ids after these.
    fn extend(&mut self, more: Ids) {
        let base = self.data.len() as i64;
        self.data.extend_from_slice(&more.data);
        self.starts.extend(more.starts.iter().map(|&a| a + base));
        self.ends.extend(more.ends.iter().map(|&b| b + base));
    }
}

/// Accepted predictions of one model, as columns (row-major matrices).
#[derive(Default)]
pub struct PredBlock<'a> {
    pub ids: Ids,
    pub version_names: Vec<Cow<'a, str>>,
    // Versions and feature names come from producers: seeded hashing (config lookups use FxHash).
    version_index: AHashMap<Cow<'a, str>, i64>,
    pub version_code: Vec<i64>,
    pub ts: Vec<f64>,
    pub scores: Vec<f64>,
    pub predicted: Vec<bool>,
    pub latency: Vec<f64>,
    pub ignored: Vec<i64>,
    pub numeric: Vec<f64>,
    pub categorical: Vec<i64>,
}

impl<'a> PredBlock<'a> {
    /// Room for every remaining event of the batch: most batches hold one model's events.
    fn reserve(&mut self, n: usize, id_len: usize, spec: &ModelSpec) {
        let l = spec.labels.len();
        self.ids.reserve(n, id_len);
        self.version_code.reserve(n);
        self.ts.reserve(n);
        self.scores.reserve(n * l);
        self.predicted.reserve(n * l);
        self.latency.reserve(n);
        self.ignored.reserve(n);
        self.numeric.reserve(n * spec.n_numeric);
        self.categorical.reserve(n * spec.n_categorical);
    }

    /// The code of a version by name only (no look at the last row): for joining chunks.
    fn code_for(&mut self, version: Cow<'a, str>) -> i64 {
        if let Some(&code) = self.version_index.get(&version) {
            return code;
        }
        let code = self.version_names.len() as i64;
        self.version_names.push(version.clone());
        self.version_index.insert(version, code);
        code
    }

    fn code_of(&mut self, version: Cow<'a, str>) -> i64 {
        // Consecutive events nearly always share a version: compare with the last one before hashing.
        if let Some(&last) = self.version_code.last() {
            if self.version_names[last as usize] == version {
                return last;
            }
        }
        self.code_for(version)
    }
}

#[derive(Default)]
pub struct TruthBlock {
    pub ids: Ids,
    pub ts: Vec<f64>,
    pub known: Vec<bool>,
    pub actual: Vec<bool>,
    pub full: Vec<bool>,
}

pub struct Batch<B> {
    /// Per event: the model index, -1 when not accepted.
    pub model: Vec<i32>,
    /// Per event: the row in its model's block, -1 when not accepted.
    pub row: Vec<i64>,
    pub blocks: Vec<B>,
}

pub struct Decoder {
    pub max_bytes: usize,
    pub models: Vec<ModelSpec>,
    by_name: FxHashMap<String, usize>,
    /// Mapped inputs the fast path reads (mapped.rs); a batch names one, or reads the native shape.
    pub readings: Vec<Option<Reading>>,
}

/// Per-event values of one prediction before they are committed to its block (an event can still be
/// refused half way through).
#[derive(Default)]
struct Work {
    scores: Vec<f64>,
    predicted: Vec<bool>,
    numeric: Vec<f64>,
    categorical: Vec<i64>,
    number: String,
    /// Per label (then per feature): already given by this event.
    seen: Vec<bool>,
    /// Indices of the keys that are no label (then no configured feature).
    extra: Vec<usize>,
}

impl Decoder {
    pub fn new(max_bytes: usize, names: Vec<String>, models: Vec<ModelSpec>) -> Result<Self, String> {
        let mut by_name = FxHashMap::default();
        for (i, name) in names.into_iter().enumerate() {
            if by_name.insert(name, i).is_some() {
                return Err("model names must be distinct".into());
            }
        }
        Ok(Decoder { max_bytes, models, by_name, readings: Vec::new() })
    }

    /// Decodes predictions of the native shape (`reading` None) or of a mapped input.
    pub fn predictions<'a>(&'a self, raws: &[&'a [u8]], reading: Option<&'a Reading>) -> Batch<PredBlock<'a>> {
        let mut batch = Batch {
            model: Vec::with_capacity(raws.len()),
            row: Vec::with_capacity(raws.len()),
            blocks: self.models.iter().map(|_| PredBlock::default()).collect(),
        };
        let mut scratch = Scratch::default();
        let mut work = Work::default();
        for (i, raw) in raws.iter().enumerate() {
            match self.prediction(raw, reading, &mut scratch, &mut work) {
                Some((m, top, ts, latency, ignored)) => {
                    let spec = &self.models[m];
                    let block = &mut batch.blocks[m];
                    if block.ids.is_empty() {
                        block.reserve(raws.len() - i, top.id.as_ref().map_or(0, |id| id.len()), spec);
                    }
                    batch.model.push(m as i32);
                    batch.row.push(block.ids.len() as i64);
                    block.ids.push(top.id.as_deref().unwrap_or_default());
                    let version = top.version.unwrap_or(Cow::Borrowed("unknown"));
                    let code = block.code_of(version);
                    block.version_code.push(code);
                    block.ts.push(ts);
                    block.scores.extend_from_slice(&work.scores);
                    block.predicted.extend_from_slice(&work.predicted);
                    block.latency.push(latency);
                    block.ignored.push(ignored);
                    block.numeric.extend_from_slice(&work.numeric);
                    block.categorical.extend_from_slice(&work.categorical);
                }
                None => {
                    batch.model.push(-1);
                    batch.row.push(-1);
                }
            }
        }
        batch
    }

    pub fn ground_truth<'a>(&'a self, raws: &[&'a [u8]], reading: Option<&'a Reading>) -> Batch<TruthBlock> {
        let mut batch = Batch {
            model: Vec::with_capacity(raws.len()),
            row: Vec::with_capacity(raws.len()),
            blocks: self.models.iter().map(|_| TruthBlock::default()).collect(),
        };
        let mut scratch = Scratch::default();
        let mut work = Work::default();
        for (i, raw) in raws.iter().enumerate() {
            match self.truth(raw, reading, &mut scratch, &mut work) {
                Some((m, id, ts)) => {
                    let block = &mut batch.blocks[m];
                    if block.ids.is_empty() {
                        block.ids.reserve(raws.len() - i, id.len());
                    }
                    batch.model.push(m as i32);
                    batch.row.push(block.ids.len() as i64);
                    block.ids.push(&id);
                    block.ts.push(ts);
                    block.known.extend_from_slice(&work.seen);
                    block.actual.extend_from_slice(&work.predicted);
                    block.full.push(work.seen.iter().all(|&k| k));
                }
                None => {
                    batch.model.push(-1);
                    batch.row.push(-1);
                }
            }
        }
        batch
    }

    /// The id, model, timestamp and version checks both kinds share.
    fn common<'a>(
        &'a self,
        raw: &'a [u8],
        kind: Kind,
        reading: Option<&'a Reading>,
        scratch: &mut Scratch<'a>,
    ) -> Option<(usize, Top<'a>, f64)> {
        if raw.len() > self.max_bytes {
            return None;
        }
        let text = std::str::from_utf8(raw).ok()?;
        let (m, top) = match reading {
            None => {
                let top = read_event(text, kind, scratch)?;
                (*self.by_name.get(top.model.as_deref()?)?, top)
            }
            Some(r) => r.read(text, |m| &self.models[m].labels, scratch)?,
        };
        // Bytes, not characters: a shorter id may still be valid, but then the exact decoder takes it.
        let id_len = top.id.as_ref()?.len();
        if !(1..=MAX_ID_BYTES).contains(&id_len) {
            return None;
        }
        let ts = event_time(top.timestamp.as_ref()?)?;
        Some((m, top, ts))
    }

    fn prediction<'a>(
        &'a self,
        raw: &'a [u8],
        reading: Option<&'a Reading>,
        scratch: &mut Scratch<'a>,
        work: &mut Work,
    ) -> Option<(usize, Top<'a>, f64, f64, i64)> {
        let (m, top, ts) = self.common(raw, Kind::Prediction, reading, scratch)?;
        let spec = &self.models[m];
        if let Some(v) = &top.version {
            if !(1..=MAX_VERSION_BYTES).contains(&v.len()) {
                return None;
            }
        }
        if !top.has_scores {
            return None;
        }
        // A repeated key is refused (orjson would keep the last value); labels are caught by `seen`, so
        // only the extra keys need comparing among themselves.
        let n = spec.labels.len();
        work.scores.clear();
        work.scores.resize(n, f64::NAN);
        work.seen.clear();
        work.seen.resize(n.max(spec.n_numeric + spec.n_categorical), false);
        work.extra.clear();
        for (k, (key, value)) in scratch.scores.iter().enumerate() {
            // Producers usually list the labels in config order: try that before hashing.
            let i = match spec.labels.get(k) {
                Some(label) if label == key => k,
                _ => match spec.label_index.get(key.as_ref()) {
                    Some(&i) => i,
                    None => {
                        work.extra.push(k);
                        continue;
                    }
                },
            };
            if std::mem::replace(&mut work.seen[i], true) {
                return None;
            }
            work.scores[i] = match *value {
                Scalar::U(u) if u <= 1 => u as f64,
                Scalar::F(f) if (0.0..=1.0).contains(&f) => f,
                _ => return None,
            };
        }
        if scratch.scores.len() - work.extra.len() != n || repeats(&scratch.scores, &work.extra) {
            return None;
        }
        let ignored = work.extra.len() as i64;
        if !served_or_derived(spec, top.has_predicted, &scratch.predicted, work) {
            return None;
        }

        work.numeric.clear();
        work.numeric.resize(spec.n_numeric, f64::NAN);
        work.categorical.clear();
        work.categorical.resize(spec.n_categorical, -1);
        if top.has_features {
            work.seen.fill(false);
            work.extra.clear();
            for (k, (key, value)) in scratch.features.iter().enumerate() {
                let Some(&feature) = spec.features.get(key.as_ref()) else {
                    work.extra.push(k);
                    continue;
                };
                let slot = match feature {
                    Feature::Numeric(j) => j,
                    Feature::Categorical(j) => spec.n_numeric + j,
                };
                if std::mem::replace(&mut work.seen[slot], true) {
                    return None;
                }
                match feature {
                    Feature::Numeric(j) => match *value {
                        Scalar::Null => {}
                        Scalar::U(u) => work.numeric[j] = u as f64,
                        Scalar::I(i) => work.numeric[j] = i as f64,
                        Scalar::F(f) => work.numeric[j] = f,
                        _ => return None,
                    },
                    Feature::Categorical(j) => {
                        // Python bins `str(value)`: True/False for booleans, the decimal digits of an int.
                        work.categorical[j] = match value {
                            Scalar::Null => -1,
                            Scalar::Str(s) => spec.bin(j, s),
                            Scalar::Bool(true) => spec.bin(j, "True"),
                            Scalar::Bool(false) => spec.bin(j, "False"),
                            Scalar::U(u) => {
                                work.number.clear();
                                let _ = write!(work.number, "{u}");
                                spec.bin(j, &work.number)
                            }
                            Scalar::I(i) => {
                                work.number.clear();
                                let _ = write!(work.number, "{i}");
                                spec.bin(j, &work.number)
                            }
                            _ => return None,
                        }
                    }
                }
            }
            if repeats(&scratch.features, &work.extra) {
                return None;
            }
        }

        let latency = match top.latency {
            None | Some(Scalar::Null) => f64::NAN,
            Some(Scalar::U(u)) => u as f64 / 1000.0,
            Some(Scalar::F(f)) if f >= 0.0 => f / 1000.0,
            _ => return None,
        };
        Some((m, top, ts, latency, ignored))
    }

    /// A ground truth's model, id and time; its known labels are left in `work.seen` and its actual
    /// ones in `work.predicted`.
    fn truth<'a>(
        &'a self,
        raw: &'a [u8],
        reading: Option<&'a Reading>,
        scratch: &mut Scratch<'a>,
        work: &mut Work,
    ) -> Option<(usize, Cow<'a, str>, f64)> {
        let (m, top, ts) = self.common(raw, Kind::GroundTruth, reading, scratch)?;
        let spec = &self.models[m];
        let n = spec.labels.len();
        work.seen.clear();
        work.predicted.clear();
        work.predicted.resize(n, false);
        match top.labels {
            Labels::Absent => return None,
            Labels::List => {
                // Full ground truth: every label known, the listed ones positive.
                if !label_set(spec, &scratch.labels, &mut work.predicted) {
                    return None;
                }
                if spec.multiclass && scratch.labels.len() != 1 {
                    return None;
                }
                work.seen.resize(n, true);
            }
            Labels::Object => {
                // Partial ground truth: only the stated labels are known (never for multiclass).
                if spec.multiclass || scratch.label_values.is_empty() {
                    return None;
                }
                work.seen.resize(n, false);
                for (label, value) in &scratch.label_values {
                    let i = spec.index_of(label)?;
                    if std::mem::replace(&mut work.seen[i], true) {
                        return None;
                    }
                    // Exactly what the exact decoder takes: a bool, or the integer 0 or 1.
                    work.predicted[i] = match *value {
                        Scalar::Bool(b) => b,
                        Scalar::U(0) => false,
                        Scalar::U(1) => true,
                        _ => return None,
                    };
                }
            }
        }
        Some((m, top.id?, ts))
    }
}

/// Epoch seconds of an event's `timestamp`, as monitor.events.parse_timestamp computes them, when it
/// lies within the years 2000-2100: an RFC 3339 string of the shape `timestamp::parse` takes, or a
/// number (seconds, or milliseconds from 1e11 on).
fn event_time(value: &Scalar<'_>) -> Option<f64> {
    let ts = match value {
        Scalar::Str(s) => timestamp::parse(s.as_bytes())?,
        // Python's float(int) and Rust's `as` both round to nearest; anything in range is exact anyway.
        number @ (Scalar::U(_) | Scalar::F(_)) => {
            let v = match *number {
                Scalar::U(u) => u as f64,
                Scalar::F(f) => f,
                _ => unreachable!(),
            };
            if v >= MILLIS_CUTOFF {
                v / 1000.0
            } else {
                v
            }
        }
        // Negative numbers and -0 are out of range; anything else is the exact decoder's to word.
        _ => return None,
    };
    (EPOCH_2000..EPOCH_2100).contains(&ts).then_some(ts)
}

/// Marks `names` in `out` (one slot per configured label); false when one is not a configured label,
/// is repeated, or there are more names than labels.
fn label_set(spec: &ModelSpec, names: &[Cow<'_, str>], out: &mut [bool]) -> bool {
    if names.len() > out.len() {
        return false;
    }
    for name in names {
        match spec.index_of(name) {
            Some(i) if !out[i] => out[i] = true,
            _ => return false,
        }
    }
    true
}

/// The predicted labels of a prediction whose scores are in `work.scores`, into `work.predicted`: the
/// served list when there is one (exactly one class for multiclass), else the highest-scoring class
/// (the first on ties, as numpy's argmax) for multiclass, else score >= threshold per label.
fn served_or_derived(spec: &ModelSpec, served: bool, names: &[Cow<'_, str>], work: &mut Work) -> bool {
    let n = spec.labels.len();
    work.predicted.clear();
    if served {
        work.predicted.resize(n, false);
        return label_set(spec, names, &mut work.predicted) && (!spec.multiclass || names.len() == 1);
    }
    if spec.multiclass {
        work.predicted.resize(n, false);
        let mut best = 0;
        for (i, &s) in work.scores.iter().enumerate().skip(1) {
            if s > work.scores[best] {
                best = i;
            }
        }
        work.predicted[best] = true;
    } else {
        work.predicted.extend(work.scores.iter().zip(&spec.thresholds).map(|(s, t)| s >= t));
    }
    true
}

/// Whether two of the pairs at `at` have the same key.
fn repeats<V>(pairs: &[(Cow<'_, str>, V)], at: &[usize]) -> bool {
    if at.len() <= 16 {
        return at.iter().enumerate().any(|(i, &a)| at[..i].iter().any(|&b| pairs[a].0 == pairs[b].0));
    }
    let mut seen = AHashSet::default();
    !at.iter().all(|&a| seen.insert(pairs[a].0.as_ref()))
}

// --- Decoding on several cores ------------------------------------------------------------------------
//
// A batch is cut into consecutive chunks, each decoded on its own thread, and the chunks' columns are
// joined in order: rows keep their batch order, a model's rows are renumbered after the previous chunks',
// and version codes are renumbered so that versions are numbered by first appearance in the whole batch,
// exactly as one pass would number them. The result equals `predictions` / `ground_truth` on one thread.

/// Fewest events per chunk: below this a thread costs more than it saves.
pub const MIN_CHUNK: usize = 16_384;

impl Decoder {
    /// `predictions` over up to `threads` cores; the same batch.
    pub fn predictions_par<'a>(
        &'a self,
        raws: &[&'a [u8]],
        reading: Option<&'a Reading>,
        threads: usize,
    ) -> Batch<PredBlock<'a>> {
        joined(run_chunks(raws, threads, |chunk| self.predictions(chunk, reading)), threads, append_predictions)
    }

    /// `ground_truth` over up to `threads` cores; the same batch.
    pub fn ground_truth_par<'a>(
        &'a self,
        raws: &[&'a [u8]],
        reading: Option<&'a Reading>,
        threads: usize,
    ) -> Batch<TruthBlock> {
        joined(run_chunks(raws, threads, |chunk| self.ground_truth(chunk, reading)), threads, append_truths)
    }
}

fn run_chunks<'a, B: Send, F>(raws: &[&'a [u8]], threads: usize, decode: F) -> Vec<Batch<B>>
where
    F: Fn(&[&'a [u8]]) -> Batch<B> + Sync,
{
    let decode = &decode;
    threads::run_all(
        threads::even_ranges(raws.len(), threads, MIN_CHUNK).into_iter().map(|(a, b)| move || decode(&raws[a..b])),
    )
}

/// The chunks' batches as one, in chunk order. Each later chunk's columns are appended on `threads`
/// threads: a 1M-event batch's columns are hundreds of megabytes, and one thread copying them was a
/// tenth of its decoding.
fn joined<B>(parts: Vec<Batch<B>>, threads: usize, append: impl Fn(&mut Batch<B>, Batch<B>, usize)) -> Batch<B> {
    let mut parts = parts.into_iter();
    let mut out = parts.next().expect("at least one chunk");
    for part in parts {
        append(&mut out, part, threads);
    }
    out
}

/// `dst.extend(src)` as a job weighing the bytes it copies.
fn extend_job<'a, T: Copy + Send + Sync + 'a>(dst: &'a mut Vec<T>, src: Vec<T>) -> threads::Weighted<'a> {
    (src.len() * std::mem::size_of::<T>(), Box::new(move || dst.extend_from_slice(&src)))
}

fn ids_job(dst: &mut Ids, src: Ids) -> threads::Weighted<'_> {
    (src.data.len() + 16 * src.len(), Box::new(move || dst.extend(src)))
}

/// Rows of `part` (their model's rows numbered from 0) renumbered after `out`'s: a job, run with the rest.
fn rows_job<'a>(
    model: &'a mut Vec<i32>,
    row: &'a mut Vec<i64>,
    offsets: Vec<i64>,
    part_model: Vec<i32>,
    part_row: Vec<i64>,
) -> threads::Weighted<'a> {
    (
        12 * part_model.len(),
        Box::new(move || {
            model.extend_from_slice(&part_model);
            row.extend(
                part_model.iter().zip(&part_row).map(|(&m, &r)| if m < 0 { r } else { r + offsets[m as usize] }),
            );
        }),
    )
}

fn append_predictions<'a>(out: &mut Batch<PredBlock<'a>>, part: Batch<PredBlock<'a>>, threads: usize) {
    let offsets: Vec<i64> = out.blocks.iter().map(|b| b.ids.len() as i64).collect();
    let mut jobs = vec![rows_job(&mut out.model, &mut out.row, offsets, part.model, part.row)];
    for (block, more) in out.blocks.iter_mut().zip(part.blocks) {
        if more.ids.is_empty() {
            continue;
        }
        // The part's versions in its own first-appearance order: new ones take the next codes.
        let lut: Vec<i64> = more.version_names.into_iter().map(|name| block.code_for(name)).collect();
        let PredBlock { ids, version_code, ts, scores, predicted, latency, ignored, numeric, categorical, .. } = block;
        let codes = more.version_code;
        jobs.push((8 * codes.len(), Box::new(move || version_code.extend(codes.iter().map(|&c| lut[c as usize])))));
        jobs.push(ids_job(ids, more.ids));
        jobs.push(extend_job(ts, more.ts));
        jobs.push(extend_job(scores, more.scores));
        jobs.push(extend_job(predicted, more.predicted));
        jobs.push(extend_job(latency, more.latency));
        jobs.push(extend_job(ignored, more.ignored));
        jobs.push(extend_job(numeric, more.numeric));
        jobs.push(extend_job(categorical, more.categorical));
    }
    threads::run_weighted(jobs, threads);
}

fn append_truths(out: &mut Batch<TruthBlock>, part: Batch<TruthBlock>, threads: usize) {
    let offsets: Vec<i64> = out.blocks.iter().map(|b| b.ids.len() as i64).collect();
    let mut jobs = vec![rows_job(&mut out.model, &mut out.row, offsets, part.model, part.row)];
    for (block, more) in out.blocks.iter_mut().zip(part.blocks) {
        let TruthBlock { ids, ts, known, actual, full } = block;
        jobs.push(ids_job(ids, more.ids));
        jobs.push(extend_job(ts, more.ts));
        jobs.push(extend_job(known, more.known));
        jobs.push(extend_job(actual, more.actual));
        jobs.push(extend_job(full, more.full));
    }
    threads::run_weighted(jobs, threads);
}

// --- Lines of a file --------------------------------------------------------------------------------

/// Whitespace as Python's `bytes.strip()` takes it.
fn blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
}

/// The lines of a JSON-lines buffer in one pass (read::split_lines cuts it on threads): the reference
/// the tests compare with.
#[cfg(test)]
pub fn split_lines(buf: &[u8], from: usize) -> (Vec<i64>, Vec<i64>, Option<Vec<i64>>) {
    let lines = split_range(buf, from.min(buf.len()), buf.len());
    (lines.starts, lines.ends, lines.numbers)
}

/// The lines of `buf[from..to]` as (start, end) byte offsets into `buf`, without their LF or CRLF end,
/// blank lines left out, and, when some were left out, each kept line's 1-based number counted from
/// `from`: the lines monitor.inputs.split_lines makes with `bytes.split`.
pub struct Lines {
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
    /// Each kept line's number, when some line was blank.
    pub numbers: Option<Vec<i64>>,
    /// Every line, blank ones included.
    pub count: i64,
}

/// The `Lines` of the range `from..to` of `buf`.
pub fn split_range(buf: &[u8], from: usize, to: usize) -> Lines {
    let buf = &buf[..to];
    let mut starts = Vec::with_capacity((to - from) / 256 + 1);
    let mut ends = Vec::with_capacity((to - from) / 256 + 1);
    let mut numbers: Option<Vec<i64>> = None;
    let mut start = from;
    let mut line = 0i64;
    while start < to {
        let end = memchr::memchr(b'\n', &buf[start..]).map_or(to, |k| start + k);
        line += 1;
        let trimmed = if end > start && buf[end - 1] == b'\r' { end - 1 } else { end };
        if blank(&buf[start..trimmed]) {
            numbers.get_or_insert_with(|| (1..line).collect());
        } else {
            starts.push(start as i64);
            ends.push(trimmed as i64);
            if let Some(n) = numbers.as_mut() {
                n.push(line);
            }
        }
        start = end + 1;
    }
    Lines { starts, ends, numbers, count: line }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(categories: Option<FxHashMap<String, i64>>) -> Decoder {
        let spec = ModelSpec::new(
            vec!["a".into(), "b".into()],
            vec![0.5, 0.7],
            false,
            vec!["n".into()],
            vec!["c".into()],
            vec![categories],
            vec![9],
        )
        .unwrap();
        Decoder::new(1000, vec!["m".into()], vec![spec]).unwrap()
    }

    const HEAD: &str = r#""prediction_id": "p", "model": "m", "timestamp": "2026-01-01T00:00:00Z""#;

    /// scores, predicted, latency, ignored, numeric, categorical, version of one prediction.
    type Row = (Vec<f64>, Vec<bool>, f64, i64, Vec<f64>, Vec<i64>, String);

    fn one(d: &Decoder, body: &str) -> Option<Row> {
        let raw = format!("{{{HEAD}, {body}}}");
        let batch = d.predictions(&[raw.as_bytes()], None);
        if batch.model[0] < 0 {
            return None;
        }
        let b = &batch.blocks[0];
        Some((
            b.scores.clone(),
            b.predicted.clone(),
            b.latency[0],
            b.ignored[0],
            b.numeric.clone(),
            b.categorical.clone(),
            b.version_names[b.version_code[0] as usize].to_string(),
        ))
    }

    #[test]
    fn prediction_columns() {
        let cats: FxHashMap<String, i64> =
            [("en".into(), 0), ("1".into(), 1), ("True".into(), 2)].into_iter().collect();
        let d = decoder(Some(cats));
        let (s, p, lat, ign, num, cat, v) =
            one(&d, r#""scores": {"b": 0.7, "a": 0, "x": "y"}, "latency_ms": 5, "features": {"n": 3, "c": "en"}"#)
                .unwrap();
        assert_eq!(
            (s, p, lat, ign, num, cat, v.as_str()),
            (vec![0.0, 0.7], vec![false, true], 0.005, 1, vec![3.0], vec![0], "unknown")
        );
        let row = |body: &str| one(&d, &format!(r#""scores": {{"a": 1, "b": 0.5}}, {body}"#));
        assert_eq!(row(r#""features": {"c": 1}"#).unwrap().5, [1]);
        assert_eq!(row(r#""features": {"c": true}"#).unwrap().5, [2]);
        assert_eq!(row(r#""features": {"c": false}"#).unwrap().5, [9]);
        assert_eq!(row(r#""features": {"c": -3}"#).unwrap().5, [9]);
        assert_eq!(row(r#""features": {"c": null, "n": null}"#).unwrap().5, [-1]);
        assert!(row(r#""features": {"n": null}"#).unwrap().4[0].is_nan());
        assert!(row(r#""latency_ms": null"#).unwrap().2.is_nan());
        assert_eq!(row(r#""model_version": "v2""#).unwrap().6, "v2");
        assert_eq!(one(&decoder(None), r#""scores": {"a": 1, "b": 0.5}, "features": {"c": "zz"}"#).unwrap().5, [0]);
    }

    #[test]
    fn prediction_refusals() {
        let d = decoder(None);
        let refused = |body: &str| one(&d, body).is_none();
        assert!(refused(r#""scores": {"a": 1}"#));
        assert!(refused(r#""scores": {"a": 1, "b": true}"#));
        assert!(refused(r#""scores": {"a": 1, "b": null}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 2}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 1.0000001}"#));
        assert!(refused(r#""scores": {"a": 1, "b": -0}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0, "b": 0}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0, "x": 1, "x": 2}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "model_version": null"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "model_version": """#));
        assert!(refused(&format!(r#""scores": {{"a": 1, "b": 0}}, "model_version": "{}""#, "v".repeat(65))));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "latency_ms": -1"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "latency_ms": true"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "features": {"n": true}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "features": {"n": "1"}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "features": {"c": 1.5}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "features": {"c": [1]}"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "features": []"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "predicted": ["a", "a"]"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "predicted": ["z"]"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "predicted": ["a", "b", "a"]"#));
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "predicted": "a""#));
        assert!(!refused(r#""scores": {"a": 1, "b": 0}, "features": {"other": [1e18, {"x": null}]}"#));
        // Anything as large as 2**63 could have been an integer literal beyond 64 bits.
        assert!(refused(r#""scores": {"a": 1, "b": 0}, "features": {"other": [1e300]}"#));
    }

    #[test]
    fn common_refusals() {
        let d = decoder(None);
        let ok = |raw: &[u8]| d.predictions(&[raw], None).model[0] >= 0;
        let scores = r#""scores": {"a": 1, "b": 0}"#;
        assert!(ok(format!(
            r#"{{"prediction_id": "p", "model": "m", "timestamp": "2026-01-01T00:00:00Z", {scores}}}"#
        )
        .as_bytes()));
        assert!(!ok(format!(
            r#"{{"prediction_id": "", "model": "m", "timestamp": "2026-01-01T00:00:00Z", {scores}}}"#
        )
        .as_bytes()));
        assert!(!ok(format!(
            r#"{{"prediction_id": "p", "model": "n", "timestamp": "2026-01-01T00:00:00Z", {scores}}}"#
        )
        .as_bytes()));
        for (ts, fast) in [("1767225600", true), ("1767225600000", true), ("1767225600.5", true), ("-5", false),
                           ("1e13", false), ("946684799.999", false), ("true", false), ("-0", false)] {
            let raw = format!(r#"{{"prediction_id": "p", "model": "m", "timestamp": {ts}, {scores}}}"#);
            assert_eq!(ok(raw.as_bytes()), fast, "{ts}");
        }
        assert!(!ok(format!(
            r#"{{"prediction_id": "p", "model": "m", "timestamp": "2100-01-01T00:00:00Z", {scores}}}"#
        )
        .as_bytes()));
        assert!(!ok(format!(
            r#"{{"prediction_id": "p", "model": "m", "timestamp": "1999-12-31T23:59:59.999Z", {scores}}}"#
        )
        .as_bytes()));
        assert!(ok(format!(
            r#"{{"prediction_id": "p", "model": "m", "timestamp": "1999-12-31T23:00:00-01:00", {scores}}}"#
        )
        .as_bytes()));
        assert!(!ok(b"{\"prediction_id\": \"\xff\", \"model\": \"m\"}"));
        let big = format!(
            r#"{{"prediction_id": "p", "model": "m", "timestamp": "2026-01-01T00:00:00Z", {scores}, "pad": "{}"}}"#,
            "x".repeat(1000)
        );
        assert!(!ok(big.as_bytes()));
    }

    #[test]
    fn ground_truth() {
        let d = decoder(None);
        let raws: Vec<String> = [
            r#"["b"]"#,
            "[]",
            r#"["a", "b"]"#,
            r#"["a", "a"]"#,
            r#"["c"]"#,
            r#"{"a": 1}"#,
            "null",
            r#"{"b": false, "a": true}"#,
            r#"{"b": 0, "a": 2}"#,
            r#"{"a": 1, "a": 1}"#,
            "{}",
            r#"{"a": 1.0}"#,
            r#"{"a": -0}"#,
        ]
        .iter()
        .map(|l| format!(r#"{{{HEAD}, "labels": {l}, "scores": 5}}"#))
        .collect();
        let refs: Vec<&[u8]> = raws.iter().map(|r| r.as_bytes()).collect();
        let batch = d.ground_truth(&refs, None);
        assert_eq!(batch.model, [0, 0, 0, -1, -1, 0, -1, 0, -1, -1, -1, -1, -1]);
        assert_eq!(batch.row, [0, 1, 2, -1, -1, 3, -1, 4, -1, -1, -1, -1, -1]);
        let b = &batch.blocks[0];
        assert_eq!(b.actual, [false, true, false, false, true, true, true, false, true, false]);
        assert_eq!(b.known, [true, true, true, true, true, true, true, false, true, true]);
        assert_eq!(b.full, [true, true, true, false, true]);
    }

    #[test]
    fn served_lists_and_multiclass() {
        let multi = ModelSpec::new(
            vec!["x".into(), "y".into(), "z".into()],
            vec![0.5; 3],
            true,
            vec![],
            vec![],
            vec![],
            vec![],
        )
        .unwrap();
        let d = Decoder::new(1000, vec!["m".into()], vec![multi]).unwrap();
        let predicted = |body: &str| {
            let raw = format!("{{{HEAD}, {body}}}");
            let batch = d.predictions(&[raw.as_bytes()], None);
            (batch.model[0] >= 0).then(|| batch.blocks[0].predicted.clone())
        };
        let scores = r#""scores": {"x": 0.2, "y": 0.4, "z": 0.4}"#;
        assert_eq!(predicted(scores), Some(vec![false, true, false]));
        assert_eq!(predicted(&format!(r#"{scores}, "predicted": ["z"]"#)), Some(vec![false, false, true]));
        assert_eq!(predicted(&format!(r#"{scores}, "predicted": null"#)), Some(vec![false, true, false]));
        assert_eq!(predicted(&format!(r#"{scores}, "predicted": []"#)), None);
        assert_eq!(predicted(&format!(r#"{scores}, "predicted": ["x", "y"]"#)), None);
        let truth = |labels: &str| {
            let raw = format!(r#"{{{HEAD}, "labels": {labels}}}"#);
            d.ground_truth(&[raw.as_bytes()], None).model[0] >= 0
        };
        assert!(truth(r#"["y"]"#));
        assert!(!truth("[]"));
        assert!(!truth(r#"["x", "y"]"#));
        assert!(!truth(r#"{"x": 1}"#));
        let served = |body: &str| one(&decoder(None), &format!(r#""scores": {{"a": 0.9, "b": 0.9}}, {body}"#));
        assert_eq!(served(r#""predicted": []"#).unwrap().1, [false, false]);
        assert_eq!(served(r#""predicted": ["b"]"#).unwrap().1, [false, true]);
    }

    /// Chunks decoded on several threads and joined give the columns of one pass: rows in order, each
    /// model's rows renumbered, versions numbered by first appearance in the whole batch.
    #[test]
    fn chunks_join_as_one_pass() {
        let spec = |labels: &[&str]| {
            ModelSpec::new(labels.iter().map(|l| l.to_string()).collect(), vec![0.5; labels.len()], false,
                           vec!["n".into()], vec![], vec![], vec![])
            .unwrap()
        };
        let d = Decoder::new(1000, vec!["m".into(), "k".into()], vec![spec(&["a", "b"]), spec(&["x"])]).unwrap();
        let n = 3 * MIN_CHUNK + 17;
        let preds: Vec<String> = (0..n)
            .map(|i| match i % 7 {
                // Versions that first appear in a later chunk, one model that only a later chunk holds.
                0 => format!(r#"{{"prediction_id": "p{i}", "model": "m", "timestamp": {}, "scores": {{"a": 0.{}, "b": 1}}, "model_version": "v{}"}}"#,
                             1.7e9 + i as f64, i % 10, i * 5 / n),
                1 if i > n / 2 => format!(r#"{{"prediction_id": "p{i}", "model": "k", "timestamp": 1.7e9, "scores": {{"x": 0.25}}, "features": {{"n": {i}}}}}"#),
                2 => "not json".to_string(),
                _ => format!(r#"{{"prediction_id": "p{i}", "model": "m", "timestamp": "2026-01-01T00:00:00Z", "scores": {{"a": 1, "b": 0}}, "model_version": "v{}"}}"#, (n - i) * 3 / n),
            })
            .collect();
        let refs: Vec<&[u8]> = preds.iter().map(|r| r.as_bytes()).collect();
        let one = d.predictions(&refs, None);
        let par = d.predictions_par(&refs, None, 3);
        assert_eq!((&one.model, &one.row), (&par.model, &par.row));
        for (a, b) in one.blocks.iter().zip(&par.blocks) {
            assert_eq!((&a.ids, &a.version_names, &a.version_code), (&b.ids, &b.version_names, &b.version_code));
            assert_eq!((&a.ts, &a.scores, &a.predicted), (&b.ts, &b.scores, &b.predicted));
            assert_eq!((&a.ignored, &a.categorical), (&b.ignored, &b.categorical));
            assert_eq!(a.numeric.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                       b.numeric.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            assert_eq!(a.latency.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                       b.latency.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
        assert_eq!(par.blocks[0].version_names.len(), 5);
        assert!(par.blocks[1].ids.len() > 1000);
        let truths: Vec<String> = (0..n)
            .map(|i| match i % 5 {
                0 => format!(r#"{{"prediction_id": "p{i}", "model": "k", "timestamp": 1.7e9, "labels": {{"x": 1}}}}"#),
                1 => "[]".to_string(),
                _ => format!(r#"{{"prediction_id": "p{i}", "model": "m", "timestamp": 1.7e9, "labels": {{"a": {}}}}}"#, i % 2),
            })
            .collect();
        let refs: Vec<&[u8]> = truths.iter().map(|r| r.as_bytes()).collect();
        let one = d.ground_truth(&refs, None);
        let par = d.ground_truth_par(&refs, None, 4);
        assert_eq!((&one.model, &one.row), (&par.model, &par.row));
        for (a, b) in one.blocks.iter().zip(&par.blocks) {
            assert_eq!((&a.ids, &a.ts, &a.known, &a.actual, &a.full), (&b.ids, &b.ts, &b.known, &b.actual, &b.full));
        }
        assert_eq!(threads::even_ranges(MIN_CHUNK * 2 - 1, 8, MIN_CHUNK).len(), 1);
    }

    #[test]
    fn lines_of_a_buffer() {
        let (s, e, n) = split_lines(b"{a}\r\n{bb}\n", 0);
        assert_eq!((s, e, n), (vec![0, 5], vec![3, 9], None));
        let (s, e, n) = split_lines(b"xyz{a}\n \t\r\n\n{b}\r", 3);
        assert_eq!((s, e, n), (vec![3, 12], vec![6, 15], Some(vec![1, 4])));
        assert_eq!(split_lines(b"", 0).0.len(), 0);
        assert_eq!(split_lines(b"\n\n", 0), (vec![], vec![], Some(vec![])));
    }
}
