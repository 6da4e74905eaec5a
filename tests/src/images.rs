//! The demo app's images. Building, caching and pushing them is [`demokit`]'s (shared with
//! `deployctl demo`); this adds what only tests do with them.

use std::process::Command;

pub use demokit::images::{
    Behaviour, DOCKERFILE_TEMPLATE, DemoImage, DemoImages, LOCAL_REPO, LocalImage,
    build_demo_images, demoapp_binary, derive_image, fake_git_sha,
};

use crate::command::run;
use crate::error::Result;

/// Runs `docker pull` by digest, e.g. to check a pushed image can be fetched back.
pub fn pull(pinned: &str) -> Result<()> {
    run(Command::new("docker").args(["pull", "--quiet", pinned])).map(drop)
}
