//! A flush's window statistics as dense block deltas, computed from the join's output columns and the
//! accepted predictions in one pass per row (`monitor.engine.model_state.ModelState._apply` in Rust).
//!
//! The pure-Python `_apply` is the specification: it lists every contribution as (cell index, weight) and
//! sums them with one `np.bincount`, which adds in list order. Here the contributions are added in place,
//! one block at a time, into accumulators kept between blocks, and only the touched cells are handed back,
//! as sparse rows (a flush's blocks are mostly pending-score removals: about 6% of their cells are touched). Every cell receives contributions of one kind only (a cell is a count, or a sum of scores,
//! ...), and of that kind in the same order as the list (predictions by row, then pending removals by
//! row, then joins by row; a segment's copy of a row goes to a block of its own), so every cell gets the
//! same additions in the same order and the deltas are identical to the last bit, not merely close.

use std::ops::Range;

use rustc_hash::FxHashMap;

use crate::threads;

/// Positions in the "scalars" field (windows.S_*), in this order.
#[derive(Clone, Copy)]
pub struct Scalars {
    pub predictions: usize,
    pub joined: usize,
    pub subset_n: usize,
    pub subset_ok: usize,
    pub card_actual: usize,
    pub card_actual_n: usize,
    pub card_pred: usize,
    pub pending: usize,
}

/// Offsets of the statistics inside a block vector (windows.Layout) and what bins them.
pub struct Layout {
    pub labels: usize,
    pub size: usize,
    pub scalars_at: usize,
    pub scalars: Scalars,
    pub outcomes: usize,
    pub calib: usize,
    pub pending: usize,
    pub pred_pos: usize,
    pub score_bins: usize,
    pub feat_bins: usize,
    pub feat_missing: usize,
    pub pairs: usize,
    pub confusion: usize,
    pub thr_hist: usize,
    pub calibration_bins: usize,
    pub threshold_bins: usize,
    /// Width of a label's row of reference score bins (windows.SCORE_BINS).
    pub reference_bins: usize,
    /// Reference bins per score (one edge list per label) and per numeric feature; empty without reference.
    pub score_edges: Vec<Vec<f64>>,
    pub numeric_edges: Vec<Vec<f64>>,
    pub reference: bool,
    pub feature_offsets: Vec<usize>,
    pub n_numeric: usize,
    pub n_categorical: usize,
    pub pair_labels: usize,
    pub multiclass: bool,
    pub advised_slot: Vec<i64>,
}

/// Store keys per cohort: `copies` keys per cohort, row-major; None: the key is the cohort itself.
pub struct Cohorts<'a> {
    pub table: Option<&'a [i64]>,
    pub copies: usize,
}

impl Cohorts<'_> {
    fn key(&self, cohort: i64, copy: usize) -> i64 {
        match self.table {
            None => cohort,
            Some(t) => t[cohort as usize * self.copies + copy],
        }
    }
}

pub struct Predictions<'a> {
    pub version: &'a [i64],
    pub ts: &'a [f64],
    pub scores: &'a [f64],
    pub predicted: &'a [bool],
    pub numeric: &'a [f64],
    pub categorical: &'a [i64],
}

pub struct Unpended<'a> {
    pub version: &'a [i64],
    pub ts: &'a [f64],
    pub scores: &'a [f64],
    pub predicted: &'a [bool],
}

pub struct Joins<'a> {
    pub version: &'a [i64],
    pub obs: &'a [f64],
    pub scores: &'a [f64],
    pub predicted: &'a [bool],
    pub known: &'a [bool],
    pub actual: &'a [bool],
    pub full: &'a [bool],
    pub sign: &'a [f64],
}

/// Which minute buckets the store still keeps (BlockStore.newest_fine, fine_span, coarse_span).
pub struct Retention {
    pub newest_fine: i64,
    pub fine_span: i64,
    pub coarse_span: i64,
}

impl Retention {
    /// ModelState._count_late for one minute bucket.
    fn late(&self, m: i64) -> bool {
        let newest = self.newest_fine.max(m);
        !(m > newest - self.fine_span || m.div_euclid(60) > newest.div_euclid(60) - self.coarse_span)
    }
}

/// The deltas as sparse rows (CSR): block `i`'s touched cells are `cells[ptr[i]..ptr[i + 1]]` (distinct, in
/// no particular order), with `values` at the same positions; every other cell of the block is 0.0.
pub struct Deltas {
    /// Sorted distinct block keys (store key << 32 | minute), one per row.
    pub keys: Vec<i64>,
    pub ptr: Vec<i64>,
    pub cells: Vec<i64>,
    pub values: Vec<f64>,
    pub late_predictions: i64,
    pub late_ground_truth: i64,
}

/// Fewest contributions a thread fills blocks for: below this a thread costs more than it saves.
pub const MIN_ITEMS_PER_THREAD: usize = 16_384;

/// A flush's rows, by section (predictions, pending removals, joins).
struct Rows<'r, 'a> {
    preds: Option<&'r Predictions<'a>>,
    unpend: Option<&'r Unpended<'a>>,
    joins: Option<&'r Joins<'a>>,
}

/// Consecutive blocks' sparse rows: block k of the range ends at `ends[k]` in `cells`/`values`.
struct Filled {
    ends: Vec<i64>,
    cells: Vec<i64>,
    values: Vec<f64>,
}

/// Up to `k` consecutive ranges of blocks with about equal numbers of contributions (`starts` is the
/// prefix sum of each block's contributions); never an empty range unless there are no blocks.
fn block_ranges(starts: &[usize], k: usize) -> Vec<Range<usize>> {
    let nb = starts.len() - 1;
    let total = starts[nb];
    let mut out = Vec::with_capacity(k);
    let mut from = 0;
    for part in 1..k.min(nb) {
        let goal = total * part / k;
        let to = starts.partition_point(|&s| s < goal).clamp(from + 1, nb);
        if to >= nb {
            break;
        }
        out.push(from..to);
        from = to;
    }
    out.push(from..nb);
    out
}

/// One block's accumulators, kept between blocks and flushes so that a block costs its contributions, not
/// the layout size: only touched cells are written, listed, read back and reset to zero. `mark` holds, per
/// cell, the block that last listed it.
#[derive(Default)]
pub struct Scratch {
    sums: Vec<f64>,
    mark: Vec<u32>,
    block: u32,
    touched: Vec<usize>,
    /// A flush that stopped half-way (a panic) leaves sums behind: the next one clears them.
    dirty: bool,
}

impl Scratch {
    fn begin_flush(&mut self, size: usize) {
        if self.sums.len() != size || self.dirty {
            self.sums = vec![0.0; size];
            self.mark = vec![0; size];
            self.block = 0;
        }
        self.dirty = true;
    }

    fn begin_block(&mut self) {
        self.block = self.block.wrapping_add(1);
        if self.block == 0 {
            // Wrapped: marks from 2^32 blocks ago must not look current.
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.block = 1;
        }
        self.touched.clear();
    }

    /// `block[cell] += w`, noting the cell the first time.
    #[inline]
    fn add(&mut self, cell: usize, w: f64) {
        if self.mark[cell] != self.block {
            self.mark[cell] = self.block;
            self.touched.push(cell);
        }
        self.sums[cell] += w;
    }
}

/// numpy's `floor_divide` for floats (npy_divmod), so minute buckets match `windows.fine_bucket` exactly.
pub fn floor_divide(a: f64, b: f64) -> f64 {
    let m = a % b;
    if b == 0.0 {
        return a / b;
    }
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut floordiv = div.floor();
        if div - floordiv > 0.5 {
            floordiv += 1.0;
        }
        floordiv
    } else {
        0.0_f64.copysign(a / b)
    }
}

/// `floor_divide(ts, 60.0)` as an integer. A quotient whose floor is bracketed by exact products is that
/// floor, which is what `floor_divide` computes for it; only the rest pay for its `fmod` (a software
/// routine here, a few percent of a replay's apply).
fn minute(ts: f64) -> i64 {
    // Below 2^46 the products q * 60 and (q + 1) * 60 are integers under 2^53, so exact.
    const EXACT: f64 = (1u64 << 46) as f64;
    let q = (ts / 60.0).floor();
    if q.abs() < EXACT && q * 60.0 <= ts && ts < (q + 1.0) * 60.0 {
        return q as i64;
    }
    floor_divide(ts, 60.0) as i64
}

/// calibration.score_bins: equal-width bin, 1.0 in the last bin.
fn score_bin(s: f64, n_bins: usize) -> usize {
    ((s * n_bins as f64) as i64).min(n_bins as i64 - 1) as usize
}

/// drift.numeric_bins: np.searchsorted(edges, v, side="right") (NaN sorts last, as in numpy).
fn numeric_bin(edges: &[f64], v: f64) -> usize {
    if v.is_nan() {
        return edges.len() - edges.iter().rev().take_while(|e| e.is_nan()).count();
    }
    edges.partition_point(|&e| e <= v)
}

/// Block numbering: the sorted distinct keys, with the last lookup cached (rows come in time order).
struct Blocks {
    keys: Vec<i64>,
    index: FxHashMap<i64, usize>,
    last: (i64, usize),
}

impl Blocks {
    fn new(mut keys: Vec<i64>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        let index = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
        Blocks { keys, index, last: (i64::MIN, 0) }
    }

    fn index(&mut self, key: i64) -> usize {
        if self.last.0 != key {
            self.last = (key, self.index[&key]);
        }
        self.last.1
    }
}

fn block_key(store_key: i64, minute: i64) -> i64 {
    (store_key << 32) | minute
}

impl Layout {
    pub fn deltas(
        &self,
        cohorts: &Cohorts,
        preds: Option<&Predictions>,
        unpend: Option<&Unpended>,
        joins: Option<&Joins>,
        retention: &Retention,
        scratch: &mut [Scratch],
    ) -> Deltas {
        let copies = cohorts.copies;
        let pred_min: Vec<i64> = preds.map_or_else(Vec::new, |p| p.ts.iter().map(|&t| minute(t)).collect());
        let unpend_min: Vec<i64> = unpend.map_or_else(Vec::new, |u| u.ts.iter().map(|&t| minute(t)).collect());
        let join_min: Vec<i64> = joins.map_or_else(Vec::new, |j| j.obs.iter().map(|&t| minute(t)).collect());
        let mut all = Vec::with_capacity((pred_min.len() + unpend_min.len() + join_min.len()) * copies);
        let sections: [(&[i64], &[i64]); 3] = [
            (preds.map_or(&[][..], |p| p.version), &pred_min),
            (unpend.map_or(&[][..], |u| u.version), &unpend_min),
            (joins.map_or(&[][..], |j| j.version), &join_min),
        ];
        for (versions, minutes) in sections {
            for (&v, &m) in versions.iter().zip(minutes) {
                for c in 0..copies {
                    all.push(block_key(cohorts.key(v, c), m));
                }
            }
        }
        let mut blocks = Blocks::new(all);
        let nb = blocks.keys.len();
        // Each (section, row, copy) in list order with its block, then ordered by block, stably: a block's
        // contributions are then added one block at a time (its accumulators stay in the first-level cache)
        // in their list order, which is all the per-cell order depends on.
        let mut items: Vec<(u32, u8, u32)> = Vec::new();
        for (section, (versions, minutes)) in sections.iter().enumerate() {
            for (i, (&v, &m)) in versions.iter().zip(minutes.iter()).enumerate() {
                for c in 0..copies {
                    let block = blocks.index(block_key(cohorts.key(v, c), m));
                    items.push((block as u32, section as u8, i as u32));
                }
            }
        }
        let mut starts = vec![0_usize; nb + 1];
        for &(block, _, _) in &items {
            starts[block as usize + 1] += 1;
        }
        for b in 0..nb {
            starts[b + 1] += starts[b];
        }
        let mut next = starts.clone();
        let mut order = vec![(0_u8, 0_u32); items.len()];
        for &(block, section, i) in &items {
            order[next[block as usize]] = (section, i);
            next[block as usize] += 1;
        }
        let late_predictions = pred_min.iter().filter(|&&m| retention.late(m)).count() as i64;
        let late_ground_truth = join_min.iter().filter(|&&m| retention.late(m)).count() as i64;
        let rows = Rows { preds, unpend, joins };
        // Blocks are independent: a large flush's blocks are cut into consecutive ranges of about equal
        // contributions, each filled on its own thread with its own accumulators, and the ranges' rows are
        // joined in block order. Every block is filled exactly as on one thread.
        let ranges = block_ranges(&starts, scratch.len().min(items.len() / MIN_ITEMS_PER_THREAD).max(1));
        debug_assert!(ranges.len() <= scratch.len(), "a set of accumulators per range");
        let (rows, starts, order) = (&rows, &starts, &order);
        let parts = threads::run_all(
            ranges
                .into_iter()
                .zip(scratch.iter_mut())
                .map(|(range, sc)| move || self.fill(range, starts, order, rows, sc)),
        );
        let mut ptr = Vec::with_capacity(nb + 1);
        ptr.push(0_i64);
        let (mut cells, mut values) = (Vec::new(), Vec::new());
        for part in parts {
            let base = cells.len() as i64;
            ptr.extend(part.ends.iter().map(|&e| base + e));
            if cells.is_empty() {
                (cells, values) = (part.cells, part.values);
            } else {
                cells.extend(part.cells);
                values.extend(part.values);
            }
        }
        Deltas { keys: blocks.keys, ptr, cells, values, late_predictions, late_ground_truth }
    }

    /// The blocks of `range`, each from its contributions `order[starts[b]..starts[b + 1]]`.
    fn fill(
        &self,
        range: Range<usize>,
        starts: &[usize],
        order: &[(u8, u32)],
        rows: &Rows,
        scratch: &mut Scratch,
    ) -> Filled {
        let nl = self.labels;
        scratch.begin_flush(self.size);
        let mut out = Filled { ends: Vec::with_capacity(range.len()), cells: Vec::new(), values: Vec::new() };
        for b in range {
            scratch.begin_block();
            for &(section, i) in &order[starts[b]..starts[b + 1]] {
                let i = i as usize;
                match (section, rows.preds, rows.unpend, rows.joins) {
                    (0, Some(p), _, _) => self.prediction_cells(scratch, p, i),
                    (1, _, Some(u), _) => {
                        let labels = i * nl..(i + 1) * nl;
                        self.pending_cells(scratch, &u.scores[labels.clone()], &u.predicted[labels], -1.0)
                    }
                    (2, _, _, Some(j)) => self.join_cells(scratch, j, i),
                    _ => unreachable!("an item of an absent section"),
                }
            }
            for &c in &scratch.touched {
                out.cells.push(c as i64);
                out.values.push(std::mem::take(&mut scratch.sums[c]));
            }
            out.ends.push(out.cells.len() as i64);
        }
        scratch.dirty = false;
        out
    }

    /// _prediction_cells for one row into its block `b`.
    fn prediction_cells(&self, b: &mut Scratch, p: &Predictions, i: usize) {
        let nl = self.labels;
        let s = &p.scores[i * nl..(i + 1) * nl];
        let pr = &p.predicted[i * nl..(i + 1) * nl];
        let sc = self.scalars_at;
        b.add(sc + self.scalars.predictions, 1.0);
        b.add(sc + self.scalars.card_pred, pr.iter().filter(|&&x| x).count() as f64);
        for (c, &x) in pr.iter().enumerate() {
            if x {
                b.add(self.pred_pos + c, 1.0);
            }
        }
        self.pending_cells(b, s, pr, 1.0);
        if self.reference {
            for (c, (&x, edges)) in s.iter().zip(&self.score_edges).enumerate() {
                b.add(self.score_bins + c * self.reference_bins + numeric_bin(edges, x), 1.0);
            }
        }
        let nn = self.n_numeric;
        for f in 0..nn + self.n_categorical {
            let bin = if f < nn {
                let x = p.numeric[i * nn + f];
                if x.is_nan() {
                    None
                } else {
                    Some(if self.reference { numeric_bin(&self.numeric_edges[f], x) } else { 0 })
                }
            } else {
                let x = p.categorical[i * self.n_categorical + f - nn];
                if x < 0 {
                    None
                } else {
                    Some(x as usize)
                }
            };
            match bin {
                None => b.add(self.feat_missing + f, 1.0),
                Some(bin) if self.reference => b.add(self.feat_bins + self.feature_offsets[f] + bin, 1.0),
                Some(_) => {}
            }
        }
        let k = self.pair_labels;
        if k >= 2 {
            let mut col = 0;
            for a in 0..k {
                for z in a + 1..k {
                    if pr[a] && pr[z] {
                        b.add(self.pairs + col, 1.0);
                    }
                    col += 1;
                }
            }
            if pr[..k].iter().filter(|&&x| x).count() < 2 {
                b.add(self.pairs + col, 1.0);
            }
        }
    }

    /// _pending_cells: counts and score sums of pending predictions per (label, score bin, predicted).
    fn pending_cells(&self, b: &mut Scratch, s: &[f64], pr: &[bool], sign: f64) {
        let stride = self.calibration_bins * 4;
        for (c, (&x, &p)) in s.iter().zip(pr).enumerate() {
            let cell = self.pending + c * stride + score_bin(x, self.calibration_bins) * 4 + (!p as usize) * 2;
            b.add(cell, sign);
            b.add(cell + 1, sign * x);
        }
        b.add(self.scalars_at + self.scalars.pending, sign);
    }

    /// _join_cells for one joined (or un-joined, sign -1) row.
    fn join_cells(&self, b: &mut Scratch, j: &Joins, i: usize) {
        let nl = self.labels;
        let r = i * nl..(i + 1) * nl;
        let (s, p, k, a) = (&j.scores[r.clone()], &j.predicted[r.clone()], &j.known[r.clone()], &j.actual[r]);
        let sign = j.sign[i];
        for c in 0..nl {
            if !k[c] {
                continue;
            }
            let code = (!a[c]) as usize + (!p[c] as usize) * 2; // tp 0, fp 1, fn 2, tn 3
            b.add(self.outcomes + c * 4 + code, sign);
            let cal = self.calib + c * self.calibration_bins * 3 + score_bin(s[c], self.calibration_bins) * 3;
            b.add(cal, sign);
            b.add(cal + 1, sign * s[c]);
            b.add(cal + 2, sign * (a[c] as u8 as f64));
            let slot = self.advised_slot[c];
            if slot >= 0 {
                let t = self.threshold_bins;
                b.add(self.thr_hist + slot as usize * t * 2 + score_bin(s[c], t) * 2 + a[c] as usize, sign);
            }
        }
        let sc = self.scalars_at;
        b.add(sc + self.scalars.joined, sign);
        if j.full[i] {
            let exact = p == a;
            b.add(sc + self.scalars.subset_n, sign);
            b.add(sc + self.scalars.subset_ok, sign * (exact as u8 as f64));
            b.add(sc + self.scalars.card_actual, sign * a.iter().filter(|&&x| x).count() as f64);
            b.add(sc + self.scalars.card_actual_n, sign);
            if self.multiclass {
                let argmax = |v: &[bool]| v.iter().position(|&x| x).unwrap_or(0);
                b.add(self.confusion + argmax(a) * nl + argmax(p), sign);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_is_floor_divide() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut values = vec![
            0.0,
            -0.0,
            59.99999999999999,
            60.0,
            -60.0,
            -1e-300,
            1e300,
            -1e300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE,
            4.0e15,
            -4.0e15,
        ];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = match x % 4 {
                0 => 1.7e9 + (x >> 20) as f64 / 1000.0, // epoch seconds with milliseconds
                1 => ((x >> 11) as f64 * 60.0) / 1.0e3, // near minute boundaries
                2 => f64::from_bits(x),                 // any bit pattern
                _ => -((x >> 30) as f64) / 7.0,         // negative times
            };
            values.push(t);
            values.push(t.next_up());
            values.push(t.next_down());
            values.push((t / 60.0).round() * 60.0);
        }
        for t in values {
            assert_eq!(minute(t), floor_divide(t, 60.0) as i64, "{t:e}");
        }
    }

    #[test]
    fn floor_divide_matches_python() {
        // Python: 59.99999999999999 // 60 == 0.0, -1 // 60 == -1.0, 120.0 // 60 == 2.0
        assert_eq!(floor_divide(59.99999999999999, 60.0), 0.0);
        assert_eq!(floor_divide(-1.0, 60.0), -1.0);
        assert_eq!(floor_divide(120.0, 60.0), 2.0);
        assert_eq!(floor_divide(1_764_547_199.999, 60.0), 29_409_119.0);
    }

    #[test]
    fn numeric_bins_are_searchsorted_right() {
        let e = [0.1, 0.5, 0.5, 0.9];
        let got: Vec<usize> = [0.0, 0.1, 0.3, 0.5, 0.95, f64::NAN].iter().map(|&v| numeric_bin(&e, v)).collect();
        assert_eq!(got, [0, 1, 1, 3, 4, 4]);
    }
}
