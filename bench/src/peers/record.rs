//! The records every peer writes and the checks every read-back applies.
//!
//! A record's payload is a per-writer pattern (the same one the journal
//! command uses) whose first 8 bytes are a stamp `writer << 32 | seq`. A
//! reader can therefore tell, from the bytes alone, which writer sent a
//! record and which of that writer's records it is, and [`RecordChecker`]
//! verifies every byte of every record it is shown: a peer that loses,
//! duplicates, reorders (within one writer) or corrupts a record fails the
//! run instead of producing a figure.

use std::io::Read;

use anyhow::{bail, ensure, Result};

use crate::cmd_journal::{payload_template, set_stamp};

/// Payload bytes of a small record (the 1- to 256-writer workloads).
pub const SMALL_RECORD_BYTES: usize = 256;
/// Payload bytes of a bulk record.
pub const BULK_RECORD_BYTES: usize = 64 << 10;
/// Bulk records per durability point: one sync per MiB.
pub const BULK_BATCH_RECORDS: usize = 16;
/// Bytes of the stamp at the start of every payload.
pub const STAMP_BYTES: usize = 8;
/// Largest writer index a stamp can carry.
pub const WRITERS_MAX: usize = 1 << 16;

const _: () = assert!(BULK_RECORD_BYTES * BULK_BATCH_RECORDS == 1 << 20);
const _: () = assert!(SMALL_RECORD_BYTES >= STAMP_BYTES);

/// The stamp of writer `writer`'s record number `seq` (from 0).
pub fn stamp(writer: usize, seq: u64) -> u64 {
    assert!(writer < WRITERS_MAX, "writer index out of range");
    assert!(seq <= u64::from(u32::MAX), "sequence number out of range");
    (writer as u64) << 32 | seq
}

/// Splits a stamp into (writer, seq).
pub fn split_stamp(stamp: u64) -> (usize, u64) {
    ((stamp >> 32) as usize, stamp & u64::from(u32::MAX))
}

/// The stamp at the start of `payload`.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; STAMP_BYTES] = payload.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A writer's payload buffer: its pattern, restamped for every record.
pub fn payload(writer: usize, len_bytes: usize) -> Vec<u8> {
    payload_template(writer, len_bytes)
}

/// Writes the stamp of (`writer`, `seq`) into `payload`.
pub fn restamp(payload: &mut [u8], writer: usize, seq: u64) {
    set_stamp(payload, stamp(writer, seq));
}

/// Checks records as a reader sees them: every byte, and each writer's
/// records in order without gaps or duplicates.
pub struct RecordChecker {
    len_bytes: usize,
    templates: Vec<Vec<u8>>,
    next_seq: Vec<u64>,
    total: u64,
}

impl RecordChecker {
    /// A checker for records of `len_bytes` from `writers` writers.
    pub fn new(writers: usize, len_bytes: usize) -> Self {
        assert!((1..=WRITERS_MAX).contains(&writers));
        Self {
            len_bytes,
            templates: (0..writers).map(|w| payload(w, len_bytes)).collect(),
            next_seq: vec![0; writers],
            total: 0,
        }
    }

    /// Checks the next record a reader returned.
    pub fn check(&mut self, record: &[u8]) -> Result<()> {
        ensure!(
            record.len() == self.len_bytes,
            "record {} is {} bytes, not {}",
            self.total,
            record.len(),
            self.len_bytes
        );
        let Some(stamp) = read_stamp(record) else {
            bail!("record {} has no stamp", self.total);
        };
        let (writer, seq) = split_stamp(stamp);
        let Some(template) = self.templates.get(writer) else {
            bail!(
                "record {} names writer {writer}, which never wrote",
                self.total
            );
        };
        ensure!(
            record[STAMP_BYTES..] == template[STAMP_BYTES..],
            "record {} (writer {writer}, seq {seq}) holds other bytes than were written",
            self.total
        );
        let expected = self.next_seq[writer];
        ensure!(
            seq == expected,
            "writer {writer}'s record {seq} came where its record {expected} belongs \
             (lost, duplicated or reordered)"
        );
        self.next_seq[writer] += 1;
        self.total += 1;
        Ok(())
    }

    /// Fails unless `records` records were seen in all (each writer's in
    /// order without gaps, as [`RecordChecker::check`] enforces).
    pub fn finish_total(&self, records: u64) -> Result<()> {
        ensure!(
            self.total == records,
            "{records} records written, {} read back",
            self.total
        );
        Ok(())
    }

    /// Fails unless every writer `w`'s records `0..acknowledged[w]` were seen.
    pub fn finish(&self, acknowledged: &[u64]) -> Result<()> {
        ensure!(
            acknowledged.len() == self.next_seq.len(),
            "{} writers acknowledged, checker built for {}",
            acknowledged.len(),
            self.next_seq.len()
        );
        for (writer, (&seen, &acked)) in self.next_seq.iter().zip(acknowledged).enumerate() {
            ensure!(
                seen == acked,
                "writer {writer}: {acked} records acknowledged, {seen} read back"
            );
        }
        Ok(())
    }
}

/// Bytes in front of each record in the plain-file peers' logs: the payload
/// length and its CRC-32, both `u32` little-endian.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Appends one framed record (header, then payload) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("record length fits u32");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads framed records from `input` until its end, handing each verified
/// payload to `visit`; a frame cut short at the very end (a torn tail) ends
/// the scan, a checksum mismatch is an error.
pub fn scan_frames(
    input: &mut impl Read,
    len_bytes_max: usize,
    mut visit: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut payload = vec![0u8; len_bytes_max];
    let mut count = 0u64;
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(count),
            Err(error) => return Err(error.into()),
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        ensure!(
            len <= len_bytes_max,
            "frame {count} claims {len} bytes, more than {len_bytes_max}"
        );
        match input.read_exact(&mut payload[..len]) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(count),
            Err(error) => return Err(error.into()),
        }
        ensure!(
            crc32fast::hash(&payload[..len]) == crc,
            "frame {count}: checksum mismatch"
        );
        visit(&payload[..len])?;
        count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_accepts_what_was_written_and_nothing_else() {
        let mut checker = RecordChecker::new(2, SMALL_RECORD_BYTES);
        let mut a = payload(0, SMALL_RECORD_BYTES);
        let mut b = payload(1, SMALL_RECORD_BYTES);
        restamp(&mut a, 0, 0);
        restamp(&mut b, 1, 0);
        checker.check(&a).unwrap();
        checker.check(&b).unwrap();
        restamp(&mut a, 0, 1);
        checker.check(&a).unwrap();
        checker.finish(&[2, 1]).unwrap();
        assert!(checker.finish(&[3, 1]).is_err());
        // A duplicate, a gap and a flipped byte are all refused.
        assert!(checker.check(&a).is_err());
        restamp(&mut a, 0, 5);
        assert!(checker.check(&a).is_err());
        restamp(&mut b, 1, 1);
        b[100] ^= 1;
        assert!(checker.check(&b).is_err());
    }

    #[test]
    fn frames_round_trip_and_a_torn_tail_ends_the_scan() {
        let mut log = Vec::new();
        for seq in 0..3 {
            let mut record = payload(0, SMALL_RECORD_BYTES);
            restamp(&mut record, 0, seq);
            encode_frame(&mut log, &record);
        }
        log.truncate(log.len() - 10);
        let mut checker = RecordChecker::new(1, SMALL_RECORD_BYTES);
        let count = scan_frames(&mut log.as_slice(), SMALL_RECORD_BYTES, |p| {
            checker.check(p)
        })
        .unwrap();
        assert_eq!(count, 2);
        log[FRAME_HEADER_BYTES + 20] ^= 1;
        assert!(scan_frames(&mut log.as_slice(), SMALL_RECORD_BYTES, |_| Ok(())).is_err());
    }
}
