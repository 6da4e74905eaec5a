//! The host under the agent, for `status` and `deployctl doctor`: the agent's clock, whether the
//! engine answers (and its version and data root), and the free space of the engine's data root
//! and the agent's state dir — a full disk fails pulls and journal writes alike.

use std::path::Path;

use proto::time::Timestamp;
use proto::wire::{DiskSpace, EngineHealth, HostHealth};

use crate::backend::Backend;

/// What the host looks like now.
pub async fn host_health<B: Backend>(backend: &B, state_dir: &Path) -> HostHealth {
    let engine = match backend.engine_facts().await {
        Ok(f) => EngineHealth {
            reachable: true,
            version: Some(f.version).filter(|v| !v.is_empty()),
            api_version: Some(f.api_version).filter(|v| !v.is_empty()),
            root_dir: Some(f.root_dir).filter(|v| !v.is_empty()),
            error: None,
        },
        Err(e) => EngineHealth {
            reachable: false,
            version: None,
            api_version: None,
            root_dir: None,
            error: Some(e),
        },
    };
    let mut disks: Vec<DiskSpace> = Vec::new();
    let root = engine.root_dir.clone();
    for (what, path) in [
        ("engine", root.as_deref()),
        ("state_dir", state_dir.to_str()),
    ] {
        if let Some(d) = path.and_then(|p| disk_space(what, p)) {
            disks.push(d);
        }
    }
    HostHealth {
        now: Timestamp::now(),
        engine,
        disks,
    }
}

/// Free and total bytes of the filesystem holding `path` (for an unprivileged user too: only
/// the parents need to be searchable).
fn disk_space(what: &str, path: &str) -> Option<DiskSpace> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(DiskSpace {
        what: what.to_string(),
        path: path.to_string(),
        free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
        total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
    })
}
