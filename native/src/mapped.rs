//! Mapped inputs on the fast path: a topic whose models read their fields through simple paths (dotted
//! names and list indexes, `monitor.config.simple_path`) is parsed once, following only those paths, into
//! the same `Top` and `Scratch` the native shape fills; the decoder then validates it exactly like a
//! native event. The conversions are those of `monitor.mapping.SideMapping.to_native`: a null or absent
//! value is left out, scores may be a list aligned with the labels (or with `score_labels`) or one number
//! for a one-label model, label lists may be one name or 0/1 flags. Whatever is not certain (a repeated
//! key on a path, flags written `-0`, a path that no model claims...) goes to the exact Python reader.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::json::{abort, Kind, Labels, ScalarSeed, Scratch, Skip, StrSeed, Top, FEATURES_MAX};
pub use crate::json::{Node, Scalar};

/// One step of a simple path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// The native field a path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Model,
    Id,
    Timestamp,
    Version,
    Scores,
    ScoreLabels,
    Predicted,
    Features,
    Latency,
    Labels,
}

impl Field {
    pub fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "model" => Field::Model,
            "prediction_id" => Field::Id,
            "timestamp" => Field::Timestamp,
            "model_version" => Field::Version,
            "scores" => Field::Scores,
            "score_labels" => Field::ScoreLabels,
            "predicted" => Field::Predicted,
            "features" => Field::Features,
            "latency_ms" => Field::Latency,
            "labels" => Field::Labels,
            _ => return None,
        })
    }
}

const N_FIELDS: usize = 10;

fn slot_of(field: Field) -> usize {
    field as usize
}

/// One model's mapping of one side, as given: its model index and name, the path of its `model` field
/// (None for a literal: it claims every message), its field paths and, when features are mapped one by
/// one, (feature name, path) pairs.
pub struct MappingIn {
    pub model: usize,
    pub name: String,
    pub model_path: Option<Vec<Step>>,
    pub fields: Vec<(Field, Vec<Step>)>,
    pub features: Option<Vec<(String, Vec<Step>)>>,
}

struct Mapping {
    model: usize,
    name: String,
    literal: bool,
    /// Capture slot per field (N_FIELDS per mapping), None when not mapped.
    slots: [Option<usize>; N_FIELDS],
    /// Per-feature mapping: (feature name, capture slot).
    features: Option<Vec<(String, usize)>>,
}

#[derive(Default)]
struct TrieNode {
    keys: Vec<(String, usize)>,
    indexes: Vec<(usize, usize)>,
    /// Capture slots filled with the value found here (then the node has no children).
    slots: Vec<usize>,
}

/// The compiled paths of every mapping on one (side, topic), merged into one trie so that a message is
/// parsed once whatever the number of models reading it.
pub struct Reading {
    pub kind: Kind,
    nodes: Vec<TrieNode>,
    n_slots: usize,
    mappings: Vec<Mapping>,
}

impl Reading {
    pub fn new(kind: Kind, mappings: Vec<MappingIn>) -> Result<Reading, String> {
        let mut reading = Reading { kind, nodes: vec![TrieNode::default()], n_slots: 0, mappings: Vec::new() };
        for m in mappings {
            let mut slots = [None; N_FIELDS];
            let paths = m.model_path.iter().map(|p| (Field::Model, p)).chain(m.fields.iter().map(|(f, p)| (*f, p)));
            for (field, path) in paths {
                slots[slot_of(field)] = Some(reading.insert(path)?);
            }
            let features = match &m.features {
                None => None,
                Some(pairs) => {
                    let mut out = Vec::with_capacity(pairs.len());
                    for (name, path) in pairs {
                        out.push((name.clone(), reading.insert(path)?));
                    }
                    Some(out)
                }
            };
            reading.mappings.push(Mapping {
                model: m.model,
                name: m.name,
                literal: m.model_path.is_none(),
                slots,
                features,
            });
        }
        if reading.nodes.iter().any(|n| !n.slots.is_empty() && (!n.keys.is_empty() || !n.indexes.is_empty())) {
            return Err("a mapped field's path runs through another mapped field".into());
        }
        Ok(reading)
    }

    fn insert(&mut self, path: &[Step]) -> Result<usize, String> {
        if path.is_empty() {
            return Err("an empty path".into());
        }
        let mut node = 0;
        for step in path {
            let found = match step {
                Step::Key(k) => self.nodes[node].keys.iter().find(|(key, _)| key == k).map(|&(_, c)| c),
                Step::Index(i) => self.nodes[node].indexes.iter().find(|(idx, _)| idx == i).map(|&(_, c)| c),
            };
            node = match found {
                Some(c) => c,
                None => {
                    let c = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    match step {
                        Step::Key(k) => self.nodes[node].keys.push((k.clone(), c)),
                        Step::Index(i) => self.nodes[node].indexes.push((*i, c)),
                    }
                    c
                }
            };
        }
        let slot = self.n_slots;
        self.n_slots += 1;
        self.nodes[node].slots.push(slot);
        Ok(slot)
    }

    /// Parses one message along the paths and fills `Top` and `scratch` as the native reader would for
    /// the native event this mapping makes of it; returns the model index. None: the exact reader's.
    pub fn read<'a>(
        &'a self,
        text: &'a str,
        labels: impl Fn(usize) -> &'a [String],
        scratch: &mut Scratch<'a>,
    ) -> Option<(usize, Top<'a>)> {
        scratch.clear();
        let caps = &mut scratch.captures;
        caps.resize(self.n_slots, None);
        let mut de = serde_json::Deserializer::from_str(text);
        NodeSeed { reading: self, node: 0, caps }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        let m = self.mappings.iter().find(|m| {
            m.literal
                || matches!(m.slots[slot_of(Field::Model)].and_then(|s| caps[s].as_ref()),
                            Some(Node::Scalar(Scalar::Str(s))) if *s == m.name)
        })?;
        let labels = labels(m.model);
        let get = |caps: &mut Vec<Option<Node<'a>>>, field: Field| -> Option<Node<'a>> {
            // JMESPath's null and an absent value are alike: the field is left out.
            match m.slots[slot_of(field)].and_then(|s| caps[s].take()) {
                Some(Node::Scalar(Scalar::Null)) | None => None,
                found => found,
            }
        };
        let scalar = |node: Option<Node<'a>>| -> Result<Option<Scalar<'a>>, ()> {
            match node {
                None => Ok(None),
                Some(Node::Scalar(s)) => Ok(Some(s)),
                Some(_) => Err(()),
            }
        };
        let string = |node: Option<Node<'a>>| -> Result<Option<Cow<'a, str>>, ()> {
            match node {
                None => Ok(None),
                Some(Node::Scalar(Scalar::Str(s))) => Ok(Some(s)),
                Some(_) => Err(()),
            }
        };
        let mut top = Top {
            id: string(get(caps, Field::Id)).ok()?,
            timestamp: scalar(get(caps, Field::Timestamp)).ok()?,
            ..Top::default()
        };
        if self.kind == Kind::GroundTruth {
            match get(caps, Field::Labels) {
                None => {}
                Some(Node::Object(pairs)) => {
                    scratch.label_values = pairs;
                    top.labels = Labels::Object;
                }
                Some(node) => {
                    label_list(node, labels, &mut scratch.labels)?;
                    top.labels = Labels::List;
                }
            }
            return Some((m.model, top));
        }
        top.version = string(get(caps, Field::Version)).ok()?;
        top.latency = scalar(get(caps, Field::Latency)).ok()?;
        let score_labels = get(caps, Field::ScoreLabels);
        match get(caps, Field::Scores) {
            None => {}
            Some(Node::Object(pairs)) => {
                scratch.scores = pairs;
                top.has_scores = true;
            }
            Some(Node::Array(values)) => {
                if m.slots[slot_of(Field::ScoreLabels)].is_some() {
                    let Some(Node::Array(names)) = score_labels else { return None };
                    if names.len() != values.len() {
                        return None;
                    }
                    for (name, value) in names.into_iter().zip(values) {
                        let Scalar::Str(name) = name else { return None };
                        if scratch.scores.iter().any(|(n, _)| *n == name) {
                            return None;
                        }
                        scratch.scores.push((name, value));
                    }
                } else {
                    if values.len() != labels.len() {
                        return None;
                    }
                    scratch.scores.extend(labels.iter().map(|l| Cow::Borrowed(l.as_str())).zip(values));
                }
                top.has_scores = true;
            }
            Some(Node::Scalar(value @ (Scalar::U(_) | Scalar::I(_) | Scalar::F(_) | Scalar::NegZero)))
                if labels.len() == 1 =>
            {
                scratch.scores.push((Cow::Borrowed(labels[0].as_str()), value));
                top.has_scores = true;
            }
            Some(_) => return None,
        }
        if let Some(node) = get(caps, Field::Predicted) {
            label_list(node, labels, &mut scratch.predicted)?;
            top.has_predicted = true;
        }
        match &m.features {
            Some(features) => {
                for (name, slot) in features {
                    let value = match caps[*slot].take() {
                        None | Some(Node::Scalar(Scalar::Null)) => continue,
                        Some(Node::Scalar(s)) => s,
                        Some(_) => Scalar::Other,
                    };
                    scratch.features.push((Cow::Borrowed(name.as_str()), value));
                }
                top.has_features = true;
            }
            None => match get(caps, Field::Features) {
                None => {}
                Some(Node::Object(pairs)) if pairs.len() <= FEATURES_MAX => {
                    scratch.features = pairs;
                    top.has_features = true;
                }
                Some(_) => return None,
            },
        }
        Some((m.model, top))
    }
}

/// `_is_flag`: True, False, 0 or 1 (an integer); None for what is not one. `-0` is refused (orjson reads
/// it as the integer 0, a flag; serde as -0.0).
fn flag(value: &Scalar<'_>) -> Result<Option<bool>, ()> {
    match value {
        Scalar::Bool(b) => Ok(Some(*b)),
        Scalar::U(0) => Ok(Some(false)),
        Scalar::U(1) => Ok(Some(true)),
        Scalar::NegZero => Err(()),
        _ => Ok(None),
    }
}

/// `SideMapping._label_list` into a list of names: a list as it is, one name, 0/1 flags aligned with the
/// labels, or one flag for a one-label model. None: the exact reader's.
fn label_list<'a>(node: Node<'a>, labels: &'a [String], out: &mut Vec<Cow<'a, str>>) -> Option<()> {
    match node {
        Node::Scalar(Scalar::Str(s)) => out.push(s),
        Node::Scalar(value) => {
            let on = flag(&value).ok()??;
            if labels.len() != 1 {
                return None;
            }
            if on {
                out.push(Cow::Borrowed(labels[0].as_str()));
            }
        }
        Node::Array(values) => {
            let flags: Vec<Option<bool>> = values.iter().map(flag).collect::<Result<_, _>>().ok()?;
            if !values.is_empty() && flags.iter().all(Option::is_some) {
                if values.len() != labels.len() {
                    return None;
                }
                out.extend(labels.iter().zip(flags).filter(|(_, f)| *f == Some(true)).map(|(l, _)| Cow::from(l.as_str())));
            } else {
                for value in values {
                    let Scalar::Str(s) = value else { return None };
                    out.push(s);
                }
            }
        }
        Node::Object(_) => return None,
    }
    Some(())
}

/// Follows the trie: captures the value at a node with slots, descends into matching keys and indexes,
/// skips (and so still validates) everything else.
struct NodeSeed<'r, 's, 'a> {
    reading: &'r Reading,
    node: usize,
    caps: &'s mut Vec<Option<Node<'a>>>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let node = &self.reading.nodes[self.node];
        if let Some((&first, rest)) = node.slots.split_first() {
            let value = d.deserialize_any(CaptureSeed)?;
            for &slot in rest {
                self.caps[slot] = Some(value.clone());
            }
            self.caps[first] = Some(value);
            return Ok(());
        }
        if self.node == 0 {
            return d.deserialize_map(self); // the body must be an object
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Skip.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        Skip.visit_bool(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        Skip.visit_u64(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        Skip.visit_i64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Skip.visit_f64(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        Skip.visit_str(v)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let node = &self.reading.nodes[self.node];
        let mut seen: Vec<usize> = Vec::new();
        while let Some(key) = map.next_key_seed(StrSeed)? {
            match node.keys.iter().find(|(k, _)| *k == key) {
                Some(&(_, child)) => {
                    // orjson keeps the last of repeated keys: a repeat on a path is left to it.
                    if seen.contains(&child) {
                        return Err(abort());
                    }
                    seen.push(child);
                    map.next_value_seed(NodeSeed { reading: self.reading, node: child, caps: &mut *self.caps })?;
                }
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let node = &self.reading.nodes[self.node];
        let mut i = 0;
        loop {
            let more = match node.indexes.iter().find(|(idx, _)| *idx == i) {
                Some(&(_, child)) => seq
                    .next_element_seed(NodeSeed { reading: self.reading, node: child, caps: &mut *self.caps })?
                    .is_some(),
                None => seq.next_element_seed(Skip)?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// A mapped field's value: a scalar, or an object or list of scalars (deeper containers become `Other`).
struct CaptureSeed;

impl<'de> DeserializeSeed<'de> for CaptureSeed {
    type Value = Node<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        d.deserialize_any(CaptureSeed)
    }
}

impl<'de> Visitor<'de> for CaptureSeed {
    type Value = Node<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node<'de>, E> {
        ScalarSeed.visit_unit().map(Node::Scalar)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node<'de>, E> {
        ScalarSeed.visit_bool(v).map(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<'de>, E> {
        ScalarSeed.visit_u64(v).map(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<'de>, E> {
        ScalarSeed.visit_i64(v).map(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
        ScalarSeed.visit_f64(v).map(Node::Scalar)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
        ScalarSeed.visit_borrowed_str(v).map(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
        ScalarSeed.visit_str(v).map(Node::Scalar)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key_seed(StrSeed)? {
            pairs.push((key, map.next_value_seed(ScalarSeed)?));
        }
        Ok(Node::Object(pairs))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut values = Vec::new();
        while let Some(v) = seq.next_element_seed(ScalarSeed)? {
            values.push(v);
        }
        Ok(Node::Array(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Step {
        Step::Key(k.into())
    }

    fn reading(kind: Kind, fields: Vec<(Field, Vec<Step>)>, features: Option<Vec<(String, Vec<Step>)>>) -> Reading {
        Reading::new(kind, vec![MappingIn { model: 0, name: "m".into(), model_path: None, fields, features }]).unwrap()
    }

    const LABELS: [&str; 2] = ["a", "b"];

    fn labels(_: usize) -> &'static [String] {
        static L: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        L.get_or_init(|| LABELS.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn paths_and_shapes() {
        let r = reading(
            Kind::Prediction,
            vec![
                (Field::Id, vec![key("id")]),
                (Field::Timestamp, vec![key("meta"), key("t")]),
                (Field::Scores, vec![key("out"), Step::Index(1), key("data")]),
                (Field::Predicted, vec![key("served")]),
            ],
            Some(vec![("len".into(), vec![key("req"), key("len")]), ("lang".into(), vec![key("req"), key("lang")])]),
        );
        let mut s = Scratch::default();
        let text = r#"{"id": "x", "meta": {"t": 5, "u": [1]}, "out": [{"data": 1}, {"data": [0.5, 1]}],
                       "served": [0, 1], "req": {"len": 3, "lang": null}, "other": {"id": 1}}"#;
        let (m, top) = r.read(text, |m| labels(m), &mut s).unwrap();
        assert_eq!(m, 0);
        assert_eq!(top.id.as_deref(), Some("x"));
        assert_eq!(top.timestamp, Some(Scalar::U(5)));
        assert_eq!(s.scores, [("a".into(), Scalar::F(0.5)), ("b".into(), Scalar::U(1))]);
        assert_eq!(s.predicted, ["b"]);
        assert_eq!(s.features, [("len".into(), Scalar::U(3))]);
        assert!(top.has_features && top.has_scores && top.has_predicted && top.version.is_none());
        // a repeated key on a path, a body that is not an object, scores of the wrong length
        assert!(r.read(r#"{"id": "x", "id": "y"}"#, |m| labels(m), &mut s).is_none());
        assert!(r.read("[1]", |m| labels(m), &mut s).is_none());
        assert!(r.read(r#"{"out": [1, {"data": [1]}]}"#, |m| labels(m), &mut s).is_none());
        assert!(r.read(r#"{"served": [0, -0]}"#, |m| labels(m), &mut s).is_none());
        // a repeat elsewhere is nobody's business
        assert!(r.read(r#"{"x": 1, "x": 2, "served": "a"}"#, |m| labels(m), &mut s).is_some());
        assert_eq!(s.predicted, ["a"]);
    }

    #[test]
    fn conflicting_paths_are_refused() {
        let r = Reading::new(
            Kind::Prediction,
            vec![MappingIn {
                model: 0,
                name: "m".into(),
                model_path: None,
                fields: vec![(Field::Id, vec![key("a")]), (Field::Timestamp, vec![key("a"), key("b")])],
                features: None,
            }],
        );
        assert!(r.is_err());
    }

    #[test]
    fn model_claims() {
        let r = Reading::new(
            Kind::GroundTruth,
            vec![
                MappingIn { model: 0, name: "m".into(), model_path: Some(vec![key("k")]), fields: vec![], features: None },
                MappingIn { model: 1, name: "n".into(), model_path: Some(vec![key("k")]), fields: vec![], features: None },
            ],
        )
        .unwrap();
        let mut s = Scratch::default();
        assert_eq!(r.read(r#"{"k": "n"}"#, |m| labels(m), &mut s).map(|x| x.0), Some(1));
        assert_eq!(r.read(r#"{"k": "m"}"#, |m| labels(m), &mut s).map(|x| x.0), Some(0));
        assert!(r.read(r#"{"k": "o"}"#, |m| labels(m), &mut s).is_none());
        assert!(r.read(r#"{"k": 1}"#, |m| labels(m), &mut s).is_none());
    }
}
