//! How an answer is shown to people: a field per line for one object, a
//! table under a header for a list. `--json` bypasses all of it and prints
//! the answer as it came.

use std::io::Write;

use serde_json::Value;

/// How a successful answer is shown without `--json`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shape {
    /// One key page.
    Page,
    /// `{"orgs": [...]}`.
    Orgs,
    /// `{"events": [...]}`.
    Events,
    /// A new token, shown this once.
    Token,
    /// `{"tokens": [...]}`.
    Tokens,
    /// `{"api_users": [...]}`.
    Users,
    /// An org's usage.
    Usage,
    /// `whoami`.
    Whoami,
    /// `{"status": "..."}` (health, readiness): the status alone.
    Status,
    /// Not JSON, or a document for programs: the body as it came.
    Text,
    /// No body worth showing (204, or an answer the sentence says all of):
    /// a sentence saying what was done.
    Done(String),
}

impl Shape {
    /// Whether the table needs the body as JSON.
    pub fn needs_json(&self) -> bool {
        !matches!(self, Shape::Text | Shape::Done(_))
    }
}

/// Writes the answer `v` (or `body`, for [`Shape::Text`]) in `shape`.
pub fn human(shape: &Shape, v: &Value, body: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
    match shape {
        Shape::Page => page(v, out),
        Shape::Orgs => orgs(
            v["orgs"].as_array().map(Vec::as_slice).unwrap_or_default(),
            out,
        ),
        Shape::Events => list(
            v,
            "events",
            &[
                ("AT", "at"),
                ("ACTOR", "actor"),
                ("ACTION", "action"),
                ("DETAIL", "detail"),
            ],
            out,
        ),
        Shape::Token => {
            fields(
                v,
                &[
                    ("name", "name"),
                    ("role", "role"),
                    ("org", "org"),
                    ("token", "token"),
                ],
                // The width the token has always had (`token  ...`), which
                // scripts may read.
                6,
                out,
            )?;
            writeln!(
                out,
                "(the token is shown this once; keygate keeps only its SHA-256)"
            )
        }
        Shape::Tokens => list(
            v,
            "tokens",
            &[
                ("NAME", "name"),
                ("ROLE", "role"),
                ("ORG", "org"),
                ("CREATED AT", "created_at"),
            ],
            out,
        ),
        Shape::Users => list(v, "api_users", &[("USERNAME", "username")], out),
        Shape::Usage => fields(
            v,
            &[
                ("calls in window", "calls_in_window"),
                ("threshold calls", "threshold_calls"),
                ("window started at", "window_started_at"),
                ("window ends at", "window_ends_at"),
                ("last used at", "last_used_at"),
                ("rate limited in window", "rate_limited_in_window"),
            ],
            0,
            out,
        ),
        Shape::Whoami => fields(
            v,
            &[("name", "name"), ("role", "role"), ("org", "org")],
            0,
            out,
        ),
        Shape::Status => writeln!(out, "{}", cell(&v["status"])),
        Shape::Text => raw(body, out),
        Shape::Done(sentence) => writeln!(out, "{sentence}"),
    }
}

/// `body` as it came, ending its line; nothing for an empty body (a 204).
pub fn raw(body: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
    if body.is_empty() {
        return Ok(());
    }
    out.write_all(body)?;
    if body.ends_with(b"\n") {
        Ok(())
    } else {
        writeln!(out)
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One object, a labelled field per line, the values lined up after the
/// longest label (or `min` columns, if wider).
fn fields(
    v: &Value,
    rows: &[(&str, &str)],
    min: usize,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let width = rows
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0)
        .max(min);
    for (label, field) in rows {
        writeln!(out, "{label:<width$} {}", cell(&v[*field]))?;
    }
    Ok(())
}

/// One key page, a field per line, then its limits when the API sent them.
fn page(v: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    // 21 columns: the width the key page has always had, which scripts
    // reading `key show` may rely on.
    let rows = [
        ("org", "org"),
        ("base url", "base_url"),
        ("key", "key"),
        ("status", "status"),
        ("disabled reason", "disabled_reason"),
        ("subscription ends", "subscription_expires_at"),
        ("subscription expired", "subscription_expired"),
        ("last modified by", "last_modified_by"),
        ("last modified on", "last_modified_on"),
    ];
    for (label, field) in rows {
        writeln!(out, "{label:<21} {}", cell(&v[field]))?;
    }
    if let Some(limits) = v["limits"].as_object() {
        let shown: Vec<String> = limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "{:<21} {}", "limits", shown.join(" "))?;
    }
    Ok(())
}

/// Key pages in one table, a row per org (of one page or of several).
pub fn orgs(orgs: &[Value], out: &mut dyn Write) -> std::io::Result<()> {
    let columns = [
        ("ORG", "org"),
        ("STATUS", "status"),
        ("KEY", "key"),
        ("SUBSCRIPTION ENDS", "subscription_expires_at"),
        ("LAST MODIFIED BY", "last_modified_by"),
        ("LAST MODIFIED ON", "last_modified_on"),
    ];
    let rows: Vec<Vec<String>> = orgs
        .iter()
        .map(|o| columns.iter().map(|(_, f)| cell(&o[*f])).collect())
        .collect();
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    table(&header, &rows, out)
}

/// The array `v[key]` as a table, a column per `(header, field)`.
fn list(
    v: &Value,
    key: &str,
    columns: &[(&str, &str)],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = v[key]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| columns.iter().map(|(_, f)| cell(&item[*f])).collect())
        .collect();
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    table(&header, &rows, out)
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>], out: &mut dyn Write) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shown(shape: Shape, v: Value) -> String {
        let mut out = Vec::new();
        human(&shape, &v, b"", &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let mut out = Vec::new();
        table(
            &["A", "B", "C"],
            &[vec!["xyz".into(), "1".into(), "end".into()]],
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A    B  C\nxyz  1  end\n");
    }

    #[test]
    fn the_orgs_make_a_row_each_under_one_header() {
        let pages: Vec<Value> = ["a", "bb", "ccc"]
            .iter()
            .map(|o| json!({ "org": o, "status": "enabled" }))
            .collect();
        let mut out = Vec::new();
        orgs(&pages, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let firsts: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(firsts, ["ORG", "a", "bb", "ccc"]);
        assert!(text.lines().nth(3).unwrap().starts_with("ccc  enabled  -"));
    }

    #[test]
    fn usage_shows_a_field_per_line_and_null_as_a_dash() {
        let text = shown(
            Shape::Usage,
            json!({
                "calls_in_window": 3, "threshold_calls": 100, "window_started_at": null,
                "window_ends_at": null, "last_used_at": "2027-01-15T08:00:00Z",
                "rate_limited_in_window": 0
            }),
        );
        assert_eq!(
            text,
            "calls in window        3\n\
             threshold calls        100\n\
             window started at      -\n\
             window ends at         -\n\
             last used at           2027-01-15T08:00:00Z\n\
             rate limited in window 0\n"
        );
    }

    #[test]
    fn a_new_token_keeps_its_two_space_layout() {
        let text = shown(
            Shape::Token,
            json!({ "name": "n", "role": "admin", "org": "acme", "token": "kg_x" }),
        );
        assert!(
            text.starts_with("name   n\nrole   admin\norg    acme\ntoken  kg_x\n"),
            "{text}"
        );
    }

    #[test]
    fn the_provider_has_no_org_in_whoami() {
        let text = shown(
            Shape::Whoami,
            json!({ "name": "provider", "role": "provider", "org": null }),
        );
        assert_eq!(text, "name provider\nrole provider\norg  -\n");
    }
}
