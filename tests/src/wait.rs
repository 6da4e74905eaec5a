//! Polling with a deadline: tests wait for observable conditions, never for a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often conditions are re-checked: short next to every deadline the tests use.
const POLL: Duration = Duration::from_millis(50);

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

/// [`wait_until`] for async checks, without blocking the runtime's thread between polls.
pub async fn wait_until_async<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
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
        tokio::time::sleep(POLL).await;
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

    #[tokio::test]
    async fn async_variant() {
        let mut n = 0;
        let got = wait_until_async("n to reach 2", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { if n >= 2 { Ok(n) } else { Err(format!("n={n}")) } }
        })
        .await;
        assert_eq!(got.unwrap(), 2);
    }
}
