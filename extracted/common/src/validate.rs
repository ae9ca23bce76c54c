//! The monolith's request validation (class-validator behind Nest's `ValidationPipe` with
//! `whitelist`, `forbidNonWhitelisted` and `transform`), rule for rule and message for message:
//! unknown properties first (in the order sent), then each DTO property in declaration order with
//! its failed constraints in class-validator's order (the decorator closest to the property
//! first). Values are never coerced: `5` is not a string.

use serde_json::{Map, Value};

use crate::nest::{JsonBody, NestError};
use Rule::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `@MaxLength(n)`
    MaxLength(usize),
    /// `@Length(min, max)`
    Length(usize, usize),
    /// `@IsString()`
    IsString,
    /// `@IsEmail()`
    IsEmail,
    /// `@IsNotEmpty()`
    NotEmpty,
    /// `@Matches(/^\d{6}$/, { message: 'code must be 6 digits' })`
    SixDigits,
    /// `@Matches(/\S/, { message: '<p> must not be blank' })`
    NotBlank,
    /// `@IsUUID()` (validator.js `all`: any version)
    IsUuid,
    /// `@IsUUID('all', { each: true })`: every element of an array
    EachIsUuid,
    /// `@ArrayMinSize(n)`
    ArrayMinSize(usize),
    /// `@ArrayMaxSize(n)`
    ArrayMaxSize(usize),
    /// `@IsArray()`
    IsArray,
    /// `@IsOptional()`: a null or missing value skips every rule of the field (put it first)
    Optional,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    None,
    /// `@Transform(trim)` on strings
    Trim,
    /// `@Transform(trimLower)` on strings
    TrimLower,
}

pub struct Field {
    pub name: &'static str,
    pub transform: Transform,
    /// in message order
    pub rules: &'static [Rule],
}

/// A field of a DTO: its name, its transform and its rules, in class-validator's message order.
pub const fn f(name: &'static str, transform: Transform, rules: &'static [Rule]) -> Field {
    Field { name, transform, rules }
}

/// A validated DTO: every declared field is a string.
#[derive(Debug)]
pub struct Dto(Map<String, Value>);

impl Dto {
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).and_then(Value::as_str).unwrap_or_default()
    }
}

/// Validates a body against a DTO; the error carries every message, as the monolith's does.
pub fn validate(body: &JsonBody, fields: &[Field]) -> Result<Dto, NestError> {
    let empty = Map::new();
    let obj = body.value.as_object().unwrap_or(&empty);
    // JavaScript objects list integer-like keys first, in numeric order, then the rest as sent
    let index = |k: &str| k.parse::<u32>().ok().filter(|n| *n < u32::MAX && n.to_string() == k);
    let mut keys: Vec<&String> = body.keys.iter().collect();
    keys.sort_by_key(|k| index(k).map_or((1, 0), |n| (0, n)));
    let mut messages: Vec<String> = keys
        .into_iter()
        .filter(|k| obj.contains_key(*k) && !fields.iter().any(|f| f.name == k.as_str()))
        .map(|k| format!("property {k} should not exist"))
        .collect();
    let mut out = Map::new();
    for field in fields {
        let value = obj.get(field.name).map(|v| transform(v, field.transform));
        if field.rules.contains(&Optional) && matches!(value, None | Some(Value::Null)) {
            continue;
        }
        for rule in field.rules {
            if !passes(*rule, value.as_ref()) {
                messages.push(message(*rule, field.name, value.as_ref()));
            }
        }
        if let Some(v) = value {
            out.insert(field.name.to_string(), v);
        }
    }
    if messages.is_empty() {
        Ok(Dto(out))
    } else {
        Err(NestError::validation(messages))
    }
}

fn transform(v: &Value, t: Transform) -> Value {
    match (v, t) {
        (Value::String(s), Transform::Trim) => Value::String(js_trim(s).to_string()),
        (Value::String(s), Transform::TrimLower) => Value::String(js_trim(s).to_lowercase()),
        _ => v.clone(),
    }
}

/// `String.prototype.trim`: ECMAScript's WhiteSpace and LineTerminator (not U+0085, which Rust's
/// `char::is_whitespace` includes).
pub fn js_trim(s: &str) -> &str {
    s.trim_matches(|c: char| {
        matches!(c, '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}')
    })
}

/// validator.js `isLength`: code points, not counting variation selectors.
fn validator_len(s: &str) -> usize {
    s.chars().filter(|c| !matches!(c, '\u{fe0e}' | '\u{fe0f}')).count()
}

/// JavaScript's `.length` of a value (UTF-16 units, array length), if it has one.
fn js_length(v: Option<&Value>) -> Option<usize> {
    match v? {
        Value::String(s) => Some(s.encode_utf16().count()),
        Value::Array(a) => Some(a.len()),
        _ => None,
    }
}

fn js_falsy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => !b,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn passes(rule: Rule, v: Option<&Value>) -> bool {
    let s = v.and_then(Value::as_str);
    match rule {
        MaxLength(max) => s.is_some_and(|s| validator_len(s) <= max),
        Length(min, max) => s.is_some_and(|s| (min..=max).contains(&validator_len(s))),
        IsString => s.is_some(),
        IsEmail => s.is_some_and(is_email),
        NotEmpty => !matches!(v, None | Some(Value::Null)) && s != Some(""),
        SixDigits => s.is_some_and(|s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())),
        NotBlank => s.is_some_and(has_non_space),
        IsUuid => s.is_some_and(is_uuid),
        EachIsUuid => v.and_then(Value::as_array).is_none_or(|a| a.iter().all(|e| e.as_str().is_some_and(is_uuid))),
        ArrayMinSize(n) => v.and_then(Value::as_array).is_some_and(|a| a.len() >= n),
        ArrayMaxSize(n) => v.and_then(Value::as_array).is_some_and(|a| a.len() <= n),
        IsArray => v.is_some_and(Value::is_array),
        Optional => true,
    }
}

fn message(rule: Rule, p: &str, v: Option<&Value>) -> String {
    match rule {
        MaxLength(max) => format!("{p} must be shorter than or equal to {max} characters"),
        Length(min, max) => {
            let len = js_length(v);
            if js_falsy(v) || len.is_some_and(|l| l < min) {
                format!("{p} must be longer than or equal to {min} characters")
            } else if len.is_some_and(|l| l > max) {
                format!("{p} must be shorter than or equal to {max} characters")
            } else {
                format!("{p} must be longer than or equal to {min} and shorter than or equal to {max} characters")
            }
        }
        IsString => format!("{p} must be a string"),
        IsEmail => format!("{p} must be an email"),
        NotEmpty => format!("{p} should not be empty"),
        SixDigits => "code must be 6 digits".to_string(),
        NotBlank => format!("{p} must not be blank"),
        IsUuid => format!("{p} must be a UUID"),
        EachIsUuid => format!("each value in {p} must be a UUID"),
        ArrayMinSize(n) => format!("{p} must contain at least {n} elements"),
        ArrayMaxSize(n) => format!("{p} must contain no more than {n} elements"),
        IsArray => format!("{p} must be an array"),
        Optional => String::new(),
    }
}

/// JavaScript's `/\S/`: a character that is not ECMAScript white space or a line terminator.
pub fn has_non_space(s: &str) -> bool {
    s.chars().any(|c| js_trim(c.encode_utf8(&mut [0; 4])).len() == c.len_utf8())
}

/// validator.js `isUUID(s, 'all')`: 8-4-4-4-12 hex digits, any case.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// validator.js `isEmail` with its defaults (no display names, a TLD required, UTF-8 local parts
/// allowed, no IP literals, local part ≤ 64 and domain ≤ 254 bytes).
pub fn is_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some(at) = s.rfind('@') else { return false };
    let (user, domain) = (&s[..at], &s[at + 1..]);
    if user.is_empty() || user.len() > 64 || domain.is_empty() || domain.len() > 254 {
        return false;
    }
    if !is_fqdn(domain) {
        return false;
    }
    if user.starts_with('"') && user.ends_with('"') && user.len() >= 2 {
        let inner = &user[1..user.len() - 1];
        return inner.chars().all(|c| c != '"' && c != '\\' && (c == ' ' || c == '\t' || !c.is_control()));
    }
    user.split('.').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || "!#$%&'*+-/=?^_`{|}~".contains(c)
                    || ('\u{a1}'..='\u{d7ff}').contains(&c)
                    || ('\u{f900}'..='\u{fdcf}').contains(&c)
                    || ('\u{fdf0}'..='\u{ffef}').contains(&c)
            })
    })
}

/// validator.js `isFQDN` with `require_tld`, no trailing dot, no underscores.
fn is_fqdn(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let tld = labels[labels.len() - 1];
    let tld_char = |c: char| c.is_ascii_alphabetic() || matches!(c as u32, 0xa1..=0xa8 | 0xaa..=0xd7ff | 0xf900..=0xfdcf | 0xfdf0..=0xffef);
    let tld_ok = (tld.chars().count() >= 2 && tld.chars().all(tld_char))
        || (tld.len() >= 4
            && tld.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("xn"))
            && tld[2..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !tld_ok || tld.chars().any(char::is_whitespace) {
        return false;
    }
    labels.iter().all(|l| {
        !l.is_empty()
            && l.encode_utf16().count() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || ((c as u32) >= 0xa1 && !('\u{ff01}'..='\u{ff5e}').contains(&c)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trim_is_javascript_s() {
        assert_eq!(js_trim("\u{85}x\u{a0} "), "\u{85}x");
    }

    #[test]
    fn lengths_count_code_points_but_messages_use_utf16() {
        // 8 emoji are 8 code points (valid) and 16 UTF-16 units
        assert!(passes(Length(8, 72), Some(&json!("😀".repeat(8)))));
        assert!(!passes(Length(8, 72), Some(&json!("😀".repeat(7)))));
        // 40 emoji: 40 code points is fine for 1..64 but too long for 1..30; JS .length says 80
        assert_eq!(message(Length(1, 30), "p", Some(&json!("😀".repeat(40)))), "p must be shorter than or equal to 30 characters");
    }
}
