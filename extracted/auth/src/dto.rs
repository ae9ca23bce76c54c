//! The auth endpoints' request bodies as the monolith's DTOs declare them (validated by
//! `bm_common::validate`, class-validator's rules and messages).

use bm_common::validate::{f, Field, Rule::*, Transform as T};

pub const REGISTER: &[Field] = &[
    f("email", T::TrimLower, &[MaxLength(254), IsEmail]),
    f("password", T::None, &[Length(8, 72), IsString]),
    f("displayName", T::Trim, &[Length(1, 64), IsString]),
];
pub const LOGIN: &[Field] = &[f("email", T::TrimLower, &[IsEmail]), f("password", T::None, &[MaxLength(72), NotEmpty, IsString])];
pub const REFRESH: &[Field] = &[f("refreshToken", T::None, &[MaxLength(512), NotEmpty, IsString])];
pub const TOTP_CODE: &[Field] = &[f("code", T::None, &[SixDigits, IsString])];
pub const TWO_FACTOR_VERIFY: &[Field] =
    &[f("challengeToken", T::None, &[MaxLength(512), NotEmpty, IsString]), f("code", T::None, &[SixDigits, IsString])];
pub const FORGOT: &[Field] = &[f("email", T::TrimLower, &[IsEmail])];
pub const RESET: &[Field] =
    &[f("token", T::None, &[MaxLength(512), NotEmpty, IsString]), f("password", T::None, &[Length(8, 72), IsString])];

#[cfg(test)]
mod tests {
    use super::*;
    use bm_common::nest::JsonBody;
    use bm_common::validate::{is_email, validate};
    use serde_json::json;
    use serde_json::Value;

    fn body(v: Value) -> JsonBody {
        let keys = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        JsonBody { value: v, keys }
    }

    fn messages(v: Value, fields: &[Field]) -> Vec<String> {
        match validate(&body(v), fields) {
            Ok(_) => vec![],
            Err(e) => e.message.as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect(),
        }
    }

    // Every expectation below was read from the running monolith (curl, 2026-12-01).
    #[test]
    fn register_messages_match_the_monolith() {
        assert_eq!(
            messages(json!({}), REGISTER),
            [
                "email must be shorter than or equal to 254 characters",
                "email must be an email",
                "password must be longer than or equal to 8 characters",
                "password must be a string",
                "displayName must be longer than or equal to 1 characters",
                "displayName must be a string"
            ]
        );
        assert_eq!(
            messages(json!({"email": 5, "password": 5, "displayName": 5}), REGISTER),
            [
                "email must be shorter than or equal to 254 characters",
                "email must be an email",
                "password must be longer than or equal to 8 and shorter than or equal to 72 characters",
                "password must be a string",
                "displayName must be longer than or equal to 1 and shorter than or equal to 64 characters",
                "displayName must be a string"
            ]
        );
        assert_eq!(
            messages(json!({"email": "b@x.io", "password": "short", "displayName": ""}), REGISTER),
            ["password must be longer than or equal to 8 characters", "displayName must be longer than or equal to 1 characters"]
        );
        assert_eq!(messages(json!({"email": "A@x.io ", "password": "password1", "displayName": " Ann "}), REGISTER), Vec::<String>::new());
        let b =
            JsonBody { value: json!({"zeta": 1, "email": "bad", "alpha": 2}), keys: vec!["zeta".into(), "email".into(), "alpha".into()] };
        let e = validate(&b, REGISTER).unwrap_err();
        assert_eq!(
            e.message,
            json!([
                "property zeta should not exist",
                "property alpha should not exist",
                "email must be an email",
                "password must be longer than or equal to 8 characters",
                "password must be a string",
                "displayName must be longer than or equal to 1 characters",
                "displayName must be a string"
            ])
        );
    }

    #[test]
    fn other_dtos_match_the_monolith() {
        assert_eq!(
            messages(json!({}), LOGIN),
            [
                "email must be an email",
                "password must be shorter than or equal to 72 characters",
                "password should not be empty",
                "password must be a string"
            ]
        );
        assert_eq!(messages(json!({"email": ["a@x.io"], "password": "password1"}), LOGIN), ["email must be an email"]);
        assert_eq!(
            messages(json!({}), TWO_FACTOR_VERIFY),
            [
                "challengeToken must be shorter than or equal to 512 characters",
                "challengeToken should not be empty",
                "challengeToken must be a string",
                "code must be 6 digits",
                "code must be a string"
            ]
        );
        assert_eq!(
            messages(json!({"code": "12345a", "challengeToken": ""}), TWO_FACTOR_VERIFY),
            ["challengeToken should not be empty", "code must be 6 digits"]
        );
        assert_eq!(
            messages(json!({}), RESET),
            [
                "token must be shorter than or equal to 512 characters",
                "token should not be empty",
                "token must be a string",
                "password must be longer than or equal to 8 characters",
                "password must be a string"
            ]
        );
        assert_eq!(messages(json!({"email": "nobody@x.io"}), FORGOT), Vec::<String>::new());
    }

    #[test]
    fn unknown_properties_in_javascript_key_order() {
        let b = JsonBody {
            value: json!({"zeta": 1, "5": 2, "10": 3, "email": "a@x.io", "password": "p"}),
            keys: vec!["zeta".into(), "10".into(), "5".into(), "email".into(), "password".into()],
        };
        let e = validate(&b, LOGIN).unwrap_err();
        assert_eq!(e.message, json!(["property 5 should not exist", "property 10 should not exist", "property zeta should not exist"]));
    }

    #[test]
    fn transforms_apply_before_validation() {
        let dto = validate(&body(json!({"email": "  A@X.IO ", "password": "p"})), LOGIN).unwrap();
        assert_eq!(dto.get("email"), "a@x.io");
        let dto = validate(&body(json!({"email": "a@x.io", "password": "password1", "displayName": "  Ann "})), REGISTER).unwrap();
        assert_eq!(dto.get("displayName"), "Ann");
    }

    #[test]
    fn emails() {
        for ok in [
            "a@x.io",
            "a@123.example.com",
            "first.last+tag@sub.example.com",
            "user1@seed.brainmessenger.test",
            "ü@exämple.de",
            "\"a b\"@x.io",
        ] {
            assert!(is_email(ok), "{ok}");
        }
        assert!(is_email(&format!("a@{}.de", "ä".repeat(40))), "labels count UTF-16 units, not bytes");
        for bad in [
            "",
            "a",
            "a@",
            "@x.io",
            "a@x",
            "a@x.i",
            "a@-x.io",
            "a..b@x.io",
            "a b@x.io",
            "a@x.123",
            "a@[127.0.0.1]",
            "a@x_y.io",
            "a\u{a0}b@x.io",
            "a@x.d\u{3000}e",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    proptest::proptest! {
        // Never panics, and a value that passes is exactly what was sent (after the transform).
        #[test]
        fn validation_is_total(email in ".{0,80}", password in ".{0,100}", extra in proptest::option::of("[a-z]{1,8}")) {
            let mut v = json!({"email": email, "password": password});
            if let Some(k) = &extra { v[k.as_str()] = json!(1); }
            if let Ok(dto) = validate(&body(v), LOGIN) {
                proptest::prop_assert_eq!(dto.get("password"), password.as_str());
                proptest::prop_assert!(is_email(dto.get("email")));
            }
        }
    }
}
