//! Typed JSON structs whose property names match in any ASCII case, borrowing from the body.
//!
//! Graph matches JSON property names case-insensitively, and the official SDKs rely on it:
//! Kiota-generated clients write action parameters in PascalCase (`{"Message": …,
//! "SaveToSentItems": false}`, `{"DestinationId": …}`). serde's derive only matches exact names
//! (plus hand-listed aliases), so [`json_object!`] generates the `Deserialize` impl instead: the
//! property name is compared in place with `eq_ignore_ascii_case` against the declared names (no
//! lower-cased copy per key), unknown properties are skipped with `IgnoredAny`, and a property
//! given twice (in any spelling) is an error, as with the derive. [`Text`] is the borrowing
//! string those structs use: serde's own `Cow<str>` impl always copies unless the derive's
//! `#[serde(borrow)]` is there to ask for it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

use crate::common::bytes::same;

/// Reads `T` from a whole JSON body; see [`from_body_seed`].
pub fn from_body<'a, T: de::Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    from_body_seed(body, std::marker::PhantomData::<T>)
}

/// Reads a whole JSON body through `seed`. A body of valid UTF-8 (every body but a broken or
/// hostile one) is checked once, whole, and read as text: read as bytes, serde_json checks
/// every string it borrows again, which cost a Graph page a sixth of its time. Any other body
/// is read as bytes, so its error still names where the bad byte is.
pub fn from_body_seed<'a, S: DeserializeSeed<'a>>(
    body: &'a [u8],
    seed: S,
) -> serde_json::Result<S::Value> {
    fn read<'a, R: serde_json::de::Read<'a>, S: DeserializeSeed<'a>>(
        mut json: serde_json::Deserializer<R>,
        seed: S,
    ) -> serde_json::Result<S::Value> {
        let value = seed.deserialize(&mut json)?;
        json.end()?;
        Ok(value)
    }
    match crate::common::text::utf8(body) {
        Ok(text) => read(serde_json::Deserializer::from_str(text), seed),
        Err(_) => read(serde_json::Deserializer::from_slice(body), seed),
    }
}

/// A JSON string borrowed from the body when it has no escapes, copied only when it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> de::Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `true`/`false` as JSON booleans or as strings in any case (Graph's own samples send
/// `"false"`); `null` and absent are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LenientBool(pub Option<bool>);

impl<'de> de::Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientBool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean or \"true\"/\"false\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LenientBool, E> {
                Ok(LenientBool(Some(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientBool, E> {
                let v = v.trim();
                Ok(LenientBool(if v.eq_ignore_ascii_case("true") {
                    Some(true)
                } else if v.eq_ignore_ascii_case("false") {
                    Some(false)
                } else {
                    None
                }))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LenientBool, E> {
                Ok(LenientBool(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<LenientBool, E> {
                Ok(LenientBool(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<LenientBool, D::Error> {
                d.deserialize_any(V)
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads one property name and answers its index in `names`, matched in any ASCII case, or
/// `None` for a property nobody reads. Each [`json_object!`] struct keeps one in a `static`.
pub struct Keys {
    names: &'static [&'static str],
    /// Bit `i` of entry `n` is set when `names[i]` is `n` bytes long (63: that long or longer),
    /// so that a key is compared only with the names it could be.
    by_length: [u64; 64],
}

impl Keys {
    /// At most 64 names; more is a compile-time error where the `static` is declared.
    pub const fn new(names: &'static [&'static str]) -> Keys {
        assert!(
            names.len() <= 64,
            "a JSON object reads at most 64 properties"
        );
        let mut by_length = [0u64; 64];
        let mut i = 0;
        while i < names.len() {
            let length = names[i].len();
            by_length[if length < 63 { length } else { 63 }] |= 1 << i;
            i += 1;
        }
        Keys { names, by_length }
    }

    /// The index of `key` among the names, in any ASCII case. Clients nearly always send the
    /// documented spelling, so the candidates of its length are compared exactly first (in line, a word
    /// at a time); byte by byte without case, against every name, was a Graph page's largest
    /// single cost.
    fn position(&self, key: &[u8]) -> Option<usize> {
        let candidates = self.by_length[key.len().min(63)];
        self.first(candidates, |name| same(name, key)).or_else(|| {
            self.first(candidates, |name| {
                ends_alike(name, key) && name.eq_ignore_ascii_case(key)
            })
        })
    }

    /// The first of the `candidates` (a bit set of indexes) whose name `matches`.
    #[inline]
    fn first(&self, mut candidates: u64, matches: impl Fn(&[u8]) -> bool) -> Option<usize> {
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize;
            if matches(self.names[i].as_bytes()) {
                return Some(i);
            }
            candidates &= candidates - 1;
        }
        None
    }
}

/// Whether the first and the last bytes of two names could be the same letters in another
/// case: a cheap look before comparing them whole without case, which most names that are
/// not read (`@odata.etag`, `bodyPreview`) fail.
#[inline]
fn ends_alike(name: &[u8], key: &[u8]) -> bool {
    let alike = |a: Option<&u8>, b: Option<&u8>| match (a, b) {
        (Some(a), Some(b)) => (a ^ b) & !0x20 == 0,
        _ => false,
    };
    alike(name.first(), key.first()) && alike(name.last(), key.last())
}

impl<'de> DeserializeSeed<'de> for &Keys {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for &Keys {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a property name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.position(v.as_bytes()))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Option<usize>, E> {
        Ok(self.position(v))
    }
}

/// Declares a struct with one lifetime and generates a `Deserialize` that reads it from a JSON
/// object whose property names match the given names in any ASCII case.
///
/// ```text
/// json_object! {
///     struct Destination<'a> {
///         destination_id: Text<'a> = "destinationId" (required),
///         comment: Option<Text<'a>> = "comment",
///     }
/// }
/// ```
///
/// A field absent from the object takes its type's `Default`, unless marked `(required)`
/// (then it is a `missing_field` error). Unknown properties are skipped; a property present
/// twice is a `duplicate_field` error.
macro_rules! json_object {
    // How a field ends up when the object is read: its value, its default, or an error.
    (@finish $a:ident, $field:ident, $key:literal) => {
        $field.unwrap_or_default()
    };
    (@finish $a:ident, $field:ident, $key:literal, required) => {
        match $field {
            Some(v) => v,
            None => return Err(<$a::Error as ::serde::de::Error>::missing_field($key)),
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident<$lt:lifetime> {
            $( $field:ident : $ty:ty = $key:literal $(($required:ident))? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name<$lt> {
            $( $field: $ty, )*
        }

        impl<'de: $lt, $lt> ::serde::Deserialize<'de> for $name<$lt> {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                static KEYS: $crate::inspect::json::Keys =
                    $crate::inspect::json::Keys::new(&[$($key),*]);
                // The discriminants are the fields' indexes in KEYS.
                #[allow(non_camel_case_types, dead_code)]
                enum Index { $($field),* }
                struct V<$lt>(::std::marker::PhantomData<$name<$lt>>);
                impl<'de: $lt, $lt> ::serde::de::Visitor<'de> for V<$lt> {
                    type Value = $name<$lt>;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($name), ")"))
                    }
                    fn visit_map<A: ::serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Self::Value, A::Error> {
                        $( let mut $field: Option<$ty> = None; )*
                        while let Some(index) =
                            map.next_key_seed(&KEYS)?
                        {
                            match index {
                                $(
                                    Some(i) if i == Index::$field as usize => {
                                        if $field.is_some() {
                                            return Err(<A::Error as ::serde::de::Error>::duplicate_field($key));
                                        }
                                        $field = Some(map.next_value()?);
                                    }
                                )*
                                _ => {
                                    map.next_value::<::serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok($name {
                            $( $field: $crate::inspect::json::json_object!(
                                @finish A, $field, $key $(, $required)?
                            ), )*
                        })
                    }
                }
                d.deserialize_map(V(::std::marker::PhantomData))
            }
        }
    };
}
pub(crate) use json_object;

#[cfg(test)]
mod tests {
    use super::*;

    json_object! {
        #[derive(Debug)]
        struct Probe<'a> {
            save_to_sent_items: LenientBool = "saveToSentItems",
            message_id: Option<Text<'a>> = "messageId",
            required_name: Text<'a> = "name" (required),
            list: Vec<Text<'a>> = "list",
            at_removed: Option<de::IgnoredAny> = "@removed",
        }
    }

    #[test]
    fn property_names_match_in_any_case() {
        for body in [
            r#"{"saveToSentItems": true, "messageId": "a", "name": "n", "list": ["x"]}"#,
            r#"{"SaveToSentItems": true, "MessageId": "a", "Name": "n", "List": ["x"]}"#,
            r#"{"SAVETOSENTITEMS": "True", "messageid": "a", "NAME": "n", "lIsT": ["x"]}"#,
        ] {
            let p: Probe<'_> = serde_json::from_str(body).unwrap();
            assert_eq!(p.save_to_sent_items, LenientBool(Some(true)), "{body}");
            assert_eq!(p.message_id.as_deref(), Some("a"));
            assert_eq!(&*p.required_name, "n");
            assert_eq!(p.list, vec![Text("x".into())]);
            assert!(p.at_removed.is_none());
        }
    }

    #[test]
    fn unknown_ignored_duplicates_and_missing_required_refused() {
        let p: Probe<'_> = serde_json::from_str(
            r#"{"name": "n", "other": {"deep": [1, {"x": null}]}, "@Removed": {"reason": "deleted"}}"#,
        )
        .unwrap();
        assert!(p.at_removed.is_some());
        assert_eq!(p.save_to_sent_items, LenientBool(None));
        let dup = serde_json::from_str::<Probe<'_>>(r#"{"name": "a", "Name": "b"}"#);
        assert!(dup.unwrap_err().to_string().contains("duplicate field"));
        let missing = serde_json::from_str::<Probe<'_>>(r#"{"messageId": "a"}"#);
        assert!(missing.unwrap_err().to_string().contains("missing field"));
        assert!(serde_json::from_str::<Probe<'_>>(r#"["n"]"#).is_err());
    }

    #[test]
    fn keys_find_names_of_every_length_in_any_case() {
        const LONG: &str = "aPropertyNameLongerThanSixtyThreeBytesSoThatItSharesTheLastSlot_1";
        const LONGER: &str = "aPropertyNameLongerThanSixtyThreeBytesSoThatItSharesTheLastSlot_12";
        static KEYS: Keys = Keys::new(&["id", "to", "cc", "subject", LONG, LONGER]);
        let at = |key: &str| KEYS.position(key.as_bytes());
        assert_eq!(at("id"), Some(0));
        assert_eq!(at("ID"), Some(0));
        assert_eq!(at("To"), Some(1));
        assert_eq!(at("cC"), Some(2));
        assert_eq!(at("SUBJECT"), Some(3));
        assert_eq!(at(LONG), Some(4));
        assert_eq!(at(&LONG.to_ascii_uppercase()), Some(4));
        assert_eq!(at(&LONGER.to_ascii_lowercase()), Some(5));
        for unknown in [
            "",
            "i",
            "ix",
            "subjec",
            "subjectx",
            &LONG[..63],
            &LONG[..64],
        ] {
            assert_eq!(at(unknown), None, "{unknown}");
        }
        // Case folds letters only: `@` is not `` ` ``, nor `[` `{`.
        static ODD: Keys = Keys::new(&["@removed", "[x"]);
        assert_eq!(ODD.position(b"`removed"), None);
        assert_eq!(ODD.position(b"{x"), None);
        assert_eq!(ODD.position(b"@REMOVED"), Some(0));
    }

    #[test]
    fn bodies_read_alike_as_text_and_as_bytes() {
        // Whatever the body, `from_body` (text when it is UTF-8) answers what serde_json's
        // reading of the bytes answers: the same values, or the same error at the same place.
        let bodies: [&[u8]; 7] = [
            " {\"name\": \"n\\u00e9\", \"messageId\": \"caf\\u00e9 \u{e9}\"} ".as_bytes(),
            "{\"name\": \"caf\u{e9}\", \"list\": [\"x\", \"y\"]}".as_bytes(),
            b"{\"name\": \"\xff\"}",
            br#"{"name": "n"} x"#,
            br#"{"name": "n", "name": "m"}"#,
            br#"{"name": "bad \q escape"}"#,
            "{\"name\": \"a\nraw line feed\"}".as_bytes(),
        ];
        for body in bodies {
            let as_text = from_body::<Probe<'_>>(body).map(|p| format!("{p:?}"));
            let as_bytes = serde_json::from_slice::<Probe<'_>>(body).map(|p| format!("{p:?}"));
            match (as_text, as_bytes) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{}: {a:?} against {b:?}", String::from_utf8_lossy(body)),
            }
        }
        let p: Probe<'_> = from_body(bodies[0]).unwrap();
        assert!(matches!(p.required_name.0, Cow::Owned(_)));
        assert_eq!(&*p.required_name, "n\u{e9}");
        assert_eq!(p.message_id.as_deref(), Some("caf\u{e9} \u{e9}"));
        let plain: Probe<'_> = from_body(bodies[1]).unwrap();
        assert!(matches!(plain.required_name.0, Cow::Borrowed("caf\u{e9}")));
        let bad = from_body::<Probe<'_>>(bodies[2]).unwrap_err();
        assert!(bad.to_string().contains("column"), "{bad}");
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let p: Probe<'_> =
            serde_json::from_str(r#"{"name": "plain", "messageId": "esc\"aped"}"#).unwrap();
        assert!(matches!(p.required_name.0, Cow::Borrowed("plain")));
        assert!(matches!(p.message_id.map(|t| t.0), Some(Cow::Owned(s)) if s == "esc\"aped"));
    }

    #[test]
    fn lenient_booleans() {
        let b = |s: &str| serde_json::from_str::<LenientBool>(s).unwrap().0;
        assert_eq!(b("false"), Some(false));
        assert_eq!(b(r#"" FALSE ""#), Some(false));
        assert_eq!(b(r#""yes""#), None);
        assert_eq!(b("null"), None);
        assert!(serde_json::from_str::<LenientBool>("1").is_err());
    }
}
