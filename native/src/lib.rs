//! `monitor._native`: the per-event core of the engine (docs/native.md). This file is the PyO3 glue;
//! the logic, which knows nothing of Python, is in `decode` (with `json` and `timestamp`), `join` and
//! `cells`.

mod cells;
mod decode;
mod expiry;
mod id_index;
mod join;
mod json;
mod mapped;
mod prefetch;
mod produce;
mod read;
mod records;
mod restore;
mod store;
mod threads;
mod timestamp;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use numpy::ndarray::Dimension;
use numpy::{
    AllowTypeChange, Element, PyArray1, PyArrayLike1, PyArrayLike2, PyArrayMethods, PyReadonlyArray, PyReadonlyArray1,
    PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyByteArrayMethods, PyBytes, PyDict, PyList, PyString};
use rustc_hash::FxHashMap;

use crate::decode::ModelSpec;
use crate::json::Kind;
use crate::mapped::{Field, MappingIn, Reading, Step};
use crate::join::{Checkpoint, Counters, JoinTable, PredIn, TruthIn};

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    m.add_class::<Join>()?;
    m.add_function(wrap_pyfunction!(unpack_records, m)?)?;
    m.add_function(wrap_pyfunction!(encode_record_batches, m)?)?;
    m.add_function(wrap_pyfunction!(set_producer_state, m)?)?;
    m.add_class::<Latest>()?;
    m.add_class::<Staged>()?;
    m.add("LOCAL_STORE_IN_USE", restore::IN_USE)?;
    m.add_function(wrap_pyfunction!(name_groups, m)?)?;
    m.add_class::<Cells>()?;
    m.add_function(wrap_pyfunction!(add_rows, m)?)?;
    m.add_function(wrap_pyfunction!(read_file, m)?)?;
    Ok(())
}

fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// A vector handed over to numpy without a copy.
fn column<T: Element>(py: Python<'_>, v: Vec<T>) -> Bound<'_, PyArray1<T>> {
    PyArray1::from_vec(py, v)
}

/// A row-major vector as a (rows, cols) matrix, also when `cols` is 0 (a model without numeric or
/// categorical features), where the length cannot tell the rows.
fn rows_of<T: Element>(py: Python<'_>, v: Vec<T>, rows: usize, cols: usize) -> PyResult<Bound<'_, PyAny>> {
    Ok(PyArray1::from_vec(py, v).reshape([rows, cols])?.into_any())
}

// --- Kafka record batches ---------------------------------------------------------------------------

type RecordColumns<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    i64,
    usize,
);

/// One partition's Fetch `records` bytes -> (data, key_start, key_end, value_start, value_end, offsets,
/// next_offset, batches): see records.rs.
#[pyfunction]
#[pyo3(signature = (records, fetch_offset, read_committed, aborted))]
fn unpack_records<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyBytes>,
    fetch_offset: i64,
    read_committed: bool,
    aborted: Vec<(i64, i64)>,
) -> PyResult<RecordColumns<'py>> {
    let raw = records.as_bytes();
    let cols = py.detach(|| records::unpack(raw, fetch_offset, read_committed, &aborted)).map_err(value_error)?;
    Ok((
        PyBytes::new(py, &cols.data),
        column(py, cols.key_start),
        column(py, cols.key_end),
        column(py, cols.value_start),
        column(py, cols.value_end),
        column(py, cols.offsets),
        cols.next_offset,
        cols.batches,
    ))
}

/// Transactional v2 record batches of one record per key (see produce.rs), each with its record count.
#[pyfunction]
#[pyo3(signature = (prefix, keys, ends, values, width, max_bytes, timestamp_ms))]
#[allow(clippy::too_many_arguments)]
fn encode_record_batches<'py>(
    py: Python<'py>,
    prefix: &[u8],
    keys: &[u8],
    ends: PyReadonlyArray1<'py, i64>,
    values: Option<&[u8]>,
    width: usize,
    max_bytes: usize,
    timestamp_ms: i64,
) -> PyResult<Vec<(Bound<'py, PyByteArray>, usize)>> {
    let ends = ends.as_slice()?;
    let batches = py
        .detach(|| produce::encode_batches(prefix, keys, ends, values, width, max_bytes, timestamp_ms))
        .map_err(value_error)?;
    Ok(batches.into_iter().map(|(raw, n)| (PyByteArray::new(py, &raw), n)).collect())
}

/// Writes the producer state into a batch from `encode_record_batches` (and its CRC), in place.
#[pyfunction]
fn set_producer_state(batch: &Bound<'_, PyByteArray>, producer_id: i64, epoch: i16, base_sequence: i32) -> PyResult<()> {
    // SAFETY: nothing else reads or resizes the bytearray while this runs (the GIL is held throughout).
    let raw = unsafe { batch.as_bytes_mut() };
    produce::set_producer_state(raw, producer_id, epoch, base_sequence).map_err(value_error)
}

/// Group keys by the name each holds at byte 1 (a big-endian u16 length, then the name): the state
/// changelog's join entry keys. -> (names in order of first appearance, each key's group; -1 when a key
/// is too short for its name).
#[pyfunction]
fn name_groups<'py>(
    py: Python<'py>,
    data: PyReadonlyArray1<'_, u8>,
    starts: PyReadonlyArray1<'_, i64>,
    ends: PyReadonlyArray1<'_, i64>,
) -> PyResult<(Vec<Bound<'py, PyBytes>>, Bound<'py, PyArray1<i64>>)> {
    let (buf, starts, ends) = (data.as_slice()?, starts.as_slice()?, ends.as_slice()?);
    if starts.len() != ends.len() {
        return Err(value_error("starts and ends of different lengths"));
    }
    let mut names: Vec<&[u8]> = Vec::new();
    let mut group = Vec::with_capacity(starts.len());
    let mut last = usize::MAX;
    for (&s, &e) in starts.iter().zip(ends) {
        let key = buf.get(s as usize..e as usize).filter(|_| s >= 0).ok_or_else(|| value_error("a slice outside the data"))?;
        let Some(name) = restore::model_of(key) else {
            group.push(-1);
            continue;
        };
        if last == usize::MAX || names[last] != name {
            last = match names.iter().position(|n| *n == name) {
                Some(g) => g,
                None => {
                    names.push(name);
                    names.len() - 1
                }
            };
        }
        group.push(last as i64);
    }
    Ok((names.iter().map(|n| PyBytes::new(py, n)).collect(), column(py, group)))
}

/// Record columns as numpy arrays: keys and values (uint8), their starts and ends.
type RecordArrays<'py> = (
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

fn record_arrays(py: Python<'_>, cols: records::KeyValueColumns) -> RecordArrays<'_> {
    let (keys, ks, ke, values, vs, ve) = cols;
    (column(py, keys), column(py, ks), column(py, ke), column(py, values), column(py, vs), column(py, ve))
}

/// Record columns handed in from Python (`unpack_records`'s layout) as slices, without a copy.
struct RecordsIn<'a, 'py> {
    data: &'a Bound<'py, PyBytes>,
    ks: PyReadonlyArray1<'py, i64>,
    ke: PyReadonlyArray1<'py, i64>,
    vs: PyReadonlyArray1<'py, i64>,
    ve: PyReadonlyArray1<'py, i64>,
}

impl RecordsIn<'_, '_> {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&[u8], &[i64], &[i64], &[i64], &[i64]) -> Result<T, String> + Send,
    ) -> PyResult<T> {
        let (data, ks, ke, vs, ve) =
            (self.data.as_bytes(), self.ks.as_slice()?, self.ke.as_slice()?, self.vs.as_slice()?, self.ve.as_slice()?);
        py.detach(|| f(data, ks, ke, vs, ve)).map_err(value_error)
    }
}

/// The newest value of every key over record columns (records.rs `Latest`): a compacted topic's state.
#[pyclass(module = "monitor._native")]
struct Latest {
    inner: records::Latest,
}

#[pymethods]
impl Latest {
    #[new]
    fn new() -> Self {
        Latest { inner: records::Latest::default() }
    }

    fn add<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        key_start: PyReadonlyArray1<'py, i64>,
        key_end: PyReadonlyArray1<'py, i64>,
        value_start: PyReadonlyArray1<'py, i64>,
        value_end: PyReadonlyArray1<'py, i64>,
    ) -> PyResult<()> {
        let inner = &mut self.inner;
        RecordsIn { data, ks: key_start, ke: key_end, vs: value_start, ve: value_end }
            .with(py, |data, ks, ke, vs, ve| inner.add(data, ks, ke, vs, ve))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The columns of the live keys (keys and values as uint8 arrays, handed over without a copy);
    /// leaves this empty.
    fn take_columns<'py>(&mut self, py: Python<'py>) -> RecordArrays<'py> {
        let inner = &mut self.inner;
        let cols = py.detach(|| inner.take_columns());
        record_arrays(py, cols)
    }
}

/// A state partition's changelog read into bounded memory (restore.rs `Staged`): join entries into sorted
/// runs of a staging store, the other records into memory. Or, made with `local`, the worker's local copy
/// of a partition's changelog, kept on disk across restarts.
#[pyclass(module = "monitor._native")]
struct Staged {
    /// None once closed.
    inner: Option<restore::Staged>,
}

impl Staged {
    fn get(&self) -> PyResult<&restore::Staged> {
        self.inner.as_ref().ok_or_else(|| value_error("the store is closed"))
    }

    fn get_mut(&mut self) -> PyResult<&mut restore::Staged> {
        self.inner.as_mut().ok_or_else(|| value_error("the store is closed"))
    }
}

#[pymethods]
impl Staged {
    #[new]
    #[pyo3(signature = (state_dir=None, window_bytes=restore::WINDOW_BYTES))]
    fn new(state_dir: Option<std::path::PathBuf>, window_bytes: usize) -> PyResult<Self> {
        Ok(Staged { inner: Some(restore::Staged::open(state_dir.as_deref(), window_bytes).map_err(value_error)?) })
    }

    #[staticmethod]
    #[pyo3(signature = (dir, window_bytes=restore::WINDOW_BYTES))]
    fn local(py: Python<'_>, dir: std::path::PathBuf, window_bytes: usize) -> PyResult<Self> {
        let inner = py.detach(|| restore::Staged::open_local(&dir, window_bytes)).map_err(value_error)?;
        Ok(Staged { inner: Some(inner) })
    }

    fn add<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        key_start: PyReadonlyArray1<'py, i64>,
        key_end: PyReadonlyArray1<'py, i64>,
        value_start: PyReadonlyArray1<'py, i64>,
        value_end: PyReadonlyArray1<'py, i64>,
    ) -> PyResult<()> {
        let inner = self.get_mut()?;
        RecordsIn { data, ks: key_start, ke: key_end, vs: value_start, ve: value_end }
            .with(py, |data, ks, ke, vs, ve| inner.add(data, ks, ke, vs, ve))
    }

    #[pyo3(signature = (key, value))]
    fn put(&mut self, key: &[u8], value: Option<&[u8]>) -> PyResult<()> {
        self.get_mut()?.put(key, value).map_err(value_error)
    }

    #[pyo3(signature = (prefix, ids, ends, rows, width))]
    fn add_entries<'py>(
        &mut self,
        py: Python<'py>,
        prefix: &[u8],
        ids: &[u8],
        ends: PyReadonlyArray1<'py, i64>,
        rows: Option<&[u8]>,
        width: usize,
    ) -> PyResult<()> {
        let ends = ends.as_slice()?;
        let inner = self.get_mut()?;
        py.detach(|| inner.add_entries(prefix, ids, ends, rows, width)).map_err(value_error)
    }

    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = self.get_mut()?;
        py.detach(|| inner.finish()).map_err(value_error)
    }

    fn seal(&mut self, py: Python<'_>, mark: &[u8]) -> PyResult<()> {
        let inner = self.get_mut()?;
        py.detach(|| inner.seal(mark)).map_err(value_error)
    }

    /// Closes the store (a local copy stays on disk; a staging store is deleted).
    fn close(&mut self, py: Python<'_>) {
        let inner = self.inner.take();
        py.detach(|| drop(inner));
    }

    fn take_others<'py>(&mut self, py: Python<'py>) -> PyResult<RecordArrays<'py>> {
        Ok(record_arrays(py, self.get_mut()?.take_others()))
    }

    #[getter]
    fn mark<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self.get()?.mark().map(|m| PyBytes::new(py, m)))
    }

    #[getter]
    fn records(&self) -> PyResult<usize> {
        Ok(self.get()?.records)
    }

    #[getter]
    fn bytes(&self) -> PyResult<usize> {
        Ok(self.get()?.bytes)
    }

    #[getter]
    fn staged(&self) -> PyResult<usize> {
        Ok(self.get()?.staged)
    }

    #[getter]
    fn dir(&self) -> PyResult<String> {
        Ok(self.get()?.dir.display().to_string())
    }
}

// --- Decoder ----------------------------------------------------------------------------------------

#[pyclass(module = "monitor._native", frozen)]
struct Decoder {
    inner: decode::Decoder,
}

fn required<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?.ok_or_else(|| value_error(format!("model dict has no {key:?}")))
}

#[pymethods]
impl Decoder {
    #[new]
    #[pyo3(signature = (max_bytes, models, readings=None))]
    fn new(
        max_bytes: usize,
        models: Vec<Bound<'_, PyDict>>,
        readings: Option<Vec<(String, Vec<Bound<'_, PyDict>>)>>,
    ) -> PyResult<Self> {
        let mut names = Vec::with_capacity(models.len());
        let mut specs = Vec::with_capacity(models.len());
        for m in &models {
            names.push(required(m, "name")?.extract::<String>()?);
            let spec = ModelSpec::new(
                required(m, "labels")?.extract()?,
                required(m, "thresholds")?.extract()?,
                required(m, "multiclass")?.extract()?,
                required(m, "numeric")?.extract()?,
                required(m, "categorical")?.extract()?,
                required(m, "categories")?.extract::<Vec<Option<FxHashMap<String, i64>>>>()?,
                required(m, "other_bin")?.extract()?,
            )
            .map_err(value_error)?;
            specs.push(spec);
        }
        let mut inner = decode::Decoder::new(max_bytes, names, specs).map_err(value_error)?;
        for (kind, mappings) in readings.unwrap_or_default() {
            let kind = match kind.as_str() {
                "predictions" => Kind::Prediction,
                "ground_truth" => Kind::GroundTruth,
                _ => return Err(value_error(format!("unknown reading kind {kind:?}"))),
            };
            let mappings = mappings.iter().map(mapping_in).collect::<PyResult<Vec<_>>>()?;
            // Paths that run through one another are the exact reader's (None: never fast).
            inner.readings.push(Reading::new(kind, mappings).ok());
        }
        Ok(Decoder { inner })
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }

    /// Per reading given to the constructor: whether the fast path reads it.
    #[getter]
    fn readable(&self) -> Vec<bool> {
        self.inner.readings.iter().map(Option::is_some).collect()
    }

    /// Decodes a batch of prediction messages (see docs/native.md for the columns), of the native shape
    /// or of a mapped input (`reading`: its index in the constructor's `readings`).
    #[pyo3(signature = (raws, reading=None))]
    fn predictions<'py>(
        &self,
        py: Python<'py>,
        raws: &Bound<'py, PyAny>,
        reading: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let reading = self.reading(reading, Kind::Prediction)?;
        let raws = Raws::of(raws)?;
        let slices = raws.slices()?;
        let inner = &self.inner;
        let batch = py.detach(|| inner.predictions_par(&slices, reading, decode_threads()));
        let blocks = PyList::empty(py);
        let spans = text_spans(py)?;
        for (spec, b) in self.inner.models.iter().zip(batch.blocks) {
            let d = PyDict::new(py);
            let k = b.ids.len();
            d.set_item("ids", id_spans(py, b.ids, &spans)?)?;
            d.set_item("version_names", strings(py, &b.version_names)?)?;
            d.set_item("version_code", column(py, b.version_code))?;
            d.set_item("ts", column(py, b.ts))?;
            d.set_item("scores", rows_of(py, b.scores, k, spec.labels.len())?)?;
            d.set_item("predicted", rows_of(py, b.predicted, k, spec.labels.len())?)?;
            d.set_item("latency", column(py, b.latency))?;
            d.set_item("ignored", column(py, b.ignored))?;
            d.set_item("numeric", rows_of(py, b.numeric, k, spec.n_numeric)?)?;
            d.set_item("categorical", rows_of(py, b.categorical, k, spec.n_categorical)?)?;
            blocks.append(d)?;
        }
        batch_dict(py, batch.model, batch.row, blocks)
    }

    /// Decodes a batch of ground-truth messages (see docs/native.md for the columns).
    #[pyo3(signature = (raws, reading=None))]
    fn ground_truth<'py>(
        &self,
        py: Python<'py>,
        raws: &Bound<'py, PyAny>,
        reading: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let reading = self.reading(reading, Kind::GroundTruth)?;
        let raws = Raws::of(raws)?;
        let slices = raws.slices()?;
        let inner = &self.inner;
        let batch = py.detach(|| inner.ground_truth_par(&slices, reading, decode_threads()));
        let blocks = PyList::empty(py);
        let spans = text_spans(py)?;
        for (spec, b) in self.inner.models.iter().zip(batch.blocks) {
            let d = PyDict::new(py);
            let k = b.ids.len();
            d.set_item("ids", id_spans(py, b.ids, &spans)?)?;
            d.set_item("ts", column(py, b.ts))?;
            d.set_item("known", rows_of(py, b.known, k, spec.labels.len())?)?;
            d.set_item("actual", rows_of(py, b.actual, k, spec.labels.len())?)?;
            d.set_item("full", column(py, b.full))?;
            blocks.append(d)?;
        }
        batch_dict(py, batch.model, batch.row, blocks)
    }

    /// The lines of a JSON-lines buffer from byte `start` on: (starts, ends, numbers) as int64 arrays,
    /// numbers None unless blank lines were left out (decode::split_lines).
    #[staticmethod]
    #[pyo3(signature = (data, start=0))]
    fn split_lines<'py>(
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        start: usize,
    ) -> (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Option<Bound<'py, PyArray1<i64>>>) {
        let buf = data.as_bytes();
        let threads = decode_threads();
        let (starts, ends, numbers) = py.detach(|| read::split_lines(buf, start, threads));
        (column(py, starts), column(py, ends), numbers.map(|n| column(py, n)))
    }
}

impl Decoder {
    fn reading(&self, index: Option<usize>, kind: Kind) -> PyResult<Option<&Reading>> {
        let Some(i) = index else { return Ok(None) };
        match self.inner.readings.get(i) {
            Some(Some(r)) if r.kind == kind => Ok(Some(r)),
            Some(Some(_)) => Err(value_error(format!("reading {i} is of the other side"))),
            Some(None) => Err(value_error(format!("reading {i} is not readable by the fast path"))),
            None => Err(PyIndexError::new_err(format!("no reading {i}"))),
        }
    }
}

fn steps(path: &Bound<'_, PyAny>) -> PyResult<Vec<Step>> {
    path.try_iter()?
        .map(|step| {
            let step = step?;
            if let Ok(s) = step.cast::<PyString>() {
                Ok(Step::Key(s.to_str()?.to_owned()))
            } else {
                Ok(Step::Index(step.extract::<usize>()?))
            }
        })
        .collect()
}

/// One mapping dict: `model` (index), `name`, `model_path` (steps, or None for a literal model name),
/// `fields` ({native field: steps}), `features` (None, or {feature: steps} when mapped one by one).
fn mapping_in(d: &Bound<'_, PyDict>) -> PyResult<MappingIn> {
    let model_path = required(d, "model_path")?;
    let mut fields = Vec::new();
    for (name, path) in required(d, "fields")?.cast_into::<PyDict>()?.iter() {
        let name: String = name.extract()?;
        let field = Field::parse(&name).ok_or_else(|| value_error(format!("unknown mapped field {name:?}")))?;
        fields.push((field, steps(&path)?));
    }
    let features = required(d, "features")?;
    let features = if features.is_none() {
        None
    } else {
        let mut out = Vec::new();
        for (name, path) in features.cast_into::<PyDict>()?.iter() {
            out.push((name.extract::<String>()?, steps(&path)?));
        }
        Some(out)
    };
    Ok(MappingIn {
        model: required(d, "model")?.extract()?,
        name: required(d, "name")?.extract()?,
        model_path: if model_path.is_none() { None } else { Some(steps(&model_path)?) },
        fields,
        features,
    })
}

/// Threads a large batch is decoded on (the GIL released meanwhile): the machine's cores, at most 4,
/// or MLMON_DECODE_THREADS. Batches under decode::MIN_CHUNK events per thread use fewer.
fn decode_threads() -> usize {
    threads::from_env("MLMON_DECODE_THREADS")
}

/// The bytes of a regular file, read on `decode_threads()` threads (read.rs). None when the path is not a
/// regular file or the file changed size while it was read: the caller then reads it the ordinary way.
#[pyfunction]
fn read_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Option<Bound<'_, PyBytes>>> {
    let file = std::fs::File::open(&path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let n = usize::try_from(meta.len()).map_err(|_| value_error("a file larger than memory"))?;
    // A bytes object left uninitialised by CPython, filled below before any Python code can see it.
    let bytes = unsafe {
        let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as pyo3::ffi::Py_ssize_t);
        Bound::from_owned_ptr_or_err(py, ptr)?.cast_into::<PyBytes>()?
    };
    // SAFETY: the object is ours alone until returned, and its buffer holds n bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(pyo3::ffi::PyBytes_AsString(bytes.as_ptr()).cast::<u8>(), n) };
    let threads = decode_threads();
    match py.detach(|| read::read_into(&file, buf, threads)) {
        Ok(()) if file.metadata()?.len() == meta.len() => Ok(Some(bytes)),
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Threads a model's flush may use (the GIL released meanwhile): MLMON_APPLY_THREADS, as for the models
/// themselves (monitor.engine.parallel), else the machine's cores, at most 4.
fn apply_threads() -> usize {
    threads::from_env("MLMON_APPLY_THREADS")
}

/// A batch's messages: a list of bytes (or any iterable of bytes), or an object whose `spans()` gives
/// (buffer, starts, ends): monitor.inputs.InputLines read from a file, which has no bytes object per line.
enum Raws<'py> {
    Each(Vec<Bound<'py, PyBytes>>),
    Spans(Bound<'py, PyBytes>, PyReadonlyArray1<'py, i64>, PyReadonlyArray1<'py, i64>),
}

impl<'py> Raws<'py> {
    fn of(raws: &Bound<'py, PyAny>) -> PyResult<Self> {
        let each = |items: Bound<'py, PyAny>| -> PyResult<Self> {
            let mut out = Vec::new();
            for item in items.try_iter()? {
                out.push(item?.cast_into::<PyBytes>().map_err(|_| PyTypeError::new_err("raws must be bytes"))?);
            }
            Ok(Raws::Each(out))
        };
        if raws.is_instance_of::<PyList>() {
            return each(raws.clone());
        }
        if raws.hasattr("spans")? {
            let spans = raws.call_method0("spans")?;
            if !spans.is_none() {
                let (buf, starts, ends) = spans.extract()?;
                return Ok(Raws::Spans(buf, starts, ends));
            }
        }
        each(raws.clone())
    }

    fn slices(&self) -> PyResult<Vec<&[u8]>> {
        match self {
            Raws::Each(items) => Ok(items.iter().map(|b| b.as_bytes()).collect()),
            Raws::Spans(buf, starts, ends) => span_slices(buf.as_bytes(), starts.as_slice()?, ends.as_slice()?),
        }
    }
}

/// buf[starts[i]..ends[i]] for every i, checked against the buffer.
fn span_slices<'a>(buf: &'a [u8], starts: &[i64], ends: &[i64]) -> PyResult<Vec<&'a [u8]>> {
    check_span_lengths(starts, ends)?;
    starts.iter().zip(ends).map(|(&a, &b)| span(buf, a, b)).collect()
}

fn check_span_lengths(starts: &[i64], ends: &[i64]) -> PyResult<()> {
    if starts.len() != ends.len() {
        return Err(value_error("spans: starts and ends differ in length"));
    }
    Ok(())
}

/// buf[a..b], checked against the buffer.
fn span(buf: &[u8], a: i64, b: i64) -> PyResult<&[u8]> {
    buf.get(a as usize..b as usize).filter(|_| a >= 0).ok_or_else(|| value_error("spans: a span outside the buffer"))
}

fn strings<'py>(py: Python<'py>, values: &[Cow<'_, str>]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, values.iter().map(|s| PyString::new(py, s)))
}

/// A block's ids (decode::Ids) as a `monitor.spans.TextSpans`: a sequence of str that makes a str only
/// when indexed; the join reads them from the buffer.
fn id_spans<'py>(py: Python<'py>, ids: decode::Ids, spans: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    spans.call1((column(py, ids.data), column(py, ids.starts), column(py, ids.ends)))
}

/// (buffer, starts, ends) when `ids` are spans (None for a list).
type SpanColumns<'a> = (&'a [u8], &'a [i64], &'a [i64]);

/// Id `row` of span columns, checked against the buffer and as UTF-8 (what PyString::to_str refuses too:
/// ids with lone surrogates are refused either way).
fn span_id<'a>((buf, starts, ends): SpanColumns<'a>, row: usize) -> PyResult<&'a str> {
    let raw = span(buf, starts.get(row).copied().unwrap_or(-1), ends.get(row).copied().unwrap_or(-1))?;
    std::str::from_utf8(raw).map_err(|_| value_error("a prediction id is not valid UTF-8"))
}

/// `monitor.spans.TextSpans`.
fn text_spans(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("monitor.spans")?.getattr("TextSpans")
}

/// Prediction ids as the join takes them: a list of str, or an object whose `spans()` gives (uint8 buffer,
/// starts, ends) of UTF-8 ids (`monitor.spans.TextSpans`: a decoded batch's ids, a changelog's keys), with
/// no str per id.
enum BatchIds<'py> {
    List(Bound<'py, PyList>),
    Spans(PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, i64>, PyReadonlyArray1<'py, i64>),
}

impl<'py> BatchIds<'py> {
    fn of(ids: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(list) = ids.cast::<PyList>() {
            return Ok(BatchIds::List(list.clone()));
        }
        let (buf, starts, ends): (PyReadonlyArray1<'py, u8>, PyReadonlyArray1<'py, i64>, PyReadonlyArray1<'py, i64>) = ids
            .call_method0("spans")
            .map_err(|_| PyTypeError::new_err("prediction ids must be a list of str or spans"))?
            .extract()?;
        check_span_lengths(starts.as_slice()?, ends.as_slice()?)?;
        Ok(BatchIds::Spans(buf, starts, ends))
    }

    /// The span columns (None for a list).
    fn columns(&self) -> PyResult<Option<SpanColumns<'_>>> {
        match self {
            BatchIds::List(_) => Ok(None),
            BatchIds::Spans(buf, starts, ends) => Ok(Some((buf.as_slice()?, starts.as_slice()?, ends.as_slice()?))),
        }
    }

    /// Every id, owned (a checkpoint's).
    fn owned(&self) -> PyResult<Vec<Arc<str>>> {
        if let Some(cols) = self.columns()? {
            return (0..self.len()).map(|r| span_id(cols, r).map(Arc::from)).collect();
        }
        let mut out = Vec::with_capacity(self.len());
        if let BatchIds::List(list) = self {
            for id in list.iter() {
                let id = id.cast::<PyString>().map_err(|_| PyTypeError::new_err("prediction ids must be strings"))?;
                out.push(Arc::from(id.to_str()?));
            }
        }
        Ok(out)
    }

    fn len(&self) -> usize {
        match self {
            BatchIds::List(list) => list.len(),
            BatchIds::Spans(_, starts, _) => starts.len(),
        }
    }
}

fn batch_dict<'py>(
    py: Python<'py>,
    model: Vec<i32>,
    row: Vec<i64>,
    blocks: Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("model", PyArray1::from_vec(py, model))?;
    d.set_item("row", PyArray1::from_vec(py, row))?;
    d.set_item("blocks", blocks)?;
    Ok(d)
}

// --- Join -------------------------------------------------------------------------------------------

#[pyclass(module = "monitor._native")]
struct Join {
    table: JoinTable,
}

/// A column's elements in row-major order, without a copy when the array is C-contiguous.
fn flat<'a, T: Element + Copy, D: Dimension>(a: &'a PyReadonlyArray<'_, T, D>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().copied().collect()),
    }
}

fn matrix_rows<T: Element>(a: &PyReadonlyArray2<'_, T>, n_labels: usize, name: &str) -> PyResult<usize> {
    let shape = a.shape();
    if shape[0] > 0 && shape[1] != n_labels {
        return Err(value_error(format!("{name} must have {n_labels} columns")));
    }
    Ok(shape[0])
}

fn side_dict<'py>(py: Python<'py>, pairs: &[(&str, i64)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in pairs {
        d.set_item(*k, *v)?;
    }
    Ok(d)
}

fn read_sides(d: &Bound<'_, PyDict>, what: &str, sides: &[&str]) -> PyResult<Vec<i64>> {
    let map: HashMap<String, i64> = d.extract()?;
    if let Some(k) = map.keys().find(|k| !sides.contains(&k.as_str())) {
        return Err(value_error(format!("{what} has an unknown side {k:?}")));
    }
    Ok(sides.iter().map(|s| map.get(*s).copied().unwrap_or(0)).collect())
}

/// How many events ahead of its step `Join.apply` asks for an id's memory (`JoinTable::prefetch`).
const STEP_AHEAD: usize = 8;

const CHECKPOINT_COLUMNS: [&str; 12] = [
    "has_pred",
    "pred_ts",
    "pred_version",
    "scores",
    "predicted",
    "has_truth",
    "truth_ts",
    "known",
    "actual",
    "full",
    "seq",
    "expires",
];

fn checkpoint_columns(
    py: Python<'_>,
    c: Checkpoint,
    l: usize,
) -> PyResult<(Bound<'_, PyList>, Bound<'_, PyDict>)> {
    let k = c.ids.len();
    let ids = PyList::new(py, c.ids.iter().map(|id| PyString::new(py, id)))?;
    let d = PyDict::new(py);
    d.set_item("has_pred", column(py, c.has_pred))?;
    d.set_item("pred_ts", column(py, c.pred_ts))?;
    d.set_item("pred_version", column(py, c.pred_version))?;
    d.set_item("scores", rows_of(py, c.scores, k, l)?)?;
    d.set_item("predicted", rows_of(py, c.predicted, k, l)?)?;
    d.set_item("has_truth", column(py, c.has_truth))?;
    d.set_item("truth_ts", column(py, c.truth_ts))?;
    d.set_item("known", rows_of(py, c.known, k, l)?)?;
    d.set_item("actual", rows_of(py, c.actual, k, l)?)?;
    d.set_item("full", column(py, c.full))?;
    d.set_item("seq", column(py, c.seq))?;
    d.set_item("expires", column(py, c.expires))?;
    Ok((ids, d))
}

#[pymethods]
impl Join {
    /// With `memory_entries`, at most that many entries stay in memory and the rest go to an embedded
    /// store in a fresh directory under `state_dir` (the system temp directory when None), removed
    /// with the table.
    #[new]
    #[pyo3(signature = (ttl, max_entries, n_labels, memory_entries=None, state_dir=None))]
    fn new(
        ttl: f64,
        max_entries: usize,
        n_labels: usize,
        memory_entries: Option<usize>,
        state_dir: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let table = match memory_entries {
            None => JoinTable::new(ttl, max_entries, n_labels),
            Some(m) => JoinTable::with_budget(ttl, max_entries, n_labels, m, state_dir.as_deref())
                .map_err(pyo3::exceptions::PyOSError::new_err)?,
        };
        Ok(Join { table })
    }

    /// Entries held in memory (all of them without `memory_entries`).
    #[getter]
    fn memory_len(&self) -> usize {
        self.table.hot_len()
    }

    /// The directory of the store, with `memory_entries`, once it took an entry (it is made then).
    #[getter]
    fn store_dir(&self) -> Option<String> {
        self.table.store_dir().map(|p| p.display().to_string())
    }

    /// Applies the steps in order; returns the prediction rows accepted (not duplicates).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (kinds, rows, pred_ids, pred_ts, pred_version, scores, predicted, gt_ids, gt_ts, known,
                        actual, full))]
    fn apply<'py>(
        &mut self,
        py: Python<'py>,
        kinds: PyReadonlyArray1<'py, u8>,
        rows: PyReadonlyArray1<'py, i64>,
        pred_ids: &Bound<'py, PyAny>,
        pred_ts: PyReadonlyArray1<'py, f64>,
        pred_version: PyReadonlyArray1<'py, i64>,
        scores: PyReadonlyArray2<'py, f64>,
        predicted: PyReadonlyArray2<'py, bool>,
        gt_ids: &Bound<'py, PyAny>,
        gt_ts: PyReadonlyArray1<'py, f64>,
        known: PyReadonlyArray2<'py, bool>,
        actual: PyReadonlyArray2<'py, bool>,
        full: PyReadonlyArray1<'py, bool>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let n = self.table.n_labels;
        let (kinds, rows) = (flat(&kinds), flat(&rows));
        let (pred_ids, gt_ids) = (BatchIds::of(pred_ids)?, BatchIds::of(gt_ids)?);
        if kinds.len() != rows.len() {
            return Err(value_error("kinds and rows must have the same length"));
        }
        let n_pred = [
            pred_ids.len(),
            pred_ts.len(),
            pred_version.len(),
            matrix_rows(&scores, n, "scores")?,
            matrix_rows(&predicted, n, "predicted")?,
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        let n_gt = [
            gt_ids.len(),
            gt_ts.len(),
            full.len(),
            matrix_rows(&known, n, "known")?,
            matrix_rows(&actual, n, "actual")?,
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        // Checked before any step runs, so a bad batch changes nothing.
        for (&kind, &row) in kinds.iter().zip(rows.iter()) {
            let limit = match kind {
                0 => n_pred,
                1 => n_gt,
                _ => return Err(value_error("kinds must be 0 (prediction) or 1 (ground truth)")),
            };
            if row < 0 || row as usize >= limit {
                return Err(PyIndexError::new_err(format!("step row {row} is outside the columns")));
            }
        }
        let (pred_ts, pred_version, scores, predicted) =
            (flat(&pred_ts), flat(&pred_version), flat(&scores), flat(&predicted));
        let (gt_ts, known, actual, full) = (flat(&gt_ts), flat(&known), flat(&actual), flat(&full));
        // The ids are read while the GIL is held (the lists or buffers keep them alive and nothing here changes
        // them); the steps then run without it, so the engines of other models or partitions can apply at
        // the same time on other threads.
        let mut held = Vec::new();
        for (&kind, &row) in kinds.iter().zip(rows.iter()) {
            if let BatchIds::List(list) = if kind == 0 { &pred_ids } else { &gt_ids } {
                held.push(list.get_item(row as usize)?);
            }
        }
        let mut listed = held.iter();
        let (pred_spans, gt_spans) = (pred_ids.columns()?, gt_ids.columns()?);
        let mut ids: Vec<&str> = Vec::with_capacity(kinds.len());
        for (&kind, &row) in kinds.iter().zip(rows.iter()) {
            let found = if kind == 0 { &pred_spans } else { &gt_spans };
            ids.push(match found {
                Some(spans) => span_id(*spans, row as usize)?,
                None => listed.next().expect("one per listed step").cast::<PyString>()?.to_str()?,
            });
        }
        let table = &mut self.table;
        let accepted = py.detach(|| {
            let mut accepted = Vec::new();
            // Each id hashed once, for its prefetch STEP_AHEAD events before its step and for the step.
            let hashes: Vec<u64> = ids.iter().map(|id| table.hash(id)).collect();
            for (i, (&kind, &row)) in kinds.iter().zip(rows.iter()).enumerate() {
                if let (Some(ahead), Some(&h)) = (ids.get(i + STEP_AHEAD), hashes.get(i + STEP_AHEAD)) {
                    table.prefetch(ahead, h);
                }
                let (id, hash) = (ids[i], hashes[i]);
                let r = row as usize;
                let labels = r * n..(r + 1) * n;
                if kind == 0 {
                    let p = PredIn {
                        ts: pred_ts[r],
                        version: pred_version[r],
                        scores: &scores[labels.clone()],
                        predicted: &predicted[labels],
                    };
                    if table.add_prediction(id, hash, &p) {
                        accepted.push(row);
                    }
                } else {
                    let g =
                        TruthIn { ts: gt_ts[r], known: &known[labels.clone()], actual: &actual[labels], full: full[r] };
                    table.add_ground_truth(id, hash, &g);
                }
            }
            accepted
        });
        Ok(PyArray1::from_vec(py, accepted))
    }

    /// Drops every entry whose TTL passed at the current watermark.
    fn expire(&mut self, py: Python<'_>) {
        let table = &mut self.table;
        py.detach(|| table.expire());
    }

    /// Returns and clears what the steps and expiries produced since the last drain.
    fn drain<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let o = std::mem::take(&mut self.table.out);
        let d = PyDict::new(py);
        let (u, j) = (o.unpend_ts.len(), o.join_obs.len());
        d.set_item("unpend_version", column(py, o.unpend_version))?;
        d.set_item("unpend_ts", column(py, o.unpend_ts))?;
        d.set_item("unpend_scores", rows_of(py, o.unpend_scores, u, self.table.n_labels)?)?;
        d.set_item("unpend_predicted", rows_of(py, o.unpend_predicted, u, self.table.n_labels)?)?;
        d.set_item("join_version", column(py, o.join_version))?;
        d.set_item("join_obs", column(py, o.join_obs))?;
        d.set_item("join_scores", rows_of(py, o.join_scores, j, self.table.n_labels)?)?;
        d.set_item("join_predicted", rows_of(py, o.join_predicted, j, self.table.n_labels)?)?;
        d.set_item("join_known", rows_of(py, o.join_known, j, self.table.n_labels)?)?;
        d.set_item("join_actual", rows_of(py, o.join_actual, j, self.table.n_labels)?)?;
        d.set_item("join_full", column(py, o.join_full))?;
        d.set_item("join_sign", column(py, o.join_sign))?;
        d.set_item("delay", column(py, o.delay))?;
        Ok(d)
    }

    #[getter]
    fn get_watermark(&self) -> f64 {
        self.table.watermark
    }

    #[setter]
    fn set_watermark(&mut self, value: f64) {
        self.table.watermark = value;
    }

    #[getter]
    fn seq(&self) -> i64 {
        self.table.seq
    }

    #[getter]
    fn corrections(&self) -> i64 {
        self.table.counters.corrections
    }

    #[getter]
    fn joined(&self) -> i64 {
        self.table.counters.joined
    }

    #[getter]
    fn ttl(&self) -> f64 {
        self.table.ttl
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.table.max_entries
    }

    #[getter]
    fn n_labels(&self) -> usize {
        self.table.n_labels
    }

    #[getter]
    fn pending<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.table.counters;
        side_dict(py, &[("prediction", c.pending_prediction), ("ground_truth", c.pending_ground_truth)])
    }

    #[getter]
    fn expired<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.table.counters;
        side_dict(py, &[("prediction", c.expired_prediction), ("ground_truth", c.expired_ground_truth)])
    }

    #[getter]
    fn evicted<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.table.counters;
        side_dict(
            py,
            &[
                ("prediction", c.evicted_prediction),
                ("ground_truth", c.evicted_ground_truth),
                ("joined", c.evicted_joined),
            ],
        )
    }

    #[getter]
    fn duplicates<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.table.counters;
        side_dict(py, &[("prediction", c.duplicates_prediction), ("ground_truth", c.duplicates_ground_truth)])
    }

    fn __len__(&self) -> usize {
        self.table.len()
    }

    /// The checkpoint: ids in insertion order and one row per entry in each column.
    fn export<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyDict>)> {
        checkpoint_columns(py, self.table.export(), self.table.n_labels)
    }

    /// Starts (True) or stops recording which entries change; starting clears the record.
    fn track_changes(&mut self, on: bool) {
        self.table.track_changes(on);
    }

    /// What changed since tracking started or `clear_changes`: the live entries as `export` columns
    /// (ids sorted) and the ids that left the table.
    #[allow(clippy::type_complexity)]
    fn changes<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let (live, gone) = self.table.changes();
        let (ids, columns) = checkpoint_columns(py, live, self.table.n_labels)?;
        let gone = PyList::new(py, gone.iter().map(|id| PyString::new(py, id)))?;
        Ok((ids, columns, gone))
    }

    fn clear_changes(&mut self) {
        self.table.clear_changes();
    }

    /// How many ids changed (or left) since tracking started or `clear_changes`: what the next
    /// checkpoint writes.
    #[getter]
    fn changed(&self) -> usize {
        self.table.changed()
    }

    /// Records `ids` as changed again (a checkpoint that took them was not written).
    fn mark_changed(&mut self, ids: Vec<String>) {
        self.table.mark_changed(&ids);
    }

    /// Fills the (empty) table with `model`'s entries of a finished staged changelog read; returns how
    /// many.
    fn load_staged(&mut self, py: Python<'_>, staged: PyRef<'_, Staged>, model: &str) -> PyResult<usize> {
        let (table, staged) = (&mut self.table, staged.get()?);
        py.detach(|| table.load_staged(staged.entries(model), staged.staged)).map_err(value_error)
    }

    /// Replaces the table with a checkpoint taken by `export` (and the counters saved beside it).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (ids, columns, seq, watermark, pending, expired, evicted, duplicates, corrections, joined))]
    fn restore(
        &mut self,
        ids: &Bound<'_, PyAny>,
        columns: &Bound<'_, PyDict>,
        seq: i64,
        watermark: Option<f64>,
        pending: &Bound<'_, PyDict>,
        expired: &Bound<'_, PyDict>,
        evicted: &Bound<'_, PyDict>,
        duplicates: &Bound<'_, PyDict>,
        corrections: i64,
        joined: i64,
    ) -> PyResult<()> {
        let (k, l) = (ids.len()?, self.table.n_labels);
        for name in columns.keys() {
            let name: String = name.extract()?;
            if !CHECKPOINT_COLUMNS.contains(&name.as_str()) {
                return Err(value_error(format!("unknown join column {name:?}")));
            }
        }
        let get = |name: &str| -> PyResult<Bound<'_, PyAny>> {
            columns.get_item(name)?.ok_or_else(|| value_error(format!("join column {name} is missing")))
        };
        let wrong = |name: &str| value_error(format!("join column {name} has the wrong shape"));
        macro_rules! vector {
            ($name:literal, $t:ty) => {{
                let a: PyArrayLike1<'_, $t, AllowTypeChange> = get($name)?.extract()?;
                if a.len() != k {
                    return Err(wrong($name));
                }
                a.as_array().iter().copied().collect::<Vec<$t>>()
            }};
        }
        macro_rules! matrix {
            ($name:literal, $t:ty) => {{
                let a: PyArrayLike2<'_, $t, AllowTypeChange> = get($name)?.extract()?;
                if a.shape() != [k, l] {
                    return Err(wrong($name));
                }
                a.as_array().iter().copied().collect::<Vec<$t>>()
            }};
        }
        let id_list = BatchIds::of(ids)?.owned()?;
        let checkpoint = Checkpoint {
            ids: id_list,
            has_pred: vector!("has_pred", bool),
            pred_ts: vector!("pred_ts", f64),
            pred_version: vector!("pred_version", i64),
            scores: matrix!("scores", f64),
            predicted: matrix!("predicted", bool),
            has_truth: vector!("has_truth", bool),
            truth_ts: vector!("truth_ts", f64),
            known: matrix!("known", bool),
            actual: matrix!("actual", bool),
            full: vector!("full", bool),
            seq: vector!("seq", i64),
            expires: vector!("expires", f64),
        };
        let [pending_prediction, pending_ground_truth] =
            read_sides(pending, "pending", &["prediction", "ground_truth"])?[..]
        else {
            unreachable!()
        };
        let [expired_prediction, expired_ground_truth] =
            read_sides(expired, "expired", &["prediction", "ground_truth"])?[..]
        else {
            unreachable!()
        };
        let [evicted_prediction, evicted_ground_truth, evicted_joined] =
            read_sides(evicted, "evicted", &["prediction", "ground_truth", "joined"])?[..]
        else {
            unreachable!()
        };
        let [duplicates_prediction, duplicates_ground_truth] =
            read_sides(duplicates, "duplicates", &["prediction", "ground_truth"])?[..]
        else {
            unreachable!()
        };
        self.table.restore(checkpoint).map_err(value_error)?;
        self.table.seq = seq;
        self.table.watermark = watermark.unwrap_or(f64::NEG_INFINITY);
        self.table.counters = Counters {
            pending_prediction,
            pending_ground_truth,
            expired_prediction,
            expired_ground_truth,
            evicted_prediction,
            evicted_ground_truth,
            evicted_joined,
            duplicates_prediction,
            duplicates_ground_truth,
            corrections,
            joined,
        };
        Ok(())
    }
}

// --- Cells ------------------------------------------------------------------------------------------

/// A model's window layout, turning a flush's columns into block deltas (cells.rs).
#[pyclass(module = "monitor._native", frozen)]
struct Cells {
    layout: cells::Layout,
    /// One set of accumulators per thread a flush's blocks are filled on (`apply_threads`).
    scratch: std::sync::Mutex<Vec<cells::Scratch>>,
}

fn offset(offsets: &HashMap<String, usize>, name: &str) -> PyResult<usize> {
    offsets.get(name).copied().ok_or_else(|| value_error(format!("offsets lack {name:?}")))
}

type SparseDeltas<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    i64,
    i64,
);

type PredictionArrays<'py> = (
    PyReadonlyArray1<'py, i64>,
    PyReadonlyArray1<'py, f64>,
    PyReadonlyArray2<'py, f64>,
    PyReadonlyArray2<'py, bool>,
    PyReadonlyArray2<'py, f64>,
    PyReadonlyArray2<'py, i64>,
);

fn item<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    required(d, key)?.extract::<T>().map_err(Into::into)
}

fn check_len(what: &str, got: usize, want: usize) -> PyResult<()> {
    if got != want {
        return Err(value_error(format!("{what} has {got} values, expected {want}")));
    }
    Ok(())
}

#[pymethods]
impl Cells {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (size, offsets, scalars, bins, feature_offsets, n_numeric, n_categorical, pair_labels,
                        multiclass, advised_slot, score_edges=None, numeric_edges=None))]
    fn new(
        size: usize,
        offsets: HashMap<String, usize>,
        scalars: Vec<usize>,
        bins: (usize, usize, usize),
        feature_offsets: Vec<usize>,
        n_numeric: usize,
        n_categorical: usize,
        pair_labels: usize,
        multiclass: bool,
        advised_slot: Vec<i64>,
        score_edges: Option<Vec<Vec<f64>>>,
        numeric_edges: Option<Vec<Vec<f64>>>,
    ) -> PyResult<Self> {
        let [predictions, joined, subset_n, subset_ok, card_actual, card_actual_n, card_pred, pending] = scalars[..]
        else {
            return Err(value_error("scalars must list 8 positions"));
        };
        let reference = score_edges.is_some();
        let labels = advised_slot.len();
        let score_edges = score_edges.unwrap_or_default();
        let numeric_edges = numeric_edges.unwrap_or_default();
        if reference && (score_edges.len() != labels || numeric_edges.len() != n_numeric) {
            return Err(value_error("score_edges needs one list per label and numeric_edges one per numeric feature"));
        }
        if feature_offsets.len() != n_numeric + n_categorical {
            return Err(value_error("feature_offsets needs one offset per feature"));
        }
        let layout = cells::Layout {
            labels,
            size,
            scalars_at: offset(&offsets, "scalars")?,
            scalars: cells::Scalars {
                predictions, joined, subset_n, subset_ok, card_actual, card_actual_n, card_pred, pending,
            },
            outcomes: offset(&offsets, "outcomes")?,
            calib: offset(&offsets, "calib")?,
            pending: offset(&offsets, "pending")?,
            pred_pos: offset(&offsets, "pred_pos")?,
            score_bins: offset(&offsets, "score_bins")?,
            feat_bins: offset(&offsets, "feat_bins")?,
            feat_missing: offset(&offsets, "feat_missing")?,
            pairs: offset(&offsets, "pairs")?,
            confusion: offset(&offsets, "confusion")?,
            thr_hist: offset(&offsets, "thr_hist")?,
            calibration_bins: bins.0,
            threshold_bins: bins.1,
            reference_bins: bins.2,
            score_edges,
            numeric_edges,
            reference,
            feature_offsets,
            n_numeric,
            n_categorical,
            pair_labels,
            multiclass,
            advised_slot,
        };
        let scratch = (0..apply_threads()).map(|_| cells::Scratch::default()).collect();
        Ok(Cells { layout, scratch: std::sync::Mutex::new(scratch) })
    }

    /// One delta per touched (store key, minute) block as sparse rows: (keys, ptr, cells, values, late
    /// predictions, late ground truths). `out` is what `Join.drain` returned.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (cohort_keys, preds, out, newest_fine, fine_span, coarse_span))]
    fn deltas<'py>(
        &self,
        py: Python<'py>,
        cohort_keys: Option<PyReadonlyArray2<'py, i64>>,
        preds: Option<PredictionArrays<'py>>,
        out: &Bound<'py, PyDict>,
        newest_fine: i64,
        fine_span: i64,
        coarse_span: i64,
    ) -> PyResult<SparseDeltas<'py>> {
        let l = &self.layout;
        let nl = l.labels;
        let table = cohort_keys.as_ref().map(flat);
        let copies = cohort_keys.as_ref().map_or(1, |t| t.shape()[1]);
        let n_cohorts = cohort_keys.as_ref().map_or(usize::MAX, |t| t.shape()[0]);
        let cohort_ok = |v: &[i64]| v.iter().all(|&x| x >= 0 && (x as usize) < n_cohorts);
        let pred_cols = preds.as_ref().map(|(v, t, s, p, n, c)| (flat(v), flat(t), flat(s), flat(p), flat(n), flat(c)));
        let p = match &pred_cols {
            None => None,
            Some((v, t, s, pr, n, c)) => {
                let rows = v.len();
                check_len("preds ts", t.len(), rows)?;
                check_len("preds scores", s.len(), rows * nl)?;
                check_len("preds predicted", pr.len(), rows * nl)?;
                check_len("preds numeric", n.len(), rows * l.n_numeric)?;
                check_len("preds categorical", c.len(), rows * l.n_categorical)?;
                Some(cells::Predictions { version: v, ts: t, scores: s, predicted: pr, numeric: n, categorical: c })
            }
        };
        let u_version: PyReadonlyArray1<i64> = item(out, "unpend_version")?;
        let u_ts: PyReadonlyArray1<f64> = item(out, "unpend_ts")?;
        let u_scores: PyReadonlyArray2<f64> = item(out, "unpend_scores")?;
        let u_predicted: PyReadonlyArray2<bool> = item(out, "unpend_predicted")?;
        let (u_version, u_ts, u_scores, u_predicted) = (flat(&u_version), flat(&u_ts), flat(&u_scores), flat(&u_predicted));
        let rows = u_ts.len();
        check_len("unpend_version", u_version.len(), rows)?;
        check_len("unpend_scores", u_scores.len(), rows * nl)?;
        check_len("unpend_predicted", u_predicted.len(), rows * nl)?;
        let u = (rows > 0).then_some(cells::Unpended {
            version: &u_version, ts: &u_ts, scores: &u_scores, predicted: &u_predicted,
        });
        let j_version: PyReadonlyArray1<i64> = item(out, "join_version")?;
        let j_obs: PyReadonlyArray1<f64> = item(out, "join_obs")?;
        let j_scores: PyReadonlyArray2<f64> = item(out, "join_scores")?;
        let j_predicted: PyReadonlyArray2<bool> = item(out, "join_predicted")?;
        let j_known: PyReadonlyArray2<bool> = item(out, "join_known")?;
        let j_actual: PyReadonlyArray2<bool> = item(out, "join_actual")?;
        let j_full: PyReadonlyArray1<bool> = item(out, "join_full")?;
        let j_sign: PyReadonlyArray1<f64> = item(out, "join_sign")?;
        let (j_version, j_obs, j_scores, j_predicted) = (flat(&j_version), flat(&j_obs), flat(&j_scores), flat(&j_predicted));
        let (j_known, j_actual, j_full, j_sign) = (flat(&j_known), flat(&j_actual), flat(&j_full), flat(&j_sign));
        let rows = j_obs.len();
        check_len("join_version", j_version.len(), rows)?;
        for (what, n) in [("join_scores", j_scores.len()), ("join_predicted", j_predicted.len()),
                          ("join_known", j_known.len()), ("join_actual", j_actual.len())] {
            check_len(what, n, rows * nl)?;
        }
        check_len("join_full", j_full.len(), rows)?;
        check_len("join_sign", j_sign.len(), rows)?;
        let j = (rows > 0).then_some(cells::Joins {
            version: &j_version, obs: &j_obs, scores: &j_scores, predicted: &j_predicted, known: &j_known,
            actual: &j_actual, full: &j_full, sign: &j_sign,
        });
        let versions = [p.as_ref().map(|p| p.version), u.as_ref().map(|u| u.version), j.as_ref().map(|j| j.version)];
        if !versions.iter().flatten().all(|v| cohort_ok(v)) {
            return Err(PyIndexError::new_err("a cohort index is outside cohort_keys"));
        }
        let cohorts = cells::Cohorts { table: table.as_deref(), copies };
        let retention = cells::Retention { newest_fine, fine_span, coarse_span };
        let d = py.detach(|| {
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            l.deltas(&cohorts, p.as_ref(), u.as_ref(), j.as_ref(), &retention, &mut scratch)
        });
        Ok((column(py, d.keys), column(py, d.ptr), column(py, d.cells), column(py, d.values), d.late_predictions,
            d.late_ground_truth))
    }
}

/// `out[rows[b], cells[e]] += values[e]` for every block b with `rows[b] >= 0` and each of its entries
/// e in `ptr[b]..ptr[b + 1]`, one after the other in block order (BlockStore.add_sparse's sums and ring).
#[pyfunction]
fn add_rows(
    mut out: numpy::PyReadwriteArray2<'_, f64>,
    rows: PyReadonlyArray1<'_, i64>,
    ptr: PyReadonlyArray1<'_, i64>,
    cells: PyReadonlyArray1<'_, i64>,
    values: PyReadonlyArray1<'_, f64>,
) -> PyResult<()> {
    let (height, width) = (out.shape()[0], out.shape()[1]);
    let (rows, ptr, cells, values) = (flat(&rows), flat(&ptr), flat(&cells), flat(&values));
    if ptr.len() != rows.len() + 1 || cells.len() != values.len() {
        return Err(value_error("ptr needs one more entry than rows, and values one per cell"));
    }
    // Checked before anything is added, so a bad call changes nothing.
    for (b, &r) in rows.iter().enumerate() {
        let (a, z) = (ptr[b], ptr[b + 1]);
        if a < 0 || z < a || z as usize > cells.len() || r >= height as i64 {
            return Err(PyIndexError::new_err(format!("block {b} is outside the arrays")));
        }
        if r >= 0 && cells[a as usize..z as usize].iter().any(|&c| c < 0 || c as usize >= width) {
            return Err(PyIndexError::new_err(format!("a cell of block {b} is outside the row")));
        }
    }
    let o = out.as_slice_mut().map_err(|_| value_error("out must be C-contiguous"))?;
    for (b, &r) in rows.iter().enumerate() {
        if r < 0 {
            continue;
        }
        let row = &mut o[r as usize * width..(r as usize + 1) * width];
        for e in ptr[b] as usize..ptr[b + 1] as usize {
            row[cells[e] as usize] += values[e];
        }
    }
    Ok(())
}
