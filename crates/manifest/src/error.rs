//! The one error type of this crate: every failure names the file, the line and column, the
//! dotted key, what was expected, and how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What class of problem a [`ManifestError`] reports; lets callers (and tests) match on it
/// without parsing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML.
    Syntax,
    /// A key that this level of the manifest does not know.
    UnknownKey,
    /// A key that must be present is absent.
    MissingKey,
    /// The value has the wrong TOML type (e.g. a string where an integer belongs).
    WrongType,
    /// The value has the right type but is not acceptable (bad path, size, name, range...).
    InvalidValue,
    /// The same thing is declared twice (mount path, port, capability, ...).
    Duplicate,
    /// The value is well-formed but refused on security grounds (e.g. `user = 0`, `LD_PRELOAD`).
    Refused,
}

/// A line and column in the manifest text, both 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// 1-based line number.
    pub line: u32,
    /// 1-based column, in characters (not bytes).
    pub column: u32,
}

impl Location {
    /// The location of byte `offset` in `text` (clamped to the end of the text).
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        // Manifests are capped at MAX_MANIFEST_BYTES, far below u32::MAX lines or columns.
        Location {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

/// An error loading, parsing or validating an `isc.toml`.
///
/// Displays as
/// `isc.toml:12:9: key `resources.memory`: expected a size like "128M", got "lots"`
/// followed by a line `  fix: ...`.
#[derive(Debug)]
pub struct ManifestError {
    /// The manifest file the error is about (as given to [`crate::Manifest::load`] / `parse`).
    pub file: PathBuf,
    /// Where in the file; `None` only when the file could not be read at all.
    pub location: Option<Location>,
    /// The dotted key, e.g. `filesystem.tmpfs[0].size`; `None` for pure syntax errors.
    pub key: Option<String>,
    /// The class of problem.
    pub kind: ErrorKind,
    /// What was expected and what was found.
    pub message: String,
    /// One sentence telling the user how to fix it.
    pub fix: String,
    source: Option<std::io::Error>,
}

impl ManifestError {
    pub(crate) fn io(file: &Path, source: std::io::Error) -> ManifestError {
        let fix = match source.kind() {
            std::io::ErrorKind::NotFound => {
                "check the path, or create the file (see docs/manifest.md)"
            }
            std::io::ErrorKind::PermissionDenied => {
                "make the file readable by the user running isc"
            }
            _ => "make sure the path names a readable UTF-8 text file",
        };
        ManifestError {
            file: file.to_path_buf(),
            location: None,
            key: None,
            kind: ErrorKind::Io,
            message: format!("cannot read the manifest: {source}"),
            fix: fix.to_string(),
            source: Some(source),
        }
    }

    pub(crate) fn at(
        file: &Path,
        text: &str,
        span: Range<usize>,
        key: Option<String>,
        kind: ErrorKind,
        message: String,
        fix: String,
    ) -> ManifestError {
        ManifestError {
            file: file.to_path_buf(),
            location: Some(Location::of_offset(text, span.start)),
            key,
            kind,
            message,
            fix,
            source: None,
        }
    }

    /// The line (1-based), if known.
    pub fn line(&self) -> Option<usize> {
        self.location.map(|l| l.line as usize)
    }

    /// The column (1-based, in characters), if known.
    pub fn column(&self) -> Option<usize> {
        self.location.map(|l| l.column as usize)
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        write!(f, "{}\n  fix: {}", self.message, self.fix)
    }
}

impl std::error::Error for ManifestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A problem found by a pure validation helper (see [`crate::rules`], [`crate::units`]) before it
/// is placed in a file: the parser adds the file, span and key to make a [`ManifestError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}; fix: {fix}")]
pub struct Problem {
    /// The class of problem.
    pub kind: ErrorKind,
    /// What was expected and what was found.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl Problem {
    /// An unacceptable value.
    pub fn invalid(message: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem { kind: ErrorKind::InvalidValue, message: message.into(), fix: fix.into() }
    }

    /// A value refused on security grounds.
    pub fn refused(message: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem { kind: ErrorKind::Refused, message: message.into(), fix: fix.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(Location::of_offset(text, 0), Location { line: 1, column: 1 });
        // 'b' 'é' ' ' '=' -> the '=' is the 4th character of line 2 although é is two bytes.
        let eq = text.find("= \"").unwrap();
        assert_eq!(Location::of_offset(text, eq), Location { line: 2, column: 4 });
        assert_eq!(Location::of_offset(text, 10_000), Location { line: 3, column: 1 });
    }

    #[test]
    fn display_names_file_location_key_and_fix() {
        let err = ManifestError::at(
            Path::new("isc.toml"),
            "x\n\n\n  memory = \"lots\"",
            6..7,
            Some("resources.memory".into()),
            ErrorKind::InvalidValue,
            "expected a size like \"128M\", got \"lots\"".into(),
            "write `memory = \"128M\"`".into(),
        );
        assert_eq!(
            err.to_string(),
            "isc.toml:4:3: key `resources.memory`: expected a size like \"128M\", got \"lots\"\n  fix: write `memory = \"128M\"`"
        );
    }
}
