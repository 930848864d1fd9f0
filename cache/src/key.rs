//! Cache keys: relative paths under the cache's `objects/` directory.
//!
//! A key is validated lexically *before* any filesystem call, so a refused key
//! has created, opened or statted nothing. The rules are deliberately
//! stricter than POSIX: absolute paths, `.` and `..` segments, empty segments,
//! control characters, over-long names and the staging suffix `.part` are all
//! refused. Sibling-prefix escapes (`../cachedir_other/x`, the classic bug of
//! checking `path.starts_with(root)` on strings) cannot pass because `..` is
//! refused, and [`Key::resolve_under`] re-checks component-wise anyway.
//!
//! Symlinks are handled at open time: every open uses `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` relative to `objects/`, so a
//! symlink anywhere in a key's path fails the call instead of being followed.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, KeyRejection, Result};

/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;

/// Longest segment, in bytes. NAME_MAX is 255; the rest is kept free for the
/// staging suffix `.<instance>-<seq>.part` (at most 1 + 8 + 1 + 20 + 5
/// bytes).
pub const KEY_SEGMENT_BYTES_MAX: usize = 200;

/// Most segments (directory levels plus the file name) in a key.
pub const KEY_DEPTH_MAX: usize = 32;

/// Suffix of staging files. Keys may not end with it.
pub const STAGING_SUFFIX: &str = ".part";

/// A staging name's last segment: `<segment>.<instance: 8 hex>-<seq: up to 20
/// digits>.part` must fit a 255-byte file name.
const _: () = assert!(KEY_SEGMENT_BYTES_MAX + 1 + 8 + 1 + 20 + STAGING_SUFFIX.len() <= 255);

/// A validated cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Box<str>);

impl Key {
    /// Validates `key` (see the module docs for the rules).
    pub fn new(key: &str) -> Result<Key> {
        validate(key).map_err(|reason| Error::rejected(key, reason))?;
        Ok(Key(key.into()))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory part (`a/b` for `a/b/c`), if any.
    pub(crate) fn parent(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(parent, _)| parent)
    }

    /// Every ancestor directory, outermost first (`a`, `a/b` for `a/b/c`).
    pub(crate) fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0
            .match_indices('/')
            .map(move |(index, _)| &self.0[..index])
    }

    /// The staging file name for this key: `<key>.<instance>-<seq>.part`
    /// (`instance` random per cache instance, 8 lower-case hex digits; `seq`
    /// a per-instance counter), in the same directory, so one directory fsync
    /// covers both the link and the unlink.
    pub(crate) fn staging_name(&self, instance: u32, seq: u64) -> String {
        format!("{}.{instance:08x}-{seq}{STAGING_SUFFIX}", self.0)
    }

    /// `root/key`, checked component-wise to stay under `root`.
    pub fn resolve_under(&self, root: &Path) -> Result<PathBuf> {
        let joined = root.join(&*self.0);
        let escapes = !joined.starts_with(root)
            || joined.components().count() != root.components().count() + self.depth();
        if escapes {
            return Err(Error::rejected(&self.0, KeyRejection::EscapesRoot));
        }
        Ok(joined)
    }

    fn depth(&self) -> usize {
        self.0.split('/').count()
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// True if `name` (a path relative to `objects/`) is a staging file.
pub(crate) fn is_staging_name(name: &str) -> bool {
    name.ends_with(STAGING_SUFFIX)
}

fn validate(key: &str) -> std::result::Result<(), KeyRejection> {
    if key.is_empty() {
        return Err(KeyRejection::Empty);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(KeyRejection::TooLong);
    }
    if key.starts_with('/') {
        return Err(KeyRejection::Absolute);
    }
    if key.chars().any(char::is_control) {
        return Err(KeyRejection::ControlCharacter);
    }
    let mut depth = 0;
    for segment in key.split('/') {
        depth += 1;
        match segment {
            "" => return Err(KeyRejection::EmptySegment),
            "." => return Err(KeyRejection::CurrentSegment),
            ".." => return Err(KeyRejection::ParentSegment),
            _ if segment.len() > KEY_SEGMENT_BYTES_MAX => return Err(KeyRejection::SegmentTooLong),
            _ => {}
        }
    }
    if depth > KEY_DEPTH_MAX {
        return Err(KeyRejection::TooDeep);
    }
    if is_staging_name(key) {
        return Err(KeyRejection::StagingSuffix);
    }
    // Belt and braces: the lexical rules above already imply this.
    let all_normal = Path::new(key)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !all_normal {
        return Err(KeyRejection::EscapesRoot);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str) -> Option<KeyRejection> {
        validate(key).err()
    }

    #[test]
    fn accepts_plain_relative_paths() {
        for key in [
            "a",
            "a/b/c",
            "seg..ment",
            ".hidden",
            "a/..b",
            "x.part.y",
            "ü/ß",
        ] {
            assert_eq!(reason(key), None, "{key}");
        }
    }

    #[test]
    fn rejects_each_rule() {
        assert_eq!(reason(""), Some(KeyRejection::Empty));
        assert_eq!(reason("/etc/passwd"), Some(KeyRejection::Absolute));
        assert_eq!(
            reason("../cachedir_other/x"),
            Some(KeyRejection::ParentSegment)
        );
        assert_eq!(reason("a/../../b"), Some(KeyRejection::ParentSegment));
        assert_eq!(reason("a/./b"), Some(KeyRejection::CurrentSegment));
        assert_eq!(reason("a//b"), Some(KeyRejection::EmptySegment));
        assert_eq!(reason("a/"), Some(KeyRejection::EmptySegment));
        assert_eq!(reason("a\0b"), Some(KeyRejection::ControlCharacter));
        assert_eq!(reason("a\nb"), Some(KeyRejection::ControlCharacter));
        assert_eq!(reason("x.part"), Some(KeyRejection::StagingSuffix));
        assert_eq!(reason("d/x.1.part"), Some(KeyRejection::StagingSuffix));
        let long_segment = "s".repeat(KEY_SEGMENT_BYTES_MAX + 1);
        assert_eq!(reason(&long_segment), Some(KeyRejection::SegmentTooLong));
        let long_key = "a/".repeat(KEY_BYTES_MAX / 2) + "b";
        assert_eq!(reason(&long_key), Some(KeyRejection::TooLong));
        let deep = vec!["d"; KEY_DEPTH_MAX + 1].join("/");
        assert_eq!(reason(&deep), Some(KeyRejection::TooDeep));
    }

    #[test]
    fn ancestors_and_staging_name() {
        let key = Key::new("a/b/c").unwrap();
        assert_eq!(key.ancestors().collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(key.parent(), Some("a/b"));
        assert_eq!(key.staging_name(0xab, 7), "a/b/c.000000ab-7.part");
        assert!(is_staging_name(&key.staging_name(0xab, 7)));
        assert_eq!(Key::new("top").unwrap().parent(), None);
    }

    #[test]
    fn resolve_stays_under_root() {
        let root = Path::new("/var/cache/ringstore");
        let key = Key::new("a/b").unwrap();
        assert_eq!(
            key.resolve_under(root).unwrap(),
            Path::new("/var/cache/ringstore/a/b")
        );
    }
}
