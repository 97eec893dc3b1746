//! Names: which strings may be model and version ids ([`is_valid_identifier`]),
//! and HTTP names in policies: [`MethodName`] (the methods a shadow mirrors) and
//! [`HeaderNameText`] (a canary's sticky header), each kept as the parsed `http`
//! type and written as its text, so the journal and the API read as before.

use std::fmt;

use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

/// An upper-case HTTP method, e.g. `POST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MethodName(Method);

impl MethodName {
    pub const GET: MethodName = MethodName(Method::GET);
    pub const POST: MethodName = MethodName(Method::POST);

    pub fn parse(text: &str) -> Result<MethodName, String> {
        let upper = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
        match Method::from_bytes(text.as_bytes()) {
            Ok(method) if upper => Ok(MethodName(method)),
            _ => Err(format!("{text:?} is not an upper-case HTTP method")),
        }
    }

    pub fn method(&self) -> &Method {
        &self.0
    }
}

impl TryFrom<String> for MethodName {
    type Error = String;
    fn try_from(text: String) -> Result<MethodName, String> {
        MethodName::parse(&text)
    }
}

impl From<MethodName> for String {
    fn from(name: MethodName) -> String {
        name.0.as_str().to_string()
    }
}

impl PartialEq<&str> for MethodName {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_str() == *other
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// A request header name, lower case, e.g. `x-user-id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderNameText(HeaderName);

impl HeaderNameText {
    /// Any case is accepted; header names are case-insensitive.
    pub fn parse(text: &str) -> Result<HeaderNameText, String> {
        HeaderName::from_bytes(text.to_ascii_lowercase().as_bytes())
            .map(HeaderNameText)
            .map_err(|_| format!("{text:?} is not a header name"))
    }

    pub fn name(&self) -> &HeaderName {
        &self.0
    }
}

impl TryFrom<String> for HeaderNameText {
    type Error = String;
    fn try_from(text: String) -> Result<HeaderNameText, String> {
        HeaderNameText::parse(&text)
    }
}

impl From<HeaderNameText> for String {
    fn from(name: HeaderNameText) -> String {
        name.0.as_str().to_string()
    }
}

impl fmt::Display for HeaderNameText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// Whether `name` may be used as a model or version identifier: it must sit in a
/// URL path segment and a metric label unescaped.
pub fn is_valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && !name.bytes().all(|b| b == b'.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A model or version id as a response header value. Ids are validated to
/// letters, digits, `-`, `_` and `.`, all valid in a header value; were one not,
/// its other bytes are written as `%XX`, so the header still names it.
pub fn id_header_value(id: &str) -> HeaderValue {
    if let Ok(value) = HeaderValue::from_str(id) {
        return value;
    }
    let escaped: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_graphic() && b != b'%' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&escaped).unwrap_or(HeaderValue::from_static("%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_upper_case_http_methods() {
        assert_eq!(MethodName::parse("POST").unwrap(), MethodName::POST);
        for bad in ["post", "", "PO ST", "GET\n"] {
            assert!(MethodName::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&vec![MethodName::GET]).unwrap();
        assert_eq!(json, r#"["GET"]"#);
        assert!(serde_json::from_str::<MethodName>(r#""get""#).is_err());
    }

    #[test]
    fn header_names_are_lower_cased_and_round_trip_as_text() {
        let name = HeaderNameText::parse("X-User-Id").unwrap();
        assert_eq!(name.to_string(), "x-user-id");
        assert_eq!(serde_json::to_string(&name).unwrap(), r#""x-user-id""#);
        assert!(HeaderNameText::parse("x user").is_err());
        assert!(serde_json::from_str::<HeaderNameText>(r#""a:b""#).is_err());
    }

    #[test]
    fn ids_are_header_values_as_they_are() {
        assert_eq!(id_header_value("fraud-v1.2_x"), "fraud-v1.2_x");
        assert_eq!(id_header_value("a b\n%"), "a%20b%0A%25");
    }
}

/// The name a model server serves a version under (OpenAI's `model`, e.g.
/// `meta-llama/Llama-3.1-8B-Instruct`): 1-256 characters, none of them control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServedModelName(String);

impl ServedModelName {
    pub const MAX_LEN: usize = 256;

    pub fn parse(text: &str) -> Result<ServedModelName, String> {
        if text.is_empty() || text.chars().count() > Self::MAX_LEN {
            return Err(format!(
                "a served model name has 1-{} characters, not {}",
                Self::MAX_LEN,
                text.chars().count()
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(format!("{text:?} holds a control character"));
        }
        Ok(ServedModelName(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServedModelName {
    type Error = String;
    fn try_from(text: String) -> Result<ServedModelName, String> {
        ServedModelName::parse(&text)
    }
}

impl From<ServedModelName> for String {
    fn from(name: ServedModelName) -> String {
        name.0
    }
}

impl fmt::Display for ServedModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
