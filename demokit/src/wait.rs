//! Polling with a deadline: wait for an observable condition, never for a fixed sleep.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often conditions are re-checked: short next to every deadline callers use.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Ok(value)` or `timeout` passes. `Err(text)` means "not yet";
/// the last text is reported on timeout so a failure says what was last seen.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success_and_reports_the_last_failure() {
        let mut n = 0;
        let got = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            if n >= 3 { Ok(n) } else { Err(format!("n={n}")) }
        });
        assert_eq!(got.unwrap(), 3);

        let err = wait_until::<()>("never", Duration::from_millis(120), || {
            Err("still no".into())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("never") && text.contains("still no"),
            "{text}"
        );
    }
}
