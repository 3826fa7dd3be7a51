//! The JSON reading behind the fast path: serde_json with visitors that keep only what the decoder
//! reads and refuse, as early as possible, whatever orjson might decode differently.
//!
//! serde_json and orjson agree on strict RFC 8259 except where this file steps in:
//! - an ignored string is not checked for lone surrogates by serde_json (`IgnoredAny`), while orjson
//!   refuses them anywhere; so nothing is ignored here, every skipped string is decoded (`Skip`);
//! - serde_json hands integers beyond 64 bits over as floats, and `-0` as the float -0.0 where orjson
//!   gives the int 0; so floats of magnitude >= 2**63 abort the event, and a negative zero is kept as
//!   `NegZero`, which the decoder refuses wherever it reads the value.
//!
//! Aborting only ever sends an event to the exact Python decoder, so every rule errs towards it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// 2**63: no float literal a producer would send for a score, latency or feature comes near it, and every
/// integer literal outside [-2**63, 2**64) parses to a float at least this large.
const TOO_BIG: f64 = 9_223_372_036_854_775_808.0;

/// A value the decoder may read: the JSON types it tells apart, objects and arrays as `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    /// `-0` or `-0.0`: orjson makes the first an int 0 and the second a float -0.0.
    NegZero,
    Str(Cow<'a, str>),
    Other,
}

pub fn abort<E: de::Error>() -> E {
    E::custom("left to the exact decoder")
}

fn check_float<E: de::Error>(v: f64) -> Result<f64, E> {
    if v.abs() >= TOO_BIG {
        Err(abort())
    } else {
        Ok(v)
    }
}

/// Reads and discards any value, decoding (and so validating) every string and key on the way.
pub struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        check_float(v).map(|_| ())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// Any value as a `Scalar`.
pub struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar<'de>, D::Error> {
        d.deserialize_any(ScalarSeed)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::U(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(if v >= 0 { Scalar::U(v as u64) } else { Scalar::I(v) })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        let v = check_float(v)?;
        Ok(if v == 0.0 && v.is_sign_negative() { Scalar::NegZero } else { Scalar::F(v) })
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
        Skip.visit_seq(seq).map(|_| Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
        Skip.visit_map(map).map(|_| Scalar::Other)
    }
}

/// A string (an object key, or a value that must be a string: anything else aborts).
pub struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(StrSeed)
    }
}

impl<'de> Visitor<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// An object read into (key, value) pairs, in order and with duplicates kept (the caller refuses them).
/// `null` gives Ok(false) when `nullable`; at most `max` keys.
pub struct PairsSeed<'s, 'de> {
    pub out: &'s mut Vec<(Cow<'de, str>, Scalar<'de>)>,
    pub nullable: bool,
    pub max: usize,
}

impl<'de> DeserializeSeed<'de> for PairsSeed<'_, 'de> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PairsSeed<'_, 'de> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        if self.nullable {
            Ok(false)
        } else {
            Err(abort())
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(key) = map.next_key_seed(StrSeed)? {
            if self.out.len() == self.max {
                return Err(abort());
            }
            let value = map.next_value_seed(ScalarSeed)?;
            self.out.push((key, value));
        }
        Ok(true)
    }
}

/// A list of strings (anything else aborts); `null` gives Ok(false) when `nullable`.
pub struct StringsSeed<'s, 'de> {
    pub out: &'s mut Vec<Cow<'de, str>>,
    pub nullable: bool,
}

impl<'de> DeserializeSeed<'de> for StringsSeed<'_, 'de> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StringsSeed<'_, 'de> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of strings")
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        if self.nullable {
            Ok(false)
        } else {
            Err(abort())
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while let Some(s) = seq.next_element_seed(StrSeed)? {
            self.out.push(s);
        }
        Ok(true)
    }
}

/// How a ground truth states its labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Labels {
    #[default]
    Absent,
    /// A list of label names (full ground truth), in `Scratch::labels`.
    List,
    /// An object of label -> value (partial ground truth), in `Scratch::label_values`.
    Object,
}

/// `labels`: a list of strings or an object (anything else, `null` included, aborts).
struct LabelsSeed<'s, 'de> {
    list: &'s mut Vec<Cow<'de, str>>,
    object: &'s mut Vec<(Cow<'de, str>, Scalar<'de>)>,
}

impl<'de> DeserializeSeed<'de> for LabelsSeed<'_, 'de> {
    type Value = Labels;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Labels, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LabelsSeed<'_, 'de> {
    type Value = Labels;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of labels or an object of label -> 0/1")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Labels, A::Error> {
        StringsSeed { out: self.list, nullable: false }.visit_seq(seq).map(|_| Labels::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Labels, A::Error> {
        PairsSeed { out: self.object, nullable: false, max: usize::MAX }.visit_map(map).map(|_| Labels::Object)
    }
}

/// The top-level fields the decoder reads, per event kind.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prediction,
    GroundTruth,
}

/// What the top level held; the object-valued fields went into `Scratch`.
#[derive(Default)]
pub struct Top<'a> {
    pub id: Option<Cow<'a, str>>,
    pub model: Option<Cow<'a, str>>,
    /// An RFC 3339 string or an epoch number (anything else is kept too; the decoder refuses it).
    pub timestamp: Option<Scalar<'a>>,
    pub version: Option<Cow<'a, str>>,
    pub has_scores: bool,
    pub has_features: bool,
    pub latency: Option<Scalar<'a>>,
    /// A served label list (not null) is in `Scratch::predicted`.
    pub has_predicted: bool,
    pub labels: Labels,
}

/// Buffers reused from event to event of a batch (cleared by `read_event`).
#[derive(Default)]
pub struct Scratch<'a> {
    pub scores: Vec<(Cow<'a, str>, Scalar<'a>)>,
    pub features: Vec<(Cow<'a, str>, Scalar<'a>)>,
    pub labels: Vec<Cow<'a, str>>,
    pub label_values: Vec<(Cow<'a, str>, Scalar<'a>)>,
    pub predicted: Vec<Cow<'a, str>>,
    /// Values found along a mapped input's paths (mapped.rs), one per compiled path.
    pub captures: Vec<Option<Node<'a>>>,
    others: Vec<Cow<'a, str>>,
}

impl Scratch<'_> {
    pub fn clear(&mut self) {
        self.scores.clear();
        self.features.clear();
        self.labels.clear();
        self.label_values.clear();
        self.predicted.clear();
        self.captures.clear();
        self.others.clear();
    }
}

/// A mapped field's value: a scalar, or an object or a list of scalars (deeper containers are `Other`).
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Scalar(Scalar<'a>),
    Object(Vec<(Cow<'a, str>, Scalar<'a>)>),
    Array(Vec<Scalar<'a>>),
}

/// Parses one event's JSON into `Top` and `scratch`; None when the fast path must not take it.
pub fn read_event<'a>(text: &'a str, kind: Kind, scratch: &mut Scratch<'a>) -> Option<Top<'a>> {
    scratch.clear();
    let mut de = serde_json::Deserializer::from_str(text);
    let top = TopSeed { kind, scratch }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(top)
}

struct TopSeed<'s, 'a> {
    kind: Kind,
    scratch: &'s mut Scratch<'a>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, 'de> {
    type Value = Top<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

const ID: u32 = 1;
const MODEL: u32 = 2;
const TIMESTAMP: u32 = 4;
const VERSION: u32 = 8;
const SCORES: u32 = 16;
const FEATURES: u32 = 32;
const LATENCY: u32 = 64;
const LABELS: u32 = 128;
const PREDICTED: u32 = 256;

fn field(kind: Kind, key: &str) -> u32 {
    match (key, kind) {
        ("prediction_id", _) => ID,
        ("model", _) => MODEL,
        ("timestamp", _) => TIMESTAMP,
        ("model_version", Kind::Prediction) => VERSION,
        ("scores", Kind::Prediction) => SCORES,
        ("features", Kind::Prediction) => FEATURES,
        ("latency_ms", Kind::Prediction) => LATENCY,
        ("predicted", Kind::Prediction) => PREDICTED,
        ("labels", Kind::GroundTruth) => LABELS,
        _ => 0,
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, 'de> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let s = self.scratch;
        let mut top = Top::default();
        let mut seen = 0u32;
        while let Some(key) = map.next_key_seed(StrSeed)? {
            let f = field(self.kind, &key);
            if f & seen != 0 {
                return Err(abort());
            }
            seen |= f;
            match f {
                ID => top.id = Some(map.next_value_seed(StrSeed)?),
                MODEL => top.model = Some(map.next_value_seed(StrSeed)?),
                TIMESTAMP => top.timestamp = Some(map.next_value_seed(ScalarSeed)?),
                VERSION => top.version = Some(map.next_value_seed(StrSeed)?),
                SCORES => {
                    map.next_value_seed(PairsSeed { out: &mut s.scores, nullable: false, max: usize::MAX })?;
                    top.has_scores = true;
                }
                FEATURES => {
                    top.has_features =
                        map.next_value_seed(PairsSeed { out: &mut s.features, nullable: true, max: FEATURES_MAX })?;
                }
                LATENCY => top.latency = Some(map.next_value_seed(ScalarSeed)?),
                LABELS => {
                    top.labels = map.next_value_seed(LabelsSeed { list: &mut s.labels, object: &mut s.label_values })?;
                }
                PREDICTED => {
                    top.has_predicted = map.next_value_seed(StringsSeed { out: &mut s.predicted, nullable: true })?;
                }
                _ => {
                    // Keys nobody reads may hold anything, but a repeated one still makes the event
                    // ambiguous to whoever reads it later: keep the contract's "no duplicate key".
                    if s.others.contains(&key) {
                        return Err(abort());
                    }
                    s.others.push(key);
                    map.next_value_seed(Skip)?;
                }
            }
        }
        Ok(top)
    }
}

/// The exact decoder refuses `features` of more keys than this.
pub const FEATURES_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, kind: Kind) -> Option<(Top<'_>, Scratch<'_>)> {
        let mut s = Scratch::default();
        let top = read_event(text, kind, &mut s)?;
        Some((top, s))
    }

    #[test]
    fn numbers_orjson_reads_differently_are_flagged() {
        let ok = |t: &str| read(t, Kind::Prediction).is_some();
        assert!(!ok(r#"{"x": 18446744073709551616}"#));
        assert!(!ok(r#"{"x": -9223372036854775809}"#));
        assert!(!ok(r#"{"x": [1e400]}"#));
        assert!(ok(r#"{"x": 18446744073709551615, "y": -9223372036854775808}"#));
        let (_, s) = read(r#"{"scores": {"a": -0, "b": -0.0, "c": 0, "d": 1.5e-400}}"#, Kind::Prediction).unwrap();
        let values: Vec<_> = s.scores.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(values, [Scalar::NegZero, Scalar::NegZero, Scalar::U(0), Scalar::F(0.0)]);
    }

    #[test]
    fn lone_surrogates_anywhere_abort() {
        assert!(read(r#"{"x": "\ud800"}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"x": {"\udc00": 1}}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"x": ["a", "\ud83d"]}"#, Kind::Prediction).is_none());
        let (top, _) = read(r#"{"prediction_id": "\ud83d\ude00", "x": "\ud83d\ude00"}"#, Kind::Prediction).unwrap();
        assert_eq!(top.id.as_deref(), Some("\u{1F600}"));
    }

    #[test]
    fn duplicate_and_served_keys_abort() {
        assert!(read(r#"{"model": "a", "model": "a"}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"x": 1, "x": 1}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"model": "a", "mod\u0065l": "a"}"#, Kind::Prediction).is_none());
        let (top, _) = read(r#"{"predicted": null}"#, Kind::Prediction).unwrap();
        assert!(!top.has_predicted);
        let (top, s) = read(r#"{"predicted": ["a", "b"]}"#, Kind::Prediction).unwrap();
        assert!(top.has_predicted);
        assert_eq!(s.predicted, ["a", "b"]);
        assert!(read(r#"{"predicted": "a"}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"predicted": [1]}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"predicted": [], "predicted": []}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"predicted": 5}"#, Kind::GroundTruth).is_some());
    }

    #[test]
    fn shapes() {
        assert!(read("[]", Kind::Prediction).is_none());
        assert!(read("{} {}", Kind::Prediction).is_none());
        assert!(read(r#"{"prediction_id": 5}"#, Kind::Prediction).is_none());
        assert!(read(r#"{"scores": null}"#, Kind::Prediction).is_none());
        let (top, s) = read(r#"{"labels": {"a": 1, "b": false}}"#, Kind::GroundTruth).unwrap();
        assert_eq!(top.labels, Labels::Object);
        assert_eq!(s.label_values, [("a".into(), Scalar::U(1)), ("b".into(), Scalar::Bool(false))]);
        let (top, s) = read(r#"{"labels": ["a"]}"#, Kind::GroundTruth).unwrap();
        assert_eq!((top.labels, s.labels), (Labels::List, vec![Cow::from("a")]));
        assert!(read(r#"{"labels": ["a", 1]}"#, Kind::GroundTruth).is_none());
        assert!(read(r#"{"labels": null}"#, Kind::GroundTruth).is_none());
        assert!(read(r#"{"labels": "a"}"#, Kind::GroundTruth).is_none());
        let (top, _) = read(r#"{"timestamp": 1767225600000}"#, Kind::GroundTruth).unwrap();
        assert_eq!(top.timestamp, Some(Scalar::U(1_767_225_600_000)));
        let (top, _) = read(r#"{"features": null, "latency_ms": null}"#, Kind::Prediction).unwrap();
        assert!(!top.has_features);
        assert_eq!(top.latency, Some(Scalar::Null));
        let many: Vec<String> = (0..1025).map(|i| format!("\"k{i}\": 1")).collect();
        assert!(read(&format!("{{\"features\": {{{}}}}}", many.join(",")), Kind::Prediction).is_none());
        assert!(read(&format!("{{\"features\": {{{}}}}}", many[..1024].join(",")), Kind::Prediction).is_some());
    }
}
