//! The JSON tree validation walks: borrowed from the record's bytes.
//!
//! A statement is parsed once, checked against every rule and mapped. In a
//! tree of owned values (`serde_json::Value`) every string and property name
//! is copied and every object is a `BTreeMap`; building and dropping that
//! tree was a fifth of the collector's loop. Here strings borrow the input
//! (only ones with escapes are copied) and an object is a vector of its
//! properties in document order: xAPI objects have a handful of properties,
//! which a linear scan finds faster than a tree.

use std::collections::HashMap;

pub use serde_json_borrow::{ObjectAsVec as Object, Value as Json};

/// `null`, for lookups that miss.
pub static NULL: Json<'static> = Json::Null;

/// Property lookup with the meaning of a repeated name fixed.
pub trait Props<'a> {
    /// The value of property `key`; when a name repeats, its last value, as
    /// serde_json and JavaScript's `JSON.parse` read it (RFC 8259 §4 leaves
    /// it to the receiver). Downstream readers of the payload parse it that
    /// way, so validation must see the value they will.
    fn prop(&self, key: &str) -> Option<&Json<'a>>;

    /// Whether property `key` is present.
    fn has(&self, key: &str) -> bool {
        self.prop(key).is_some()
    }
}

impl<'a> Props<'a> for Object<'a> {
    fn prop(&self, key: &str) -> Option<&Json<'a>> {
        self.as_vec()
            .iter()
            .rev()
            .find_map(|(k, v)| (**k == *key).then_some(v))
    }
}

/// Which entries of an object a lookup sees: each name's last copy. Rules
/// that walk every entry judge only these, so a repeated name is judged by
/// the value [`Props::prop`] returns. The positions are found on first
/// use, and only an entry that would fail a rule asks: valid objects pay
/// nothing, and an object of many repeated names costs one pass, not one
/// per entry.
pub struct Visible<'o, 'a> {
    object: &'o Object<'a>,
    last: Option<HashMap<&'o str, usize>>,
}

impl<'o, 'a> Visible<'o, 'a> {
    /// The entries of `object` a lookup sees.
    pub fn new(object: &'o Object<'a>) -> Self {
        Self { object, last: None }
    }

    /// Whether entry `index` (named `key`) is the copy a lookup reads: the
    /// last of its name.
    pub fn is_read(&mut self, index: usize, key: &str) -> bool {
        let object = self.object;
        let last = self.last.get_or_insert_with(|| {
            object
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k, i))
                .collect()
        });
        last.get(key) == Some(&index)
    }
}

/// `value[key]`, or `null` when `value` is not an object or lacks `key`.
pub fn at<'v, 'a>(value: &'v Json<'a>, key: &str) -> &'v Json<'a> {
    value.as_object().and_then(|o| o.prop(key)).unwrap_or(&NULL)
}

/// Parses `text` into a tree borrowing from it.
///
/// ```
/// use trellis_collector::json::{Props, parse};
/// let json = parse(r#"{"verb": {"id": "http://adlnet.gov/expapi/verbs/passed"}}"#).unwrap();
/// let verb = json.as_object().and_then(|o| o.prop("verb"));
/// assert!(verb.is_some_and(|v| v.is_object()));
/// ```
///
/// # Errors
/// serde_json's error: not JSON.
pub fn parse(text: &str) -> Result<Json<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_unless_escaped_and_a_repeated_name_reads_its_last_value() {
        let text = r#"{"a": "x", "b": "y\u0021", "a": "z"}"#;
        let json = parse(text).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.prop("a").and_then(Json::as_str), Some("z"));
        assert!(matches!(
            object.prop("a"),
            Some(Json::Str(std::borrow::Cow::Borrowed(_)))
        ));
        assert!(matches!(
            object.prop("b"),
            Some(Json::Str(std::borrow::Cow::Owned(s))) if s == "y!"
        ));
        assert_eq!(at(&json, "missing"), &Json::Null);
        assert_eq!(at(at(&json, "a"), "deeper"), &Json::Null);
        let mut read = Visible::new(object);
        assert_eq!(
            [(0, "a"), (1, "b"), (2, "a")].map(|(i, k)| read.is_read(i, k)),
            [false, true, true]
        );
    }

    /// serde_json_borrow's own lookups return a repeated name's first value;
    /// clippy.toml refuses them. If the lint stopped firing, this
    /// expectation would fail `cargo clippy --all-targets -D warnings`.
    #[test]
    #[expect(clippy::disallowed_methods)]
    fn first_value_lookups_are_refused_by_clippy() {
        let json = parse(r#"{"a": 1, "a": 2}"#).unwrap();
        assert_eq!(
            json.as_object().unwrap().get("a").and_then(Json::as_u64),
            Some(1)
        );
    }
}
