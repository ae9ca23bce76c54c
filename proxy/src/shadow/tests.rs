//! Diff engine tests: examples for each rule, and properties.

use std::io::Write;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn ex(status: u16, body: Value) -> Exchange {
    Exchange {
        status,
        headers: vec![("content-type".into(), "application/json; charset=utf-8".into())],
        body: body.to_string().into_bytes(),
    }
}

fn pat(s: &str) -> PathPattern {
    PathPattern::parse(s).unwrap()
}

fn ats(d: &[Difference]) -> Vec<String> {
    d.iter().map(|d| d.at.clone()).collect()
}

#[test]
fn json_is_compared_structurally_with_field_paths() {
    let a = ex(
        200,
        json!({ "messages": [{ "id": 1, "text": "hi", "createdAt": "2026-01-01T00:00:00Z" }, { "id": 2, "text": "yo" }], "total": 2 }),
    );
    let b = ex(
        200,
        json!({ "total": 2.0, "messages": [{ "id": 1, "text": "hi", "createdAt": "2026-01-01T00:00:01Z" }, { "id": 2, "text": "yo", "extra": true }] }),
    );
    let d = compare(&a, &b, &Rules::default());
    assert_eq!(ats(&d), vec!["$.messages[0].createdAt", "$.messages[1].extra"]);
    assert_eq!(d[0].place, Place::Field { path: "$.messages[*].createdAt".into() });
    assert!(matches!(d[1].kind, DiffKind::Extra { .. }));
}

#[test]
fn status_headers_and_bodies() {
    let mut a = ex(200, json!({ "ok": true }));
    let mut b = ex(201, json!({ "ok": true }));
    a.headers.push(("date".into(), "Mon".into()));
    b.headers.push(("date".into(), "Tue".into()));
    a.headers.push(("set-cookie".into(), "sid=abc; Path=/; HttpOnly; Max-Age=100".into()));
    b.headers.push(("set-cookie".into(), "sid=xyz; HttpOnly; path=/; Max-Age=99".into()));
    b.headers[0].1 = "Application/JSON;charset=UTF-8".into();
    // Date differs (ignored), content-type differs only in case/spacing, cookie values differ: only status counts.
    assert_eq!(ats(&compare(&a, &b, &Rules::default())), vec!["status"]);

    b.headers.push(("location".into(), "/elsewhere".into()));
    b.headers.retain(|(k, _)| k != "set-cookie");
    let d = compare(&a, &b, &Rules::default());
    assert_eq!(ats(&d), vec!["status", "header:location", "header:set-cookie"]);
    assert!(matches!(d[2].kind, DiffKind::Missing { .. }));

    let text = |s: &str| Exchange { status: 200, headers: vec![("content-type".into(), "text/plain".into())], body: s.as_bytes().to_vec() };
    assert!(compare(&text("a\r\nb  \n"), &text("a\nb"), &Rules::default()).is_empty());
    assert_eq!(ats(&compare(&text("a"), &text("b"), &Rules::default())), vec!["body"]);
}

#[test]
fn gzip_and_brotli_are_decoded_first() {
    let plain = ex(200, json!({ "a": 1 }));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain.body).unwrap();
    let mut gzipped = plain.clone();
    gzipped.body = gz.finish().unwrap();
    gzipped.headers.push(("content-encoding".into(), "gzip".into()));
    let mut br = Vec::new();
    brotli::CompressorWriter::new(&mut br, 4096, 5, 22).write_all(&plain.body).unwrap();
    let mut brotlied = plain.clone();
    brotlied.body = br;
    brotlied.headers.push(("content-encoding".into(), "br".into()));
    assert!(compare(&plain, &gzipped, &Rules::default()).is_empty());
    assert!(compare(&gzipped, &brotlied, &Rules::default()).is_empty());
}

#[test]
fn rules_ignore_type_only_and_sort() {
    let a = ex(
        200,
        json!({ "accessToken": "a.b.c", "user": { "id": "u1", "createdAt": "2026-01-01T00:00:00Z" }, "tags": ["x", "y"], "members": [{ "id": 2 }, { "id": 1 }] }),
    );
    let b = ex(
        200,
        json!({ "accessToken": "d.e.f", "user": { "id": "u1", "createdAt": "yesterday" }, "tags": ["y", "x"], "members": [{ "id": 1 }, { "id": 2 }] }),
    );
    assert_eq!(
        ats(&compare(&a, &b, &Rules::default())),
        vec!["$.accessToken", "$.members[0].id", "$.members[1].id", "$.tags[0]", "$.tags[1]", "$.user.createdAt"]
    );
    let rules = Rules {
        ignore: vec![pat("$..accessToken")],
        types: vec![(pat("$.user.createdAt"), ValueType::Rfc3339)],
        sort: vec![(pat("$.tags"), SortBy::Value), (pat("$.members"), SortBy::Field("id".into()))],
        headers: vec![],
    };
    let d = compare(&a, &b, &rules);
    assert_eq!(ats(&d), vec!["$.user.createdAt"]);
    assert!(matches!(d[0].kind, DiffKind::WrongType { expected: ValueType::Rfc3339, .. }));
    let fixed = ex(
        200,
        json!({ "accessToken": "z", "user": { "id": "u1", "createdAt": "2026-11-24T10:00:00.5+03:00" }, "tags": ["y", "x"], "members": [{ "id": 1 }, { "id": 2 }] }),
    );
    assert!(compare(&a, &fixed, &rules).is_empty());
}

#[test]
fn timestamps_and_uuids() {
    for ok in ["2026-11-24T23:59:59Z", "2026-11-24T23:59:59.123456+03:00", "2026-02-28t00:00:00z"] {
        assert!(diff::is_rfc3339(ok), "{ok}");
    }
    for bad in [
        "2026-11-24",
        "2026-13-01T00:00:00Z",
        "2026-11-24T24:00:00Z",
        "2026-11-24T23:59:59",
        "2026-11-24T23:59:59.Z",
        "x026-11-24T23:59:59Z",
    ] {
        assert!(!diff::is_rfc3339(bad), "{bad}");
    }
    assert!(diff::is_uuid("5f1c2a9e-8d4b-4e1a-9c3f-2b7d6e8a1f00"));
    assert!(!diff::is_uuid("5f1c2a9e8d4b4e1a9c3f2b7d6e8a1f00"));
}

#[test]
fn noise_is_learned_from_two_monolith_answers() {
    let l1 = ex(200, json!({ "items": [{ "id": 1, "at": "t1" }, { "id": 2, "at": "t1" }], "requestId": "r1" }));
    let l2 = ex(200, json!({ "items": [{ "id": 1, "at": "t2" }, { "id": 2, "at": "t2" }], "requestId": "r2" }));
    let candidate = ex(200, json!({ "items": [{ "id": 1, "at": "t3" }, { "id": 3, "at": "t3" }], "requestId": "r3" }));
    let mut model = NoiseModel::default();
    let learned = model.learn("GET /items", &l1, &l2, &Rules::default());
    assert_eq!(learned, vec!["$.items[*].at", "$.requestId"]);
    let (regressions, noise) = model.split("GET /items", compare(&l1, &candidate, &Rules::default()));
    assert_eq!(ats(&regressions), vec!["$.items[1].id"]);
    assert_eq!(noise.len(), 3);
    // Another endpoint learned nothing.
    assert_eq!(model.split("GET /other", compare(&l1, &candidate, &Rules::default())).0.len(), 4);
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        "[a-c]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-d]", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_pattern() -> impl Strategy<Value = PathPattern> {
    prop::collection::vec(
        prop_oneof![
            Just(".a".to_string()),
            Just(".b".to_string()),
            Just("[0]".to_string()),
            Just("[*]".to_string()),
            Just(".*".to_string()),
            Just("..c".to_string())
        ],
        0..3,
    )
    .prop_map(|segs| PathPattern::parse(&format!("${}", segs.concat())).unwrap())
}

proptest! {
    #[test]
    fn an_answer_equals_itself(v in arb_json(), status in 100u16..600) {
        prop_assert!(compare(&ex(status, v.clone()), &ex(status, v), &Rules::default()).is_empty());
    }

    /// An ignore rule removes exactly the differences at or below the paths it names.
    #[test]
    fn ignore_rules_remove_only_what_they_name(a in arb_json(), b in arb_json(), p in arb_pattern()) {
        let all = compare(&ex(200, a.clone()), &ex(200, b.clone()), &Rules::default());
        let rules = Rules { ignore: vec![p.clone()], ..Rules::default() };
        let kept = compare(&ex(200, a), &ex(200, b), &rules);
        let expected: Vec<String> = all.iter().filter(|d| {
            let path = parse_concrete(&d.at);
            !p.covers(&path.0)
        }).map(|d| d.at.clone()).collect();
        prop_assert_eq!(ats(&kept), expected);
    }

    /// Swapping sides swaps missing and extra, and finds the same places.
    #[test]
    fn comparison_is_symmetric_in_places(a in arb_json(), b in arb_json()) {
        let ab = compare(&ex(200, a.clone()), &ex(200, b.clone()), &Rules::default());
        let ba = compare(&ex(200, b), &ex(200, a), &Rules::default());
        prop_assert_eq!(ats(&ab), ats(&ba));
    }

    /// Sorting makes order irrelevant.
    #[test]
    fn sorted_arrays_ignore_order(items in prop::collection::vec(arb_json(), 0..6), seed in any::<u64>()) {
        let mut shuffled = items.clone();
        let n = shuffled.len();
        if n > 1 { for i in 0..n { shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % n); } }
        let rules = Rules { sort: vec![(pat("$.list"), SortBy::Value)], ..Rules::default() };
        let diffs = compare(&ex(200, json!({ "list": items })), &ex(200, json!({ "list": shuffled })), &rules);
        prop_assert!(diffs.is_empty(), "{:?}", diffs);
    }

    /// Noise learned from an answer and itself is empty. After learning from two monolith
    /// answers (a, b), a candidate's difference is silenced exactly when its place differed
    /// between a and b: noise never hides a difference at a place the monolith keeps stable,
    /// and never leaves one at a place it does not.
    #[test]
    fn noise_silences_exactly_the_places_the_monolith_varies(a in arb_json(), b in arb_json(), c in arb_json()) {
        let mut model = NoiseModel::default();
        prop_assert!(model.learn("E", &ex(200, a.clone()), &ex(200, a.clone()), &Rules::default()).is_empty());
        model.learn("E", &ex(200, a.clone()), &ex(200, b.clone()), &Rules::default());
        let varying: std::collections::BTreeSet<String> =
            compare(&ex(200, a.clone()), &ex(200, b), &Rules::default()).iter().map(|d| d.place.key()).collect();
        let (reg, noise) = model.split("E", compare(&ex(200, a), &ex(200, c), &Rules::default()));
        for d in &noise {
            prop_assert!(varying.contains(&d.place.key()), "silenced a stable place: {:?}", d);
        }
        for d in &reg {
            prop_assert!(!varying.contains(&d.place.key()), "kept a difference at a varying place: {:?}", d);
        }
        // and another endpoint learned nothing
        let (reg_other, noise_other) = model.split("F", reg.iter().chain(&noise).cloned().collect());
        prop_assert!(noise_other.is_empty());
        prop_assert_eq!(reg_other.len(), reg.len() + noise.len());
    }
}

/// Parses a concrete `$.a[0]["k"]` path back (test helper).
fn parse_concrete(s: &str) -> FieldPath {
    let mut out = FieldPath::root();
    let b: Vec<char> = s.chars().collect();
    let mut i = 1;
    while i < b.len() {
        if b[i] == '.' {
            let start = i + 1;
            i = start;
            while i < b.len() && b[i] != '.' && b[i] != '[' {
                i += 1;
            }
            out = out.key(&b[start..i].iter().collect::<String>());
        } else {
            let close = b[i..].iter().position(|c| *c == ']').unwrap() + i;
            let inner: String = b[i + 1..close].iter().collect();
            out = match inner.parse::<usize>() {
                Ok(n) => out.index(n),
                Err(_) => out.key(inner.trim_matches('"')),
            };
            i = close + 1;
        }
    }
    out
}

#[test]
fn reports_in_three_formats() {
    use super::record::{Outcome, Record, Summary};
    let mut summary = Summary::default();
    let base = Record::sample("auth", "POST", "/auth/login");
    let legacy = ex(200, json!({ "user": { "displayName": "Ann" }, "accessToken": "x" }));
    let candidate = ex(200, json!({ "user": { "displayName": "ann" }, "accessToken": "y" }));
    let diffs = compare(&legacy, &candidate, &Rules::default());
    let (reg, noise): (Vec<_>, Vec<_>) = diffs.into_iter().partition(|d| d.at != "$.accessToken");
    summary.add(&base);
    summary.add(&Record {
        request_id: "req-2".into(),
        outcome: Outcome::Mismatch,
        differences: Record::differences(&reg),
        noise: Record::differences(&noise),
        ..base.clone()
    });
    summary.add(&Record { route: "chat".into(), endpoint: "POST /graphql".into(), outcome: Outcome::Timeout, ..base.clone() });
    summary.dropped("chat", "saturated");
    insta::assert_snapshot!("report_markdown", super::report::markdown(&summary, 99.0));
    insta::assert_snapshot!("report_junit", super::report::junit(&summary, 99.0));
    insta::assert_snapshot!("report_json", super::report::json(&summary, 99.0));
}
