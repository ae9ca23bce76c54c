//! PostgreSQL prints a `jsonb` value with a space after every `:` and `,`; node-postgres parses
//! it and Express prints it back with `JSON.stringify`, compact, keys in the order Postgres
//! printed them. [`compact`] does the same to the text without reordering anything.
//!
//! Exact for what `jsonb` prints: its string escapes are `JSON.stringify`'s (`\"`, `\\`,
//! `\b\f\n\r\t`, `\u00XX` for other control characters, everything else as is). Numbers are
//! kept as Postgres prints them (`1.0` stays `1.0`, where JavaScript would print `1`); the
//! payloads of the v1 kinds hold strings and nulls only.

/// The JSON text without the whitespace between tokens.
pub fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn whitespace_goes_strings_stay() {
        let pg = r#"{"chatId": "c", "preview": "a, b: \"c\" \\", "chatTitle": null, "n": [1, 2.50]}"#;
        assert_eq!(compact(pg), r#"{"chatId":"c","preview":"a, b: \"c\" \\","chatTitle":null,"n":[1,2.50]}"#);
        assert_eq!(compact(r#"{"a": "\\\" , "}"#), r#"{"a":"\\\" , "}"#);
    }

    #[test]
    fn compact_text_is_the_same_json() {
        // every value keeps its meaning: parse both and compare
        for text in [r#"{"a": {"b": [1, {"c": "x y"}]}, "d": "\u00e9 \n"}"#, r#"[ ]"#, r#"{ }"#] {
            let a: serde_json::Value = serde_json::from_str(text).unwrap();
            let b: serde_json::Value = serde_json::from_str(&compact(text)).unwrap();
            assert_eq!(a, b);
        }
    }
}
