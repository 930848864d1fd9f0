//! Pins `cache/FORMAT.md` to the code: every table marked `<!-- check: ... -->`
//! (sizes, field offsets, names, versions) must match the constants and the
//! `size_of`/`offset_of` values in `ringstore_cache::format`.

use ringstore_cache::format::{
    CHUNK_HEADER_BYTES, CHUNK_HEADER_OFFSETS, ENTRY_FIXED_BYTES, ENTRY_OFFSETS, LAYOUT_CONTENTS,
    LAYOUT_FILE, LAYOUT_VERSION, LOCK_FILE, OBJECTS_DIR, OBJECT_CHECKSUM_ATTRIBUTE,
    OBJECT_CHECKSUM_BYTES, OBJECT_CHECKSUM_VERSION, TRACKER_CHUNK_ENTRIES_DEFAULT,
    TRACKER_CHUNK_ENTRIES_MAX, TRACKER_FILE, TRACKER_HEADER_BYTES, TRACKER_HEADER_OFFSETS,
    TRACKER_MAGIC, TRACKER_TMP_FILE, TRACKER_VERSION,
};
use ringstore_cache::{KEY_BYTES_MAX, KEY_DEPTH_MAX, KEY_SEGMENT_BYTES_MAX, STAGING_SUFFIX};

const DOC: &str = include_str!("../FORMAT.md");

/// Rows (cells) of the table after `<!-- check: <name> ... -->`, and the
/// marker's arguments.
fn table(name: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let marker = format!("<!-- check: {name}");
    let start = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("FORMAT.md lacks {marker}"));
    let rest = &DOC[start..];
    let header_end = rest.find("-->").unwrap();
    let args: Vec<String> = rest[marker.len()..header_end]
        .split_whitespace()
        .map(String::from)
        .collect();
    let rows = rest[header_end + 3..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect();
    (args, rows)
}

fn check_struct(name: &str, bytes: usize, offsets: &[(&str, usize, usize)]) {
    let (args, rows) = table(name);
    assert_eq!(args, [bytes.to_string()], "{name}: documented size");
    let fields: Vec<(String, usize, usize)> = rows
        .iter()
        .filter(|r| r[1].parse::<usize>().is_ok())
        .map(|r| (r[2].clone(), r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    let code: Vec<(String, usize, usize)> = offsets
        .iter()
        .map(|&(f, o, s)| (f.to_owned(), o, s))
        .collect();
    assert_eq!(fields, code, "{name}: fields, offsets and sizes");
    let last = code.last().unwrap();
    assert_eq!(last.1 + last.2, bytes, "{name}: fields cover the struct");
}

#[test]
fn struct_tables_match_the_code() {
    check_struct(
        "tracker_header",
        TRACKER_HEADER_BYTES,
        &TRACKER_HEADER_OFFSETS,
    );
    check_struct("chunk_header", CHUNK_HEADER_BYTES, &CHUNK_HEADER_OFFSETS);
    check_struct("entry", ENTRY_FIXED_BYTES, &ENTRY_OFFSETS);
    // The key follows the fixed part.
    let (_, rows) = table("entry");
    let key = rows.iter().find(|r| r[2] == "key").unwrap();
    assert_eq!(key[0], ENTRY_FIXED_BYTES.to_string());
}

#[test]
fn names_and_versions_match_the_code() {
    let (_, rows) = table("names");
    let doc: std::collections::HashMap<&str, &str> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    let layout_version = LAYOUT_VERSION.to_string();
    let object_checksum_version = OBJECT_CHECKSUM_VERSION.to_string();
    let object_checksum_bytes = OBJECT_CHECKSUM_BYTES.to_string();
    let code = [
        ("LAYOUT_FILE", LAYOUT_FILE),
        ("LOCK_FILE", LOCK_FILE),
        ("TRACKER_FILE", TRACKER_FILE),
        ("TRACKER_TMP_FILE", TRACKER_TMP_FILE),
        ("OBJECTS_DIR", OBJECTS_DIR),
        ("STAGING_SUFFIX", STAGING_SUFFIX),
        ("LAYOUT_VERSION", layout_version.as_str()),
        ("OBJECT_CHECKSUM_ATTRIBUTE", OBJECT_CHECKSUM_ATTRIBUTE),
        ("OBJECT_CHECKSUM_VERSION", object_checksum_version.as_str()),
        ("OBJECT_CHECKSUM_BYTES", object_checksum_bytes.as_str()),
    ];
    assert_eq!(doc.len(), code.len());
    for (name, value) in code {
        assert_eq!(doc.get(name), Some(&value), "{name}");
    }
}

/// `text` with every run of whitespace made one space (prose is re-wrapped).
fn norm(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn doc_says(phrase: &str) -> bool {
    norm(DOC).contains(&norm(phrase))
}

#[test]
fn prose_values_match_the_code() {
    let magic = std::str::from_utf8(&TRACKER_MAGIC).unwrap();
    let (_, header) = table("tracker_header");
    assert_eq!(header[0][3], magic);
    assert_eq!(header[1][3], TRACKER_VERSION.to_string());
    assert_eq!(header[2][3], TRACKER_HEADER_BYTES.to_string());
    assert!(doc_says(&format!(
        "## Tracker file (version {TRACKER_VERSION})"
    )));
    assert!(doc_says(&format!(
        "## Directory layout (layout version {LAYOUT_VERSION})"
    )));
    assert!(doc_says(&format!("\"{}\"", LAYOUT_CONTENTS.escape_debug())));
    assert!(doc_says(&format!(
        "(default {TRACKER_CHUNK_ENTRIES_DEFAULT}, at most {TRACKER_CHUNK_ENTRIES_MAX})"
    )));
    assert!(doc_says(&format!(
        "1..={KEY_BYTES_MAX} bytes (`KEY_BYTES_MAX`)"
    )));
    assert!(doc_says(&format!(
        "at most {KEY_DEPTH_MAX} segments (`KEY_DEPTH_MAX`)"
    )));
    assert!(doc_says(&format!(
        "at most {KEY_SEGMENT_BYTES_MAX} bytes each"
    )));
    assert!(doc_says(&format!(
        "{TRACKER_CHUNK_ENTRIES_MAX} × ({ENTRY_FIXED_BYTES} + {KEY_BYTES_MAX})"
    )));
}
