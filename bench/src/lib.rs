//! Benchmarks for deployctl live in `src/bin/`; each prints figures. What they share: reading
//! their one argument, and the median they report.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::Context;

/// The first command-line argument as a count (repetitions, rounds…), `default` when it is
/// absent, at least 1; `name` is what the error calls it.
pub fn count_arg(name: &str, default: usize) -> anyhow::Result<usize> {
    let n = std::env::args()
        .nth(1)
        .map(|a| a.parse::<usize>())
        .transpose()
        .with_context(|| format!("{name} must be a number"))?
        .unwrap_or(default);
    Ok(n.max(1))
}

/// The median of `times` (the upper middle of an even count); zero for none.
pub fn median(times: &[Duration]) -> Duration {
    let mut v = times.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
