//! Pins FORMAT.md to the code: every field row of the two header tables has
//! the offset and size the structs really have, and the constants it names
//! match.
use ringstore_journal::format::*;
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

#[test]
fn segment_header_table_matches_the_struct() {
    let doc = include_str!("../FORMAT.md");
    let rows = table(doc, "### Segment header");
    let fields = [
        ("checksum", field!(SegmentHeader, checksum)),
        ("magic", field!(SegmentHeader, magic)),
        ("version", field!(SegmentHeader, version)),
        ("data_offset", field!(SegmentHeader, data_offset)),
        ("generation", field!(SegmentHeader, generation)),
        ("segment_bytes", field!(SegmentHeader, segment_bytes)),
        ("batch_bytes_max", field!(SegmentHeader, batch_bytes_max)),
        ("prev_generation", field!(SegmentHeader, prev_generation)),
        ("prev_end", field!(SegmentHeader, prev_end)),
        ("watermark", field!(SegmentHeader, watermark)),
        ("flags", field!(SegmentHeader, flags)),
        ("writes_in_flight", field!(SegmentHeader, writes_in_flight)),
        ("journal_id", field!(SegmentHeader, journal_id)),
    ];
    assert_eq!(rows.len(), fields.len());
    for ((offset, size, name), (field, (code_offset, code_size))) in rows.iter().zip(fields) {
        assert_eq!(name, field);
        assert_eq!((*offset, *size), (code_offset, code_size), "{name}");
    }
    let last = rows.last().unwrap();
    assert_eq!(last.0 + last.1, SEGMENT_HEADER_BYTES);
    assert!(doc.contains(&format!("### Segment header ({SEGMENT_HEADER_BYTES} bytes")));
}

#[test]
fn entry_header_table_matches_the_struct() {
    let doc = include_str!("../FORMAT.md");
    let rows = table(doc, "### Entry header");
    let fields = [
        ("checksum", field!(EntryHeader, checksum)),
        ("magic", field!(EntryHeader, magic)),
        ("op", field!(EntryHeader, op)),
        ("epoch", field!(EntryHeader, epoch)),
        ("generation", field!(EntryHeader, generation)),
        ("offset", field!(EntryHeader, offset)),
        ("payload_len", field!(EntryHeader, payload_len)),
        ("payload_checksum", field!(EntryHeader, payload_checksum)),
        ("durable_before", field!(EntryHeader, durable_before)),
        ("kind", field!(EntryHeader, kind)),
        ("flags", field!(EntryHeader, flags)),
        ("index_at", field!(EntryHeader, index_at)),
        ("reserved", field!(EntryHeader, reserved)),
    ];
    assert_eq!(rows.len(), fields.len());
    for ((offset, size, name), (field, (code_offset, code_size))) in rows.iter().zip(fields) {
        assert_eq!(name, field);
        assert_eq!((*offset, *size), (code_offset, code_size), "{name}");
    }
    let last = rows.last().unwrap();
    assert_eq!(last.0 + last.1, ENTRY_HEADER_BYTES);
    assert!(doc.contains(&format!("### Entry header ({ENTRY_HEADER_BYTES} bytes)")));
}

#[test]
fn superblock_tables_match_the_structs() {
    use ringstore_journal::superblock::*;
    let doc = include_str!("../FORMAT.md");
    let rows = table(doc, "### Superblock copy header");
    let fields = [
        ("checksum", field!(SuperblockHeader, checksum)),
        ("magic", field!(SuperblockHeader, magic)),
        ("version", field!(SuperblockHeader, version)),
        ("kind", field!(SuperblockHeader, kind)),
        ("sequence", field!(SuperblockHeader, sequence)),
        ("copy", field!(SuperblockHeader, copy)),
        ("body_len", field!(SuperblockHeader, body_len)),
    ];
    assert_eq!(rows.len(), fields.len());
    for ((offset, size, name), (field, (code_offset, code_size))) in rows.iter().zip(fields) {
        assert_eq!(name, field);
        assert_eq!((*offset, *size), (code_offset, code_size), "{name}");
    }
    assert!(doc.contains(&format!(
        "### Superblock copy header ({SUPERBLOCK_HEADER_BYTES} bytes)"
    )));
    let rows = table(doc, "### Journal superblock body");
    let fields = [
        ("journal_id", field!(JournalBody, journal_id)),
        ("domain", field!(JournalBody, domain)),
        ("shard", field!(JournalBody, shard)),
        ("shards", field!(JournalBody, shards)),
        ("first_generation", field!(JournalBody, first_generation)),
        ("last_generation", field!(JournalBody, last_generation)),
        ("watermark", field!(JournalBody, watermark)),
        ("ends_count", field!(JournalBody, ends_count)),
        ("hard_state_len", field!(JournalBody, hard_state_len)),
    ];
    assert_eq!(rows.len(), fields.len());
    for ((offset, size, name), (field, (code_offset, code_size))) in rows.iter().zip(fields) {
        assert_eq!(name, field);
        assert_eq!((*offset, *size), (code_offset, code_size), "{name}");
    }
    assert!(doc.contains(&format!(
        "### Journal superblock body ({JOURNAL_BODY_BYTES} bytes"
    )));
    assert!(doc.contains(&format!("(at most {SEGMENT_ENDS_MAX})")));
    assert!(doc.contains(&format!("newest {SEGMENT_ENDS_MAX} are kept")));
    assert!(doc.contains(&format!("`RSUP` (0x{SUPERBLOCK_MAGIC:08x})")));
    assert!(doc.contains(&format!("superblock format version, {SUPERBLOCK_VERSION}")));
    assert!(doc.contains(&format!(
        "is {SUPERBLOCK_FILE_BYTES} bytes: two copies of {SUPERBLOCK_COPY_BYTES} bytes"
    )));
    assert_eq!(SUPERBLOCK_COPIES, 2);
    assert_eq!(
        (
            SuperblockKind::Journal as u32,
            SuperblockKind::DataDir as u32
        ),
        (1, 2)
    );
}

#[test]
fn index_record_table_matches_the_struct() {
    let doc = include_str!("../FORMAT.md");
    let rows = table(doc, "### Write index");
    let fields = [
        ("op", field!(IndexRecord, op)),
        ("epoch", field!(IndexRecord, epoch)),
        ("payload_len", field!(IndexRecord, payload_len)),
        ("payload_checksum", field!(IndexRecord, payload_checksum)),
        ("kind", field!(IndexRecord, kind)),
        ("reserved", field!(IndexRecord, reserved)),
    ];
    assert_eq!(rows.len(), fields.len());
    for ((offset, size, name), (field, (code_offset, code_size))) in rows.iter().zip(fields) {
        assert_eq!(name, field);
        assert_eq!((*offset, *size), (code_offset, code_size), "{name}");
    }
    let last = rows.last().unwrap();
    assert_eq!(last.0 + last.1, INDEX_RECORD_BYTES);
    assert_eq!(EntryKind::WriteIndex as u8, 6);
    assert!(doc.contains("5 hard state, 6 write index"));
}

#[test]
fn constants_named_in_the_document_match() {
    let doc = include_str!("../FORMAT.md");
    assert!(doc.contains(&format!("(version {FORMAT_VERSION})")));
    assert!(doc.contains(&format!("`RSEG` (0x{SEGMENT_MAGIC:08x})")));
    assert!(doc.contains(&format!("`RENT` (0x{ENTRY_MAGIC:08x})")));
    assert!(doc.contains(&format!("Entries start at byte {SEGMENT_DATA_OFFSET}")));
    assert!(doc.contains(&format!("{BLOCK_BYTES}-byte boundary")));
    assert!(doc.contains(&format!("{ENTRY_ALIGN_BYTES}-byte boundary")));
    assert_eq!(
        (
            EntryKind::Data as u8,
            EntryKind::Watermark as u8,
            EntryKind::Padding as u8
        ),
        (1, 2, 3)
    );
    assert!(doc.contains("1 data, 2 watermark, 3 padding"));
    assert_eq!(FLAG_FIRST_IN_WRITE, 1);
    assert_eq!(SEGMENT_FLAG_NO_SYNC, 1);
    assert!(doc.contains(&format!("CRC-32 of bytes 4..{SEGMENT_HEADER_BYTES}")));
    assert!(doc.contains(&format!(
        "CRC-32 of the journal's `journal_id` (16 bytes, from the superblock and segment \
         header) followed by bytes 4..{ENTRY_HEADER_BYTES}"
    )));
    assert!(doc.contains(&format!(
        "at most {} MiB, the largest `entry_bytes_max`",
        ringstore_journal::config::ENTRY_BYTES_MAX_LIMIT >> 20
    )));
}

#[test]
fn durability_record_table_matches_the_struct() {
    use ringstore_journal::durability::record::*;
    let doc = include_str!("../FORMAT.md");
    let rows = table(doc, "## Durability record");
    let fields = [
        ("checksum", field!(RecordLayout, checksum)),
        ("magic", field!(RecordLayout, magic)),
        ("version", field!(RecordLayout, version)),
        ("preallocation", field!(RecordLayout, preallocation)),
        ("device", field!(RecordLayout, device)),
        ("boot_id", field!(RecordLayout, boot_id)),
        (
            "measured_at_unix_secs",
            field!(RecordLayout, measured_at_unix_secs),
        ),
        ("rounds", field!(RecordLayout, rounds)),
        ("reserved", field!(RecordLayout, reserved)),
        ("sync_p50_ns", field!(RecordLayout, sync_p50_ns)),
        (
            "write_through_p50_ns",
            field!(RecordLayout, write_through_p50_ns),
        ),
    ];
    assert_eq!(rows.len(), fields.len());
    for ((offset, size, name), (field, (code_offset, code_size))) in rows.iter().zip(fields) {
        assert_eq!(name, field);
        assert_eq!((*offset, *size), (code_offset, code_size), "{name}");
    }
    let last = rows.last().unwrap();
    assert_eq!(last.0 + last.1, DURABILITY_RECORD_BYTES);
    assert!(doc.contains(&format!(
        "`durability-choice` is {DURABILITY_RECORD_BYTES} bytes"
    )));
    assert!(doc.contains(&format!("`RSDC` (0x{DURABILITY_RECORD_MAGIC:08x})")));
    assert!(doc.contains(&format!("CRC-32 of bytes 4..{DURABILITY_RECORD_BYTES}")));
}
