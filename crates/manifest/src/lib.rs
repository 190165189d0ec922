//! `isc-manifest`: the `isc.toml` manifest of an Immutable Service Container.
//!
//! Types ([`Manifest`] and its parts), parsing with located errors ([`ManifestError`] names the
//! file, line:column, dotted key, what was expected and a fix), validation, secure defaults
//! (nothing declared means denied), a canonical hash for signed reports, rendering back to TOML,
//! and a JSON Schema for editors ([`json_schema`]). The reference is `docs/manifest.md`.
//!
//! ```
//! use isc_manifest::Manifest;
//! let m = Manifest::parse(
//!     "name = \"web\"\n[service]\nexec = [\"/bin/sh\"]\n[image]\nsource = \"host\"\npaths = [\"/bin/sh\"]\n",
//!     std::path::Path::new("isc.toml"),
//! ).unwrap();
//! assert_eq!(m.service.user, 1000);
//! assert!(m.network.is_none()); // loopback only
//! ```

mod error;
mod netspec;
mod parse;
mod parse_mounts;
mod parse_network;
mod reader;
mod render;
pub mod rules;
mod schema;
mod types;
pub mod units;

use std::path::Path;

pub use error::{ErrorKind, Location, ManifestError, Problem};
pub use netspec::{parse_egress, parse_publish};
pub use schema::json_schema;
pub use types::*;

/// The built-in demo ISC (`isc run` without a file): a shell from the host printing its
/// identity, sleeping briefly, in the strict profile with every default.
pub const DEMO_TOML: &str = include_str!("../examples/demo.toml");

/// Domain separator of [`Manifest::canonical_hash`]; bump when the serialization changes.
const HASH_DOMAIN: &[u8] = b"isc-manifest-v1\n";

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let bytes = std::fs::read(path).map_err(|e| ManifestError::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            ManifestError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
            )
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and validates manifest `text`; `origin` is the file name used in errors and the
    /// base for relative `dir:`/`oci:`/`erofs:` image paths (its parent directory).
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, ManifestError> {
        parse::parse_manifest(text, origin)
    }

    /// The built-in demo ISC, parsed from [`DEMO_TOML`].
    pub fn defaults_demo() -> Manifest {
        Manifest::parse(DEMO_TOML, Path::new("<built-in demo>"))
            .expect("the built-in demo manifest is valid (tested)")
    }

    /// blake3 hex digest of the canonical serialization (compact JSON of the validated manifest,
    /// object keys in declaration order, maps sorted), prefixed by a version tag. Two manifests
    /// that differ only in spelling (`"16M"` vs `16777216`, defaults omitted or written out) hash
    /// the same.
    pub fn canonical_hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("manifest types always serialize to JSON");
        let mut h = blake3::Hasher::new();
        h.update(HASH_DOMAIN);
        h.update(&json);
        h.finalize().to_hex().to_string()
    }

    /// The manifest as `isc.toml` text with every default written out (`parse` of it yields an
    /// equal manifest).
    pub fn to_toml_string(&self) -> String {
        render::to_toml_string(self)
    }

    /// Every path writable inside the ISC: declared tmpfs, volumes, the profile's implied paths.
    /// The engine feeds this to Landlock; nothing else may be written.
    pub fn writable_paths(&self) -> Vec<std::path::PathBuf> {
        let mut out: Vec<std::path::PathBuf> =
            self.profile.implied_writable_paths().iter().map(std::path::PathBuf::from).collect();
        out.extend(self.filesystem.tmpfs.iter().map(|t| t.path.clone()));
        out.extend(self.filesystem.volumes.iter().map(|v| v.path.clone()));
        out
    }
}
