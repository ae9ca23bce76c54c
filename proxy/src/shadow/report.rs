//! Parity reports from a [`Summary`]: Markdown for a pull-request comment, JUnit XML for CI
//! (one test case per route, failing below the parity threshold), JSON for tools.

use std::fmt::Write;

use super::record::Summary;

fn example_text(v: &serde_json::Value) -> String {
    let mut e = v.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("place");
    }
    let s = e.to_string();
    if s.len() > 300 {
        format!("{}…", &s[..s.char_indices().take_while(|(i, _)| *i < 300).last().map_or(0, |(i, c)| i + c.len_utf8())])
    } else {
        s
    }
}

pub fn markdown(summary: &Summary, min_parity: f64) -> String {
    let mut s = String::from("## Shadow parity\n\n");
    if summary.routes.is_empty() {
        s.push_str("No comparisons recorded.\n");
        return s;
    }
    s.push_str("| route | compared | parity | matches | noise only | mismatches | errors | timeouts | dropped | |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (route, r) in &summary.routes {
        let dropped: u64 = r.dropped.values().sum();
        let ok = if r.parity() >= min_parity { "✅" } else { "❌" };
        let _ = writeln!(
            s,
            "| `{route}` | {} | {:.2}% | {} | {} | {} | {} | {} | {dropped} | {ok} |",
            r.compared,
            r.parity(),
            r.matches,
            r.noise_only,
            r.mismatches,
            r.errors,
            r.timeouts
        );
    }
    for (route, r) in &summary.routes {
        if r.mismatched_fields.is_empty() && r.noise_fields.is_empty() && r.dropped.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n### `{route}`\n");
        if !r.mismatched_fields.is_empty() {
            s.push_str("| mismatching field | count | example |\n|---|---:|---|\n");
            for (field, f) in &r.mismatched_fields {
                let _ = writeln!(s, "| `{field}` | {} | `{}` |", f.count, example_text(&f.example).replace('|', "\\|"));
            }
        }
        if !r.noise_fields.is_empty() {
            let list: Vec<String> = r.noise_fields.iter().map(|(f, n)| format!("`{f}` ({n})")).collect();
            let _ = writeln!(s, "\nNoise (differs between two monolith answers, not counted): {}", list.join(", "));
        }
        if !r.dropped.is_empty() {
            let list: Vec<String> = r.dropped.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            let _ = writeln!(s, "\nNot shadowed: {}", list.join(", "));
        }
    }
    let _ = write!(s, "\nThreshold: {min_parity}% parity per route.\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn junit(summary: &Summary, min_parity: f64) -> String {
    let failures = summary.routes.values().filter(|r| r.parity() < min_parity).count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(s, "<testsuites name=\"shadow-parity\" tests=\"{}\" failures=\"{failures}\">", summary.routes.len());
    let _ = writeln!(s, "  <testsuite name=\"shadow-parity\" tests=\"{}\" failures=\"{failures}\">", summary.routes.len());
    for (route, r) in &summary.routes {
        let _ = write!(s, "    <testcase classname=\"shadow\" name=\"{}\">", xml(route));
        if r.parity() < min_parity {
            let mut detail = String::new();
            for (field, f) in &r.mismatched_fields {
                let _ = writeln!(detail, "{field}: {} × e.g. {}", f.count, example_text(&f.example));
            }
            let _ = write!(
                s,
                "\n      <failure message=\"parity {:.2}% below {min_parity}% ({} of {} compared mismatched, {} errors, {} timeouts)\">{}</failure>\n    ",
                r.parity(),
                r.mismatches,
                r.compared,
                r.errors,
                r.timeouts,
                xml(&detail)
            );
        }
        s.push_str("</testcase>\n");
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

pub fn json(summary: &Summary, min_parity: f64) -> String {
    let routes: serde_json::Map<String, serde_json::Value> = summary
        .routes
        .iter()
        .map(|(k, r)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["parity"] = serde_json::json!((r.parity() * 100.0).round() / 100.0);
            v["passed"] = serde_json::json!(r.parity() >= min_parity);
            (k.clone(), v)
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "min_parity": min_parity, "routes": routes })).unwrap_or_default() + "\n"
}
