//! Dynamic properties: [`Property<T>`] holds either a typed value or a Pebble expression string
//! (`"{{ inputs.n }}"`) rendered later, where the task runs.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Whether `text` holds a Pebble expression or tag (`{{ ... }}` or `{% ... %}`).
pub fn is_expression(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// A property that is either a literal `T` or an expression string rendered at run time.
///
/// `concurrencyLimit: 2` and `concurrencyLimit: "{{ inputs.n }}"` are both accepted, while
/// `concurrencyLimit: [1]` is rejected with serde's message for `T` (`invalid type: sequence, expected
/// u32`). A string is tried as `T` first, so a literal string valid for `T` stays a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Property<T> {
    /// A literal value.
    Value(T),
    /// A Pebble expression, rendered where the task runs.
    Expression(String),
}

impl<T> Property<T> {
    /// The literal value, if this is not an expression.
    pub fn as_value(&self) -> Option<&T> {
        match self {
            Property::Value(v) => Some(v),
            Property::Expression(_) => None,
        }
    }
}

impl<T: Serialize> Serialize for Property<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Property::Value(v) => v.serialize(serializer),
            Property::Expression(e) => serializer.serialize_str(e),
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Property<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match serde_json::from_value::<T>(value.clone()) {
            Ok(v) => Ok(Property::Value(v)),
            Err(e) => match value {
                Value::String(s) if is_expression(&s) => Ok(Property::Expression(s)),
                _ => Err(D::Error::custom(e)),
            },
        }
    }
}

impl<T: fmt::Display> fmt::Display for Property<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Property::Value(v) => v.fmt(f),
            Property::Expression(e) => f.write_str(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_values_and_expressions_only() {
        let v: Property<u32> = serde_json::from_str("2").unwrap();
        assert_eq!(v, Property::Value(2));
        let e: Property<u32> = serde_json::from_str("\"{{ inputs.n }}\"").unwrap();
        assert_eq!(e, Property::Expression("{{ inputs.n }}".into()));
        let err = serde_json::from_str::<Property<u32>>("[1]").unwrap_err();
        assert_eq!(err.to_string(), "invalid type: sequence, expected u32");
        assert!(serde_json::from_str::<Property<u32>>("\"abc\"").is_err());
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"{{ inputs.n }}\"");
    }
}
