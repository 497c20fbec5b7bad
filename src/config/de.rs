//! Reading one config section into its typed struct: a strict serde
//! `Deserializer` over the `config` crate's merged value tree, wrapped so that
//! a failure names its key and every unknown key is seen.
//!
//! Owns: which value converts to which type, and the wording of those
//! messages (`expected an integer, got "lots"`).
//! Hands on: a section struct, or the key that failed and why; the loader
//! turns both into [`Problem`](super::Problem)s.
//!
//! Why not `config::Value`'s own deserializer: it coerces freely (`1.5`
//! rounds to 2, `"yes"` and `true` become 1, an integer becomes a string) and
//! its messages do not read like SPEC §8's. Here the only conversion is the
//! one environment overrides need, since they arrive as strings: a string is
//! parsed where a number, a bool or a list is expected (`"800"`, `"true"`,
//! `"https://a, https://b"`). A string field takes only a string, so `"0123"`
//! stays `"0123"` (the `config` crate's `try_parsing` stays off for the same
//! reason), and an empty string reads as "unset" for an optional key, which
//! is how an environment variable unsets one.

use std::fmt;

use config::{Map, Value, ValueKind};
use serde::de::{self, DeserializeOwned, Expected, IntoDeserializer, Unexpected, Visitor};
use serde_path_to_error::Segment;

/// Why a value was refused: the message half of a `Problem`.
#[derive(Debug)]
pub(super) struct DeError(String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }

    /// serde's own wording is "invalid type: integer `5`, expected ...";
    /// this keeps every message in the one "expected X, got Y" form.
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        DeError(format!("expected {exp}, got {}", shown(unexp)))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::invalid_type(unexp, exp)
    }
}

/// A value as messages show it: strings quoted, the rest as TOML would.
fn shown(u: Unexpected<'_>) -> String {
    match u {
        Unexpected::Bool(b) => b.to_string(),
        Unexpected::Unsigned(n) => n.to_string(),
        Unexpected::Signed(n) => n.to_string(),
        Unexpected::Float(n) => n.to_string(),
        Unexpected::Str(s) => format!("{s:?}"),
        Unexpected::Unit => "nothing".to_string(),
        Unexpected::Seq => "a list".to_string(),
        Unexpected::Map => "a table".to_string(),
        other => other.to_string(),
    }
}

/// Like [`shown`], for a value of the tree.
pub(super) fn describe(v: &ValueKind) -> String {
    match v {
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Table(_) => "a table".to_string(),
        ValueKind::Array(_) => "a list".to_string(),
        ValueKind::Nil => "nothing".to_string(),
        other => other.to_string(),
    }
}

fn expected(what: &str, got: &ValueKind) -> DeError {
    DeError(format!("expected {what}, got {}", describe(got)))
}

/// The key of a section that failed to read, and why.
#[derive(Debug)]
pub(super) struct Failure {
    /// The section's key; `None` if the failure is not inside one.
    pub key: Option<String>,
    pub message: String,
}

/// Reads `table` as section struct `T`, pushing each key `T` does not know
/// onto `unknown`. Stops at the first bad value (serde cannot go on past
/// one); the loader drops that key and reads again.
pub(super) fn section<T: DeserializeOwned>(
    table: &Map<String, Value>,
    unknown: &mut Vec<String>,
) -> Result<T, Failure> {
    let value = Value::new(None, ValueKind::Table(table.clone()));
    let mut on_ignored = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(Strict(value), &mut on_ignored);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut key = None;
        let mut message = e.inner().to_string();
        for segment in e.path() {
            match segment {
                Segment::Map { key: k } if key.is_none() => key = Some(k.clone()),
                Segment::Seq { index } => message = format!("item {}: {message}", index + 1),
                _ => {}
            }
        }
        Failure { key, message }
    })
}

/// The keys section struct `T` accepts, in declaration order, as
/// `serde_derive` hands them to `deserialize_struct`: the list shown with an
/// unknown key, never written out by hand.
pub(super) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

/// Records the field list of the struct it is asked for, then fails.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldProbe<'_> {
    type Error = DeError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, DeError> {
        *self.0 = fields;
        Err(DeError("field probe".to_string()))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(DeError("field probe: not a struct".to_string()))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The strict deserializer (see the module docs).
struct Strict(Value);

impl Strict {
    /// An integer, from TOML or from an environment string.
    fn integer(&self) -> Result<i128, DeError> {
        let n = match &self.0.kind {
            ValueKind::I64(n) => Some(i128::from(*n)),
            ValueKind::U64(n) => Some(i128::from(*n)),
            ValueKind::I128(n) => Some(*n),
            ValueKind::U128(n) => Some(i128::try_from(*n).unwrap_or(i128::MAX)),
            ValueKind::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.ok_or_else(|| expected("an integer", &self.0.kind))
    }
}

/// Unsigned integers. Values above `i64::MAX` are refused too: TOML integers
/// are signed 64-bit, and `check-config` must be able to write them back.
macro_rules! unsigned {
    ($($method:ident => $visit:ident($ty:ty);)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let n = self.integer()?;
            if n < 0 {
                return Err(DeError(format!("must not be negative, got {n}")));
            }
            let fits = n <= i128::from(i64::MAX);
            match <$ty>::try_from(n) {
                Ok(v) if fits => visitor.$visit(v),
                _ => Err(DeError(format!("too large, got {n}"))),
            }
        }
    )*};
}

macro_rules! signed {
    ($($method:ident => $visit:ident($ty:ty);)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let n = self.integer()?;
            let v = <$ty>::try_from(n).map_err(|_| DeError(format!("out of range, got {n}")))?;
            visitor.$visit(v)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Strict {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Nil => visitor.visit_unit(),
            ValueKind::Boolean(b) => visitor.visit_bool(b),
            ValueKind::I64(n) => visitor.visit_i64(n),
            ValueKind::I128(n) => visitor.visit_i128(n),
            ValueKind::U64(n) => visitor.visit_u64(n),
            ValueKind::U128(n) => visitor.visit_u128(n),
            ValueKind::Float(n) => visitor.visit_f64(n),
            ValueKind::String(s) => visitor.visit_string(s),
            ValueKind::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            ValueKind::Table(table) => visitor.visit_map(Entries::new(table)),
        }
    }

    unsigned! {
        deserialize_u8 => visit_u8(u8);
        deserialize_u16 => visit_u16(u16);
        deserialize_u32 => visit_u32(u32);
        deserialize_u64 => visit_u64(u64);
    }

    signed! {
        deserialize_i8 => visit_i8(i8);
        deserialize_i16 => visit_i16(i16);
        deserialize_i32 => visit_i32(i32);
        deserialize_i64 => visit_i64(i64);
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            ValueKind::Boolean(b) => visitor.visit_bool(*b),
            ValueKind::String(s) if s.trim().eq_ignore_ascii_case("true") => {
                visitor.visit_bool(true)
            }
            ValueKind::String(s) if s.trim().eq_ignore_ascii_case("false") => {
                visitor.visit_bool(false)
            }
            other => Err(expected("true or false", other)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::String(s) => visitor.visit_string(s),
            other => Err(expected("a string", &other)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            ValueKind::Nil => visitor.visit_none(),
            ValueKind::String(s) if s.trim().is_empty() => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            // From the environment a list is one comma-separated string.
            ValueKind::String(s) => {
                let items: Vec<Value> = s
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::new(None, ValueKind::String(item.to_string())))
                    .collect();
                visitor.visit_seq(Items(items.into_iter()))
            }
            other => Err(expected("a list", &other)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.kind {
            ValueKind::Table(table) => visitor.visit_map(Entries::new(table)),
            other => Err(expected("a table", &other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    /// A unit variant by its config-file name, e.g. `sync = "batch"`.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.kind {
            ValueKind::String(s) if variants.contains(&s.trim()) => {
                visitor.visit_enum(IntoDeserializer::<DeError>::into_deserializer(s.trim()))
            }
            other => {
                let names: Vec<String> = variants.iter().map(|v| format!("{v:?}")).collect();
                let one_of = format!("one of {}", names.join(", "));
                Err(expected(&one_of, other))
            }
        }
    }

    serde::forward_to_deserialize_any! {
        f32 f64 char bytes byte_buf unit unit_struct tuple tuple_struct
        identifier ignored_any
    }
}

/// The items of a list.
struct Items(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for Items {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }
}

/// The entries of a table, sorted by key so that problems come out in the
/// same order every time (the tree is a `HashMap`).
struct Entries {
    entries: std::vec::IntoIter<(String, Value)>,
    value: Option<Value>,
}

impl Entries {
    fn new(table: Map<String, Value>) -> Entries {
        let mut entries: Vec<_> = table.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Entries {
            entries: entries.into_iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for Entries {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(IntoDeserializer::<DeError>::into_deserializer(key))
            .map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DeError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| DeError("a value without its key".to_string()))?;
        seed.deserialize(Strict(value))
    }
}
