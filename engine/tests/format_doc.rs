//! Pins engine/FORMAT.md to the code: every field row of the snapshot
//! header, section entry and identity header tables has the offset and size
//! the structs really have, and the magic numbers and limits it states are
//! the constants'.
use ringstore::snapshot::format::*;
use std::mem::offset_of;

/// Rows `| offset | size | field | ... |` of the table under `heading`.
fn table(doc: &str, heading: &str) -> Vec<(usize, usize, String)> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("FORMAT.md lacks {heading}"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| offset"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].parse().unwrap(),
                cells[2].parse().unwrap(),
                cells[3].to_string(),
            )
        })
        .collect()
}

macro_rules! field {
    ($ty:ty, $name:ident) => {{
        let value: $ty = zerocopy::FromZeros::new_zeroed();
        (offset_of!($ty, $name), std::mem::size_of_val(&value.$name))
    }};
}

fn check(rows: Vec<(usize, usize, String)>, fields: &[(&str, (usize, usize))], bytes: usize) {
    assert_eq!(rows.len(), fields.len());
    for ((offset, size, name), (field, (code_offset, code_size))) in rows.iter().zip(fields) {
        assert_eq!(name, field);
        assert_eq!((*offset, *size), (*code_offset, *code_size), "{name}");
    }
    let last = rows.last().unwrap();
    assert_eq!(last.0 + last.1, bytes);
}

const DOC: &str = include_str!("../FORMAT.md");

#[test]
fn snapshot_header_table_matches_the_struct() {
    let fields = [
        ("header_checksum", field!(SnapshotHeader, header_checksum)),
        ("magic", field!(SnapshotHeader, magic)),
        ("version", field!(SnapshotHeader, version)),
        ("section_count", field!(SnapshotHeader, section_count)),
        ("watermark", field!(SnapshotHeader, watermark)),
        ("epoch", field!(SnapshotHeader, epoch)),
        ("domain", field!(SnapshotHeader, domain)),
        ("created_unix_ms", field!(SnapshotHeader, created_unix_ms)),
        ("body_bytes", field!(SnapshotHeader, body_bytes)),
        ("file_checksum", field!(SnapshotHeader, file_checksum)),
        ("reserved", field!(SnapshotHeader, reserved)),
    ];
    check(
        table(DOC, "### Snapshot header"),
        &fields,
        SNAPSHOT_HEADER_BYTES,
    );
    assert!(DOC.contains(&format!(
        "### Snapshot header ({SNAPSHOT_HEADER_BYTES} bytes"
    )));
    assert!(DOC.contains(&format!("`RSNP` ({SNAPSHOT_MAGIC:#010x})")));
    assert!(DOC.contains(&format!("at most {SECTION_COUNT_MAX}")));
    assert!(DOC.contains(&format!("snapshot version {SNAPSHOT_FORMAT_VERSION}")));
}

#[test]
fn section_entry_table_matches_the_struct() {
    let fields = [
        ("name", field!(SectionEntry, name)),
        ("version", field!(SectionEntry, version)),
        ("checksum", field!(SectionEntry, checksum)),
        ("offset", field!(SectionEntry, offset)),
        ("len", field!(SectionEntry, len)),
    ];
    check(
        table(DOC, "### Section table entry"),
        &fields,
        SECTION_ENTRY_BYTES,
    );
    assert!(DOC.contains(&format!(
        "### Section table entry ({SECTION_ENTRY_BYTES} bytes, at {SNAPSHOT_HEADER_BYTES} + {SECTION_ENTRY_BYTES}·i)"
    )));
    assert!(DOC.contains(&format!(
        "1 to {} bytes",
        ringstore::machine::SECTION_NAME_BYTES_MAX
    )));
}

#[test]
fn identity_header_table_matches_the_struct() {
    let fields = [
        ("checksum", field!(IdentityHeader, checksum)),
        ("magic", field!(IdentityHeader, magic)),
        ("version", field!(IdentityHeader, version)),
        ("flags", field!(IdentityHeader, flags)),
        ("domain", field!(IdentityHeader, domain)),
        ("created_unix_ms", field!(IdentityHeader, created_unix_ms)),
    ];
    check(
        table(DOC, "### Identity header"),
        &fields,
        IDENTITY_HEADER_BYTES,
    );
    assert!(DOC.contains(&format!(
        "### Identity header ({IDENTITY_HEADER_BYTES} bytes"
    )));
    assert!(DOC.contains(&format!("`RDOM` ({IDENTITY_MAGIC:#010x})")));
    assert!(DOC.contains(&format!("identity {IDENTITY_FORMAT_VERSION}")));
}

#[test]
fn the_block_and_record_limits_are_the_constants() {
    assert_eq!(HEADER_BLOCK_BYTES, 4096);
    assert_eq!(BODY_OFFSET, 4096);
    assert!(DOC.contains("The header block is 4096 bytes"));
    assert_eq!(ringstore::machine::RECORD_BYTES_MAX, 64 << 20);
    assert!(DOC.contains("no record above\n64 MiB"));
}

#[test]
fn the_object_store_layout_is_the_code() {
    use ringstore::cold_restore::{RESTORE_MARKER_NAME, RESTORE_STAGING_DIR_NAME};
    use ringstore::object_store::{
        numbering_key, parse_numbering_key, parse_snapshot_key, snapshot_key, CACHE_DIR_DEFAULT,
    };
    assert!(DOC.contains("<domain>/snapshots/snapshot-<20 decimal digits>.snap"));
    assert_eq!(
        snapshot_key(42),
        "snapshots/snapshot-00000000000000000042.snap"
    );
    assert_eq!(parse_snapshot_key(&snapshot_key(u64::MAX)), Some(u64::MAX));
    assert_eq!(parse_snapshot_key("snapshots/snapshot-42.snap"), None);
    assert!(DOC.contains("<domain>/numbering/<20 decimal digits>-<20 decimal digits>"));
    let floor = ringstore::OpId { op: 42, epoch: 7 };
    assert_eq!(
        numbering_key(floor),
        "numbering/00000000000000000042-00000000000000000007"
    );
    assert_eq!(parse_numbering_key(&numbering_key(floor)), Some(floor));
    let top = ringstore::OpId {
        op: u64::MAX,
        epoch: u64::MAX,
    };
    assert_eq!(parse_numbering_key(&numbering_key(top)), Some(top));
    for not_a_claim in [
        "numbering/42-7",
        "numbering/00000000000000000042-0000000000000000000x",
        "numbering/00000000000000000042",
        "snapshots/00000000000000000042-00000000000000000007",
    ] {
        assert_eq!(parse_numbering_key(not_a_claim), None, "{not_a_claim}");
    }
    assert!(DOC.contains(&format!("| `{CACHE_DIR_DEFAULT}/` |")));
    assert!(DOC.contains(&format!("| `{RESTORE_MARKER_NAME}` |")));
    assert!(DOC.contains(&format!("| `{RESTORE_STAGING_DIR_NAME}/snapshot-")));
}
