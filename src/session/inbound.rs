//! Parsing a client's text frame: an envelope to send or an acknowledgement, and a message
//! that names what is wrong when a frame does not parse. Kept as it was, in one small file,
//! until the shared parser in `protocol` replaces it.

use std::borrow::Cow;

use serde::Deserialize;

use crate::protocol::ErrorCode;

/// A client frame: an envelope (`from`, `to`, `payload`, optional `ref`) or an `ack`.
#[derive(Debug, Deserialize)]
pub(super) struct Inbound<'a> {
    #[serde(borrow, default)]
    pub(super) from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) payload: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default, rename = "ref")]
    pub(super) reference: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) ack: Option<Acks>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Acks {
    One(String),
    Many(Vec<String>),
}

/// Turns a parse failure into a message that names what is wrong.
pub(super) fn describe_parse_error(text: &str, error: &serde_json::Error) -> (ErrorCode, String) {
    use serde_json::Value;
    if !error.is_data() {
        return (ErrorCode::InvalidJson, format!("invalid JSON: {error}"));
    }
    // The cold path: parse again, loosely, to say which field has the wrong type.
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return (ErrorCode::InvalidFrame, "a frame must be a JSON object".into());
    };
    for field in ["from", "to", "payload", "ref"] {
        if map.get(field).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return (ErrorCode::InvalidFrame, format!("field `{field}` must be a string"));
        }
    }
    if map.contains_key("ack") {
        return (ErrorCode::InvalidFrame, "`ack` must be a message id or a list of ids".into());
    }
    (ErrorCode::InvalidFrame, format!("invalid frame: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_problem() {
        let check = |text: &str| {
            let err = serde_json::from_str::<Inbound>(text).unwrap_err();
            describe_parse_error(text, &err)
        };
        assert_eq!(check("{nope").0, ErrorCode::InvalidJson);
        assert_eq!(check("[1,2]"), (ErrorCode::InvalidFrame, "a frame must be a JSON object".into()));
        assert_eq!(check(r#"{"from": 5}"#), (ErrorCode::InvalidFrame, "field `from` must be a string".into()));
        assert_eq!(check(r#"{"to": ["x"]}"#), (ErrorCode::InvalidFrame, "field `to` must be a string".into()));
    }

    #[test]
    fn escaped_strings_are_accepted() {
        let f: Inbound = serde_json::from_str(r#"{"from":"a\u0062","to":"b","payload":"x\"y\u00e9"}"#).unwrap();
        assert_eq!(f.from.as_deref(), Some("ab"));
        assert_eq!(f.payload.map(|p| p.get()), Some(r#""x\"y\u00e9""#));
    }
}
