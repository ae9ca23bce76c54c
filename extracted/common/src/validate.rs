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
    /// `@IsIn([...])`
    IsIn(&'static [&'static str]),
    /// `@IsInt()` (a JavaScript number with no fraction; NaN and ±Infinity are not)
    IsInt,
    /// `@Min(n)`
    Min(i64),
    /// `@Max(n)`
    Max(i64),
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
    /// `@Type(() => Number)`: JavaScript's `Number(value)` on a string (query parameters); NaN is
    /// kept as `null`, ±Infinity as the strings `"Infinity"`/`"-Infinity"`
    ToNumber,
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
    /// A string field (`""` when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).and_then(Value::as_str).unwrap_or_default()
    }
    /// An integer field (validated with [`Rule::IsInt`]), `None` when absent.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(Value::as_f64).map(|f| f as i64)
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
        let raw = obj.get(field.name);
        // (before the transform: no transform turns a value into null or undefined)
        if field.rules.contains(&Optional) && matches!(raw, None | Some(Value::Null)) {
            continue;
        }
        let value = raw.map(|v| transform(v, field.transform));
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
        (Value::String(s), Transform::ToNumber) => match js_number(s) {
            n if n.is_nan() => Value::Null,
            n if n.is_infinite() => Value::String(if n > 0.0 { "Infinity" } else { "-Infinity" }.into()),
            n => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        },
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

/// JavaScript's `Number(string)`: blanks around are ignored, an empty string is 0, `0x`/`0o`/`0b`
/// integers, `Infinity` with a sign, decimal literals with an exponent; NaN for anything else.
pub fn js_number(s: &str) -> f64 {
    let t = js_trim(s);
    if t.is_empty() {
        return 0.0;
    }
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if t.len() > 2 && t[..2].eq_ignore_ascii_case(prefix) {
            let digits = &t[2..];
            if !digits.chars().all(|c| c.is_digit(radix)) {
                return f64::NAN;
            }
            return digits.chars().fold(0.0, |n, c| n * radix as f64 + c.to_digit(radix).unwrap_or(0) as f64);
        }
    }
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let negative = t.starts_with('-');
    if unsigned == "Infinity" {
        return if negative { f64::NEG_INFINITY } else { f64::INFINITY };
    }
    // a decimal literal: digits with at most one point (and at least one digit), then an exponent
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = mantissa.chars().filter(|c| *c == '.').count() <= 1
        && mantissa.chars().any(|c| c.is_ascii_digit())
        && mantissa.chars().all(|c| c.is_ascii_digit() || c == '.');
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    });
    if !mantissa_ok || !exponent_ok {
        return f64::NAN;
    }
    t.parse().unwrap_or(f64::NAN)
}

/// A value as a JavaScript number after [`Transform::ToNumber`] (`None`: not a number, or NaN).
fn js_num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == "Infinity" => Some(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
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
        IsIn(allowed) => s.is_some_and(|s| allowed.contains(&s)),
        IsInt => js_num(v).is_some_and(|n| n.is_finite() && n.fract() == 0.0),
        Min(min) => js_num(v).is_some_and(|n| n >= min as f64),
        Max(max) => js_num(v).is_some_and(|n| n <= max as f64),
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
        IsIn(allowed) => format!("{p} must be one of the following values: {}", allowed.join(", ")),
        IsInt => format!("{p} must be an integer number"),
        Min(min) => format!("{p} must not be less than {min}"),
        Max(max) => format!("{p} must not be greater than {max}"),
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
    fn numbers_follow_javascript() {
        for (s, n) in [("5", 5.0), (" 5\n", 5.0), ("", 0.0), ("  ", 0.0), ("0x10", 16.0), ("0B11", 3.0), ("0o7", 7.0), ("1e2", 100.0)]
            .into_iter()
            .chain([("+5", 5.0), ("-5", -5.0), (".5", 0.5), ("5.", 5.0), ("1.5E-1", 0.15)])
        {
            assert_eq!(js_number(s), n, "{s:?}");
        }
        assert_eq!(js_number("-Infinity"), f64::NEG_INFINITY);
        for s in ["abc", "5px", "0x", "-0x10", "1_000", "inf", "nan", "infinity", ".", "1e", "e5", "- 5", "1.2.3", "0xg"] {
            assert!(js_number(s).is_nan(), "{s:?}");
        }
    }

    #[test]
    fn query_numbers_get_class_validators_messages() {
        const LIMIT: &[Field] = &[f("limit", Transform::ToNumber, &[Optional, Max(100), Min(1), IsInt])];
        let body = |v: Value| JsonBody { keys: v.as_object().unwrap().keys().cloned().collect(), value: v };
        let ok = validate(&body(json!({ "limit": "0x10" })), LIMIT).unwrap();
        assert_eq!(ok.int("limit"), Some(16));
        assert_eq!(validate(&body(json!({})), LIMIT).unwrap().int("limit"), None);
        let msgs = |v: Value| validate(&body(v), LIMIT).unwrap_err().message;
        let all = json!(["limit must not be greater than 100", "limit must not be less than 1", "limit must be an integer number"]);
        assert_eq!(msgs(json!({ "limit": "x" })), all);
        assert_eq!(msgs(json!({ "limit": ["1", "2"] })), all);
        assert_eq!(msgs(json!({ "limit": "" })), json!(["limit must not be less than 1"]));
        assert_eq!(msgs(json!({ "limit": "1.5" })), json!(["limit must be an integer number"]));
        assert_eq!(msgs(json!({ "limit": "Infinity" })), json!(["limit must not be greater than 100", "limit must be an integer number"]));
        assert_eq!(msgs(json!({ "limit": "5", "x": "1" })), json!(["property x should not exist"]));
    }

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
