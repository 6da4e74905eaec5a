//! Polling with a deadline: tests wait for observable conditions, never for a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use demokit::wait::POLL;
pub use demokit::wait_until;

use crate::error::{Error, Result};

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
