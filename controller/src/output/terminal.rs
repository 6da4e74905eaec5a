//! Writes what the human renderer made of each message: progress on stderr (one live line per
//! host on a terminal, plain timestamped lines otherwise), results on stdout, result tables
//! aligned once all their rows are in (when the command's summary comes).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::Timestamp;

use super::human::{self, Progress, Shown, Table};
use super::{Message, Output};

/// The human [`Output`].
pub struct Human {
    /// Live lines, on a terminal that can redraw them.
    live: Option<Live>,
    /// Rows of the result table being built.
    table: Mutex<Option<(Table, Vec<Vec<String>>)>>,
}

impl Human {
    pub fn new() -> Human {
        let redraws = std::io::stderr().is_terminal()
            && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(false);
        Human {
            live: redraws.then(Live::new),
            table: Mutex::new(None),
        }
    }

    fn progress(&self, p: &Progress) {
        match &self.live {
            Some(live) => live.show(p),
            None => {
                let mut err = std::io::stderr().lock();
                for line in &p.lines {
                    let _ = writeln!(err, "{} {line}", clock());
                }
            }
        }
    }

    fn rows(&self, table: Table, mut rows: Vec<Vec<String>>) {
        let Ok(mut pending) = self.table.lock() else {
            return;
        };
        match pending.as_mut() {
            Some((t, all)) if *t == table => all.append(&mut rows),
            _ => {
                // A different table: the previous one is complete.
                if let Some((t, all)) = pending.take() {
                    print!("{}", human::table(t.header(), &all));
                }
                *pending = Some((table, rows));
            }
        }
    }

    /// Ends live lines and prints the pending table: results follow.
    fn settle(&self) {
        if let Some(live) = &self.live {
            live.finish();
        }
        if let Some((t, all)) = self.table.lock().ok().and_then(|mut p| p.take()) {
            print!("{}", human::table(t.header(), &all));
        }
    }
}

impl Output for Human {
    fn emit(&self, message: &Message) {
        match human::render(message) {
            Shown::Progress(p) => self.progress(&p),
            Shown::Rows(table, rows) => self.rows(table, rows),
            Shown::Out(lines) => {
                self.settle();
                let mut out = std::io::stdout().lock();
                for line in lines {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
            }
            Shown::Err(lines) => {
                self.settle();
                for line in lines {
                    eprintln!("{line}");
                }
            }
        }
    }

    fn hosts(&self, names: &[String]) {
        if let Some(live) = &self.live {
            for name in names {
                live.bar(name);
            }
        }
    }
}

/// One spinner line per announced host showing its current phase; other lines print above.
struct Live {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Live {
    fn new() -> Live {
        Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(BTreeMap::new()),
        }
    }

    /// The live line of `host`, made on first use.
    fn bar(&self, host: &str) -> Option<ProgressBar> {
        let mut bars = self.bars.lock().ok()?;
        let bar = bars.entry(host.to_string()).or_insert_with(|| {
            let style =
                ProgressStyle::with_template("{spinner} {prefix:<16} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let bar = self.multi.add(
                ProgressBar::new_spinner()
                    .with_style(style)
                    .with_prefix(host.to_string()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Some(bar.clone())
    }

    /// The live line of an announced host; hosts never announced get none.
    fn announced(&self, host: &str) -> Option<ProgressBar> {
        let known = self.bars.lock().ok()?.contains_key(host);
        if known { self.bar(host) } else { None }
    }

    fn show(&self, p: &Progress) {
        let bar = p.host.as_deref().and_then(|h| self.announced(h));
        let Some(bar) = bar else {
            for line in &p.lines {
                let _ = self.multi.println(line);
            }
            return;
        };
        let mut lines = p.lines.iter();
        if let Some(first) = lines.next() {
            // The live line shows the headline without the host name its prefix already shows.
            let status = first
                .split_once("  ")
                .map(|(_, rest)| rest.trim().to_string())
                .unwrap_or_else(|| first.clone());
            if p.ends {
                bar.finish_with_message(status);
            } else {
                bar.set_message(status);
            }
            if p.failure {
                let _ = self.multi.println(first);
            }
        }
        for line in lines {
            let _ = self.multi.println(line);
        }
    }

    /// Stops every live line; the next command announces its own.
    fn finish(&self) {
        if let Ok(mut bars) = self.bars.lock() {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
            bars.clear();
        }
    }
}

/// `HH:MM:SS` in UTC, for plain progress lines.
fn clock() -> String {
    let text = Timestamp::now().to_string();
    text.get(11..19).unwrap_or(&text).to_string()
}
