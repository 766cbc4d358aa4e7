//! Schemas as the registry keeps them: their type, their text, and the parsed form the
//! compatibility checks and validation use.

use std::str::FromStr;

/// The schema languages the registry accepts (Confluent's `schemaType`; absent means AVRO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    #[default]
    Avro,
    Json,
}

impl SchemaType {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
        }
    }
}

impl FromStr for SchemaType {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, SchemaError> {
        match s.to_ascii_uppercase().as_str() {
            "AVRO" => Ok(SchemaType::Avro),
            "JSON" => Ok(SchemaType::Json),
            "PROTOBUF" => Err(SchemaError::Invalid("PROTOBUF schemas are not supported (AVRO and JSON are)".into())),
            other => Err(SchemaError::Invalid(format!("unknown schemaType {other}: AVRO or JSON"))),
        }
    }
}

/// Why a schema was refused (Confluent's 42201 `invalid schema`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid schema: {0}")]
    Invalid(String),
}

/// A schema that parsed.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    pub kind: SchemaType,
    /// The form two registrations of the same schema share: Avro's Parsing Canonical Form,
    /// or the JSON document re-serialised (keys sorted, no whitespace).
    pub canonical: String,
    form: Form,
}

#[derive(Debug, Clone)]
enum Form {
    Avro(Box<apache_avro::Schema>),
    Json(serde_json::Value, std::sync::Arc<jsonschema::Validator>),
}

impl ParsedSchema {
    /// Parses `text` as a schema of `kind`.
    pub fn parse(kind: SchemaType, text: &str) -> Result<ParsedSchema, SchemaError> {
        match kind {
            SchemaType::Avro => {
                let schema = apache_avro::Schema::parse_str(text).map_err(|e| SchemaError::Invalid(e.to_string()))?;
                Ok(ParsedSchema { kind, canonical: schema.canonical_form(), form: Form::Avro(Box::new(schema)) })
            }
            SchemaType::Json => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| SchemaError::Invalid(format!("not JSON: {e}")))?;
                if !(value.is_object() || value.is_boolean()) {
                    return Err(SchemaError::Invalid("a JSON Schema is an object or a boolean".into()));
                }
                let validator = jsonschema::validator_for(&value).map_err(|e| SchemaError::Invalid(e.to_string()))?;
                // serde_json's map keeps keys sorted: this is a canonical text.
                let canonical = value.to_string();
                Ok(ParsedSchema { kind, canonical, form: Form::Json(value, std::sync::Arc::new(validator)) })
            }
        }
    }

    pub fn avro(&self) -> Option<&apache_avro::Schema> {
        match &self.form {
            Form::Avro(s) => Some(s),
            Form::Json(..) => None,
        }
    }

    pub fn json(&self) -> Option<&serde_json::Value> {
        match &self.form {
            Form::Json(v, _) => Some(v),
            Form::Avro(_) => None,
        }
    }

    /// A JSON schema's compiled validator.
    pub fn validator(&self) -> Option<&jsonschema::Validator> {
        match &self.form {
            Form::Json(_, v) => Some(v),
            Form::Avro(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_schema_written_differently_has_one_canonical_form() {
        let a = ParsedSchema::parse(
            SchemaType::Avro,
            r#"{"type": "record", "name": "User", "doc": "a user", "fields": [{"name": "id", "type": "long"}]}"#,
        )
        .unwrap();
        let b = ParsedSchema::parse(
            SchemaType::Avro,
            r#"{"name":"User","type":"record","fields":[{"type":"long","name":"id"}]}"#,
        )
        .unwrap();
        assert_eq!(a.canonical, b.canonical);
        let j1 =
            ParsedSchema::parse(SchemaType::Json, r#"{"type": "object", "properties": {"a": {"type": "string"}}}"#);
        let j2 = ParsedSchema::parse(SchemaType::Json, r#"{"properties":{"a":{"type":"string"}},"type":"object"}"#);
        assert_eq!(j1.unwrap().canonical, j2.unwrap().canonical);
    }

    #[test]
    fn invalid_schemas_are_refused_with_a_reason() {
        for (kind, text) in [
            (SchemaType::Avro, r#"{"type": "record", "name": "X"}"#),
            (SchemaType::Avro, r#"{"type": "nonsense"}"#),
            (SchemaType::Avro, "not json"),
            (SchemaType::Json, r#"{"type": "no-such-type"}"#),
            (SchemaType::Json, "[1, 2]"),
        ] {
            let e = ParsedSchema::parse(kind, text).unwrap_err();
            assert!(matches!(&e, SchemaError::Invalid(m) if !m.is_empty()), "{text}: {e}");
        }
        assert!("protobuf".parse::<SchemaType>().is_err());
        assert_eq!("json".parse::<SchemaType>().unwrap(), SchemaType::Json);
    }
}
