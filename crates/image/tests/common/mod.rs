//! Shared test helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A temporary isc root under /tmp/isc-image-test-*; stored images carry the immutable attribute,
/// so removal clears it first (plain `TempDir` drop would fail and leak).
pub struct TestStore {
    dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub fn new() -> Self {
        Self { dir: Some(tempfile::Builder::new().prefix("isc-image-test-").tempdir().unwrap()) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn path_buf(&self) -> PathBuf {
        self.path().to_path_buf()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let p = dir.keep();
            if let Err(e) = isc_image::immutable::remove_tree(&p) {
                eprintln!("cleanup of {} failed: {e}", p.display());
            }
        }
    }
}
