//! Errors of the local config file, each naming where it is: line and column, the field path
//! (`workloads[1].addresses[0]`) and the value at fault.
//!
//! Type and format errors come from serde_norway with its location; errors found after parsing
//! (duplicates, unsupported condition keys) are placed by re-reading the YAML down to the field.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, Visitor};

/// A position in the YAML text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Why a local config file was refused. Displays as
/// `line L column C: <field path>: <reason naming the value>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not YAML, or a field is unknown, missing, of the wrong type or holds an unreadable value.
    #[error("{}", Located(.location, .path, .reason))]
    Parse {
        location: Option<Location>,
        path: String,
        reason: String,
    },
    /// Well-formed but inconsistent: duplicate names or addresses, empty address lists,
    /// unsupported condition keys.
    #[error("{}", Located(.location, .path, .reason))]
    Invalid {
        location: Option<Location>,
        path: String,
        reason: String,
    },
}

impl ConfigError {
    /// Where in the text the error is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            Self::Parse { location, .. } | Self::Invalid { location, .. } => *location,
        }
    }

    /// The field path, e.g. `workloads[1].addresses[0]`; empty for the document itself.
    pub fn path(&self) -> &str {
        match self {
            Self::Parse { path, .. } | Self::Invalid { path, .. } => path,
        }
    }

    /// What is wrong, naming the value.
    pub fn reason(&self) -> &str {
        match self {
            Self::Parse { reason, .. } | Self::Invalid { reason, .. } => reason,
        }
    }

    /// Splits serde_norway's `path: reason at line L column C` into its parts.
    pub(super) fn from_yaml(error: &serde_norway::Error) -> Self {
        let location = error.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        });
        let mut text = error.to_string();
        if let Some(Location { line, column }) = location {
            let suffix = format!(" at line {line} column {column}");
            if let Some(start) = text.find(&suffix) {
                text.replace_range(start..start + suffix.len(), "");
            }
        }
        // A path has no spaces; serde's own messages ("invalid type: ...") always do before ':'.
        let (path, reason) = match text.split_once(": ") {
            Some((head, tail)) if !head.is_empty() && !head.contains(char::is_whitespace) => {
                (head.to_owned(), tail.to_owned())
            }
            _ => (String::new(), text),
        };
        Self::Parse { location, path, reason }
    }

    /// An error found after parsing, at `path` in `yaml`.
    pub(super) fn invalid(yaml: &str, path: &FieldPath, reason: impl Into<String>) -> Self {
        Self::Invalid {
            location: locate(yaml, path),
            path: path.to_string(),
            reason: reason.into(),
        }
    }
}

struct Located<'a>(&'a Option<Location>, &'a String, &'a String);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(location, path, reason) = self;
        if let Some(Location { line, column }) = location {
            write!(f, "line {line} column {column}: ")?;
        }
        if !path.is_empty() {
            write!(f, "{path}: ")?;
        }
        f.write_str(reason)
    }
}

/// A path to a field, written like serde_norway writes them: `services[0].ports[1].port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FieldPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub(super) fn root() -> Self {
        Self::default()
    }

    pub(super) fn key(&self, key: impl Into<String>) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.into()));
        path
    }

    pub(super) fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if n == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The location of the value at `path`, found by deserializing the document again with a seed
/// that walks down the path and fails on the value: serde_norway marks the failure with the
/// value's position.
fn locate(yaml: &str, path: &FieldPath) -> Option<Location> {
    let deserializer = serde_norway::Deserializer::from_str(yaml);
    let error = Probe(&path.0).deserialize(deserializer).err()?;
    let location = error.location()?;
    Some(Location {
        line: location.line(),
        column: location.column(),
    })
}

struct Probe<'p>(&'p [Segment]);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.0.split_first() {
            None => deserializer.deserialize_any(Target),
            Some((Segment::Key(key), rest)) => deserializer.deserialize_map(InMap { key, rest }),
            Some((Segment::Index(index), rest)) => deserializer.deserialize_seq(InSeq { index: *index, rest }),
        }
    }
}

/// Refuses every value (serde's default `visit_*`), which is what marks its position.
struct Target;

impl Visitor<'_> for Target {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the field being located")
    }
}

struct InMap<'p> {
    key: &'p str,
    rest: &'p [Segment],
}

impl<'de> Visitor<'de> for InMap<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a mapping with key {}", self.key)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(KeyText(key)) = map.next_key()? {
            if key == self.key {
                return map.next_value_seed(Probe(self.rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct InSeq<'p> {
    index: usize,
    rest: &'p [Segment],
}

impl<'de> Visitor<'de> for InSeq<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence with an element {}", self.index)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe(self.rest)).map(|_| ())
    }
}

/// A mapping key as text, whatever scalar it is (`8080:` is a number).
struct KeyText(String);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyTextVisitor).map(KeyText)
    }
}

struct KeyTextVisitor;

impl Visitor<'_> for KeyTextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar key")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        Ok(value.to_owned())
    }
}
