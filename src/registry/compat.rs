//! Compatibility levels as Confluent's Schema Registry defines them, checked when a new
//! version is registered:
//!
//! - `BACKWARD` (the default): consumers using the new schema can read data written with the
//!   latest version (the new schema reads, the latest wrote); `_TRANSITIVE`: every version.
//! - `FORWARD`: consumers using the latest version can read data written with the new one;
//!   `_TRANSITIVE`: every version reads it.
//! - `FULL`: both; `NONE`: anything goes.
//!
//! "Reads" is Avro's schema resolution for AVRO (the `apache-avro` crate's
//! `SchemaCompatibility`), and for JSON Schema "the reader accepts every document the writer
//! accepts", judged on the keywords that shape documents (`type`, `enum`, `properties`,
//! `required`, `additionalProperties`, `items` and the numeric and length bounds): a reader
//! that needs more than the writer promises is refused, as Confluent refuses it (a property
//! added to an open content model, a required property the writer may omit, a narrowed type).
//! A change to any other keyword (`oneOf`, `$ref`, `pattern`, …) is refused rather than
//! guessed: stricter than Confluent there, never looser.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde_json::Value;

use super::schema::{ParsedSchema, SchemaError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(self, Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive)
    }

    /// (the new schema must read the old ones, the old ones must read the new one)
    fn directions(self) -> (bool, bool) {
        match self {
            Level::None => (false, false),
            Level::Backward | Level::BackwardTransitive => (true, false),
            Level::Forward | Level::ForwardTransitive => (false, true),
            Level::Full | Level::FullTransitive => (true, true),
        }
    }

    /// Whether `new` may follow `previous` (oldest first): the reasons it may not.
    pub fn check(self, new: &ParsedSchema, previous: &[&ParsedSchema]) -> Vec<String> {
        let (backward, forward) = self.directions();
        let against: &[&ParsedSchema] = match previous.split_last() {
            Some((latest, _)) if !self.transitive() => std::slice::from_ref(latest),
            _ => previous,
        };
        let mut reasons = Vec::new();
        for old in against {
            if backward {
                reasons.extend(can_read(old, new).into_iter().map(|r| format!("the new schema cannot read: {r}")));
            }
            if forward {
                reasons.extend(can_read(new, old).into_iter().map(|r| format!("an older schema cannot read: {r}")));
            }
        }
        reasons
    }
}

impl FromStr for Level {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Level, SchemaError> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            other => return Err(SchemaError::Invalid(format!("unknown compatibility level {other}"))),
        })
    }
}

/// Why data written with `writer` may not be readable with `reader` (empty: it is).
pub fn can_read(writer: &ParsedSchema, reader: &ParsedSchema) -> Vec<String> {
    match (writer.avro(), reader.avro(), writer.json(), reader.json()) {
        (Some(w), Some(r), _, _) => match apache_avro::schema_compatibility::SchemaCompatibility::can_read(w, r) {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        },
        (_, _, Some(w), Some(r)) => {
            let mut reasons = Vec::new();
            json_can_read(w, r, "#", &mut reasons);
            reasons
        }
        _ => vec![format!("the schema type changed from {} to {}", writer.kind.as_str(), reader.kind.as_str())],
    }
}

/// JSON Schema keywords whose changes are refused rather than judged.
const UNJUDGED: &[&str] = &[
    "$ref",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "const",
    "pattern",
    "format",
    "multipleOf",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "contains",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
];

/// The JSON types a schema allows (`None`: any).
fn types(schema: &Value) -> Option<BTreeSet<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some([t.as_str()].into()),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn allows(types: &Option<BTreeSet<&str>>, t: &str) -> bool {
    types.as_ref().is_none_or(|ts| ts.contains(t) || (t == "integer" && ts.contains("number")))
}

fn json_can_read(writer: &Value, reader: &Value, at: &str, reasons: &mut Vec<String>) {
    match (writer, reader) {
        (_, Value::Bool(true)) | (Value::Bool(false), _) => return,
        (_, Value::Bool(false)) => return reasons.push(format!("{at}: the reader accepts nothing")),
        (Value::Object(_), Value::Object(r)) if r.is_empty() => return,
        _ => {}
    }
    let (wt, rt) = (types(writer), types(reader));
    match (&wt, &rt) {
        (_, None) => {}
        (None, Some(r)) => reasons.push(format!("{at}: the writer allows any type, the reader only {r:?}")),
        (Some(w), Some(_)) => {
            for t in w {
                if !allows(&rt, t) {
                    reasons.push(format!("{at}: type {t} is no longer accepted"));
                }
            }
        }
    }
    if let Some(Value::Array(allowed)) = reader.get("enum") {
        match writer.get("enum") {
            Some(Value::Array(written)) => {
                for v in written.iter().filter(|v| !allowed.contains(v)) {
                    reasons.push(format!("{at}: enum value {v} is no longer accepted"));
                }
            }
            _ => reasons.push(format!("{at}: the reader accepts only an enum the writer does not restrict to")),
        }
    }
    bound(writer, reader, "minimum", at, reasons, |w, r| w >= r);
    bound(writer, reader, "maximum", at, reasons, |w, r| w <= r);
    bound(writer, reader, "minLength", at, reasons, |w, r| w >= r);
    bound(writer, reader, "maxLength", at, reasons, |w, r| w <= r);
    bound(writer, reader, "minItems", at, reasons, |w, r| w >= r);
    bound(writer, reader, "maxItems", at, reasons, |w, r| w <= r);
    // Keywords this check does not reason about: a change to one of them is refused rather
    // than guessed compatible (a registry that lets a breaking change through poisons every
    // consumer; one that refuses a safe change costs a NONE level or a new subject).
    for key in UNJUDGED {
        if writer.get(key) != reader.get(key) {
            reasons.push(format!("{at}: '{key}' changed, which gregor does not judge: refused to be safe"));
        }
    }
    if allows(&wt, "object") && allows(&rt, "object") {
        objects(writer, reader, at, reasons);
    }
    if allows(&wt, "array") && allows(&rt, "array") {
        let any = Value::Bool(true);
        if let Some(r_items) = reader.get("items") {
            let w_items = writer.get("items").unwrap_or(&any);
            json_can_read(w_items, r_items, &format!("{at}/items"), reasons);
        }
    }
}

/// A bound the reader sets must hold for everything the writer allows.
fn bound(writer: &Value, reader: &Value, key: &str, at: &str, reasons: &mut Vec<String>, holds: fn(f64, f64) -> bool) {
    let Some(r) = reader.get(key).and_then(Value::as_f64) else { return };
    match writer.get(key).and_then(Value::as_f64) {
        Some(w) if holds(w, r) => {}
        Some(w) => reasons.push(format!("{at}: {key} {r} is stricter than the writer's {w}")),
        None => reasons.push(format!("{at}: {key} {r} was added")),
    }
}

fn objects(writer: &Value, reader: &Value, at: &str, reasons: &mut Vec<String>) {
    let empty = serde_json::Map::new();
    let props = |s: &Value| s.get("properties").and_then(Value::as_object).unwrap_or(&empty).clone();
    let required = |s: &Value| -> BTreeSet<String> {
        s.get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let any = Value::Bool(true);
    let (w_props, r_props) = (props(writer), props(reader));
    let w_extra = writer.get("additionalProperties").unwrap_or(&any);
    let r_extra = reader.get("additionalProperties").unwrap_or(&any);
    let w_required = required(writer);
    for name in required(reader).difference(&w_required) {
        reasons.push(format!("{at}/properties/{name}: required by the reader, optional for the writer"));
    }
    for (name, w) in &w_props {
        let path = format!("{at}/properties/{name}");
        match r_props.get(name) {
            Some(r) => json_can_read(w, r, &path, reasons),
            None => json_can_read(w, r_extra, &path, reasons),
        }
    }
    for (name, r) in &r_props {
        if !w_props.contains_key(name) {
            // The writer may write this property with anything its additionalProperties allows.
            json_can_read(w_extra, r, &format!("{at}/properties/{name}"), reasons);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::SchemaType;
    use super::*;

    fn avro(fields: &str) -> ParsedSchema {
        let text = format!(r#"{{"type": "record", "name": "User", "fields": [{fields}]}}"#);
        ParsedSchema::parse(SchemaType::Avro, &text).unwrap()
    }

    fn json(text: &str) -> ParsedSchema {
        ParsedSchema::parse(SchemaType::Json, text).unwrap()
    }

    fn ok(level: Level, new: &ParsedSchema, previous: &[&ParsedSchema]) -> bool {
        level.check(new, previous).is_empty()
    }

    /// Confluent's rule table for Avro: (change, BACKWARD, FORWARD, FULL).
    #[test]
    fn avro_changes_against_each_level() {
        let v1 = avro(r#"{"name": "id", "type": "long"}"#);
        let cases = [
            (
                "add a field with a default",
                avro(r#"{"name": "id", "type": "long"}, {"name": "n", "type": "int", "default": 0}"#),
                true,
                true,
                true,
            ),
            (
                "add a field without a default",
                avro(r#"{"name": "id", "type": "long"}, {"name": "n", "type": "int"}"#),
                false,
                true,
                false,
            ),
            (
                "remove a field without a default",
                avro(r#"{"name": "other", "type": ["null", "string"], "default": null}"#),
                true,
                false,
                false,
            ),
            ("change int to string", avro(r#"{"name": "id", "type": "string"}"#), false, false, false),
        ];
        for (what, v2, backward, forward, full) in &cases {
            assert_eq!(
                ok(Level::Backward, v2, &[&v1]),
                *backward,
                "BACKWARD: {what}: {:?}",
                Level::Backward.check(v2, &[&v1])
            );
            assert_eq!(ok(Level::Forward, v2, &[&v1]), *forward, "FORWARD: {what}");
            assert_eq!(ok(Level::Full, v2, &[&v1]), *full, "FULL: {what}");
            assert!(ok(Level::None, v2, &[&v1]), "NONE: {what}");
        }
        // Promotion: int written, long read.
        let int = avro(r#"{"name": "id", "type": "int"}"#);
        assert!(ok(Level::Backward, &v1, &[&int]), "a long reads an int");
        assert!(!ok(Level::Forward, &v1, &[&int]), "an int cannot read a long");
    }

    /// Transitive levels check every earlier version, the others only the latest.
    #[test]
    fn transitive_levels_check_every_version() {
        let v1 = avro(r#"{"name": "id", "type": "long"}"#);
        let v2 = avro(r#"{"name": "id", "type": "long"}, {"name": "n", "type": "int", "default": 0}"#);
        // v3 drops v1's field `id` and has a new required field only v2 had with a default.
        let v3 = avro(r#"{"name": "n", "type": "int"}"#);
        assert!(ok(Level::Backward, &v3, &[&v1, &v2]), "v3 reads v2's data (n is there)");
        assert!(!ok(Level::BackwardTransitive, &v3, &[&v1, &v2]), "v3 cannot read v1's data (no n, no default)");
    }

    #[test]
    fn json_schema_changes_against_each_level() {
        let closed =
            json(r#"{"type": "object", "properties": {"id": {"type": "integer"}}, "additionalProperties": false}"#);
        let open = json(r#"{"type": "object", "properties": {"id": {"type": "integer"}}}"#);
        let cases = [
            (
                "add an optional property to a closed model",
                &closed,
                json(
                    r#"{"type": "object", "properties": {"id": {"type": "integer"}, "n": {"type": "string"}}, "additionalProperties": false}"#,
                ),
                true,
                false,
            ),
            (
                "add an optional property to an open model",
                &open,
                json(r#"{"type": "object", "properties": {"id": {"type": "integer"}, "n": {"type": "string"}}}"#),
                false,
                true,
            ),
            (
                "make a property required",
                &open,
                json(r#"{"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}"#),
                false,
                true,
            ),
            (
                "widen integer to number",
                &open,
                json(r#"{"type": "object", "properties": {"id": {"type": "number"}}}"#),
                true,
                false,
            ),
            (
                "change integer to string",
                &open,
                json(r#"{"type": "object", "properties": {"id": {"type": "string"}}}"#),
                false,
                false,
            ),
        ];
        for (what, v1, v2, backward, forward) in &cases {
            assert_eq!(
                ok(Level::Backward, v2, &[v1]),
                *backward,
                "BACKWARD: {what}: {:?}",
                Level::Backward.check(v2, &[v1])
            );
            assert_eq!(
                ok(Level::Forward, v2, &[v1]),
                *forward,
                "FORWARD: {what}: {:?}",
                Level::Forward.check(v2, &[v1])
            );
            assert_eq!(ok(Level::Full, v2, &[v1]), *backward && *forward, "FULL: {what}");
        }
        let avro_v = avro(r#"{"name": "id", "type": "long"}"#);
        assert!(!ok(Level::Backward, &open, &[&avro_v]), "changing the schema type is refused");
        // Keywords not judged: a change is refused, an unchanged one passes.
        let with_pattern = json(r#"{"type": "object", "properties": {"s": {"type": "string", "pattern": "^a"}}}"#);
        let other_pattern = json(r#"{"type": "object", "properties": {"s": {"type": "string", "pattern": "^b"}}}"#);
        let reasons = Level::Backward.check(&other_pattern, &[&with_pattern]);
        assert!(reasons.iter().any(|r| r.contains("#/properties/s: 'pattern' changed")), "{reasons:?}");
        assert!(ok(Level::Full, &with_pattern, &[&with_pattern]), "the same schema is compatible with itself");
    }

    #[test]
    fn levels_parse_as_confluent_names_them() {
        for l in [
            Level::None,
            Level::Backward,
            Level::BackwardTransitive,
            Level::Forward,
            Level::ForwardTransitive,
            Level::Full,
            Level::FullTransitive,
        ] {
            assert_eq!(l.as_str().parse::<Level>().unwrap(), l);
        }
        assert!("SIDEWAYS".parse::<Level>().is_err());
    }
}
