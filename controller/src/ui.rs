//! `deployctl ui`'s page, pure (README, "Watching"): the board as rows (hosts × services with
//! digest, health, since and last outcome), the HTML page that shows them — rendered on the
//! server, so it is complete without script — and its script, which replaces the rows from the
//! `/events` stream. Every text from a host is escaped: agents' answers are not trusted markup.

use serde::Serialize;

use crate::live::Board;
use crate::output::human::short_image;

/// One line of the page's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub env: String,
    pub host: String,
    pub reachable: bool,
    pub agent: String,
    pub service: String,
    pub digest: String,
    pub health: String,
    pub since: String,
    pub last_outcome: String,
}

/// The board as the page's rows: one per host and service, one per host that is down or runs
/// nothing of the app.
pub fn rows(board: &Board) -> Vec<Row> {
    let mut out = Vec::new();
    for e in &board.envs {
        for h in &e.hosts {
            let base = Row {
                env: e.env.clone(),
                host: h.name.clone(),
                reachable: false,
                agent: "-".into(),
                service: "-".into(),
                digest: "-".into(),
                health: "-".into(),
                since: "-".into(),
                last_outcome: "-".into(),
            };
            let status = match &h.last {
                None => {
                    out.push(Row {
                        health: "connecting".into(),
                        ..base
                    });
                    continue;
                }
                Some(Err(why)) => {
                    out.push(Row {
                        health: "unreachable".into(),
                        last_outcome: why.message.clone(),
                        ..base
                    });
                    continue;
                }
                Some(Ok(s)) => s,
            };
            let services: Vec<_> = status
                .services
                .iter()
                .filter(|s| s.app == board.app)
                .collect();
            let up = Row {
                reachable: true,
                agent: status.agent_version.clone(),
                ..base
            };
            if services.is_empty() {
                out.push(Row {
                    health: "nothing deployed".into(),
                    ..up.clone()
                });
            }
            for s in services {
                out.push(Row {
                    service: s.service.clone(),
                    digest: s
                        .image
                        .as_ref()
                        .map_or("-".into(), |i| short_image(&i.to_string())),
                    health: s.health.to_string(),
                    since: s.since.to_string(),
                    last_outcome: s.last_outcome.map_or("-".into(), |o| o.to_string()),
                    ..up.clone()
                });
            }
        }
    }
    out
}

/// `&`, `<`, `>`, `"` and `'` as entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const COLUMNS: [&str; 8] = [
    "env",
    "host",
    "agent",
    "service",
    "digest",
    "health",
    "since",
    "last_outcome",
];

fn cells(r: &Row) -> [&str; 8] {
    [
        &r.env,
        &r.host,
        &r.agent,
        &r.service,
        &r.digest,
        &r.health,
        &r.since,
        &r.last_outcome,
    ]
}

/// The whole page for `board`.
pub fn page(board: &Board) -> String {
    let mut body = String::new();
    for r in rows(board) {
        body.push_str(&format!(
            "<tr class=\"{}\">",
            if r.health == "healthy" { "ok" } else { "bad" }
        ));
        for (c, v) in COLUMNS.iter().zip(cells(&r)) {
            body.push_str(&format!("<td data-col=\"{c}\">{}</td>", escape(v)));
        }
        body.push_str("</tr>\n");
    }
    let head: String = COLUMNS
        .iter()
        .map(|c| format!("<th>{}</th>", c.replace('_', " ")))
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deployctl — {app}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left; }}
tr.ok td[data-col=health] {{ color: #176f2c; }}
tr.bad td[data-col=health] {{ color: #b00020; font-weight: bold; }}
#live {{ color: #666; }}
</style></head>
<body>
<h1>{app}</h1>
<p id="live">read-only; updated live from the agents</p>
<table><thead><tr>{head}</tr></thead>
<tbody id="rows">
{body}</tbody></table>
<script>
const columns = {columns};
function draw(rows) {{
  const tbody = document.getElementById("rows");
  tbody.replaceChildren(...rows.map(r => {{
    const tr = document.createElement("tr");
    tr.className = r.health === "healthy" ? "ok" : "bad";
    for (const c of columns) {{
      const td = document.createElement("td");
      td.dataset.col = c;
      td.textContent = r[c];
      tr.appendChild(td);
    }}
    return tr;
  }}));
  document.getElementById("live").textContent = "read-only; updated " + new Date().toLocaleTimeString();
}}
window.addEventListener("load", () => {{
  const events = new EventSource("/events");
  events.onmessage = m => draw(JSON.parse(m.data));
  events.onerror = () => {{ document.getElementById("live").textContent = "disconnected; retrying"; }};
}});
</script>
</body></html>
"#,
        app = escape(&board.app),
        columns = serde_json::to_string(&COLUMNS).unwrap_or_default(),
    )
}

/// The host rows of a board as JSON, for `/events` and `/state`.
pub fn rows_json(board: &Board) -> String {
    serde_json::to_string(&rows(board)).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;"
        );
        let board = Board {
            app: "<b>acme</b>".into(),
            envs: vec![crate::live::EnvRow {
                env: "prod".into(),
                hosts: vec![crate::live::HostRow {
                    name: "h1".into(),
                    last: Some(Err(crate::connector::HostError {
                        kind: crate::output::HostErrorKind::Unreachable,
                        message: "<img src=x onerror=alert(1)>".into(),
                    })),
                }],
            }],
        };
        let html = page(&board);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>acme"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }
}
