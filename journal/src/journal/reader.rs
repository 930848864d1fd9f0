//! Reading the journal: one op ([`Journal::read`]) or a range in order
//! ([`Entries`], which reads ahead). Every read verifies the entry's header
//! and payload checksum; a mismatch is read once more before it is
//! reported as [`Error::Corruption`]. A read the disk fails is read again
//! a block at a time, so the [`Error::Io`] names the block that fails alone
//! ([`crate::storage::UnreadableBlock`]); both kinds are logged at error
//! level and counted.

use super::*;

impl<S: Storage> Journal<S> {
    /// Reads op `op`. `Ok(None)` if the journal does not hold it (never
    /// written, or not durable yet); [`Error::BelowWatermark`] if it was
    /// compacted; [`Error::Corruption`] if its bytes fail verification.
    pub async fn read(&self, op: u64) -> Result<Option<Entry>> {
        let Some(found) = self.locate(op)? else {
            return Ok(None);
        };
        self.read_located(op, &found).await.map(Some)
    }

    /// Reads op `op`'s entry where it lives, alone: a verification failure
    /// is read once more before it is reported as damage (a transient read
    /// error must not look like corruption), and a read the disk fails is
    /// reported with the block that fails alone.
    async fn read_located(&self, op: u64, found: &Located<S::File>) -> Result<Entry> {
        match read_entry(op, found).await {
            Err(Error::Corruption { .. }) => self.reported(op, read_entry(op, found).await),
            Err(error @ Error::Io { .. }) => Err(self.reported_io(op, error)),
            other => other,
        }
    }

    /// A read of op `op` the disk failed (already read again block by
    /// block by [`read_entry`]): logged at error level with the file, the
    /// entry's offset and the block that fails alone, if one does, and
    /// counted ([`JournalStats::read_io_errors`]). Returned as it was.
    fn reported_io(&self, op: u64, error: Error) -> Error {
        if let Error::Io {
            op: call,
            path,
            offset,
            source,
        } = &error
        {
            let block = crate::storage::UnreadableBlock::in_error(source).map(|b| b.offset);
            tracing::error!(
                path = %path.display(),
                entry_offset = offset,
                unreadable_block = block,
                call,
                %source,
                "reading op {op} from the journal failed: the disk returned an error \
                 (`ringstore wal verify` reads every byte)"
            );
            self.shared.state.borrow_mut().stats.read_io_errors += 1;
        }
        error
    }

    /// The second read of op `op`'s entry, whose first failed verification:
    /// counted ([`JournalStats::read_retries`]), and damage it confirms is
    /// logged and counted ([`JournalStats::read_corruptions`]): recovery
    /// leaves vouched-for payloads to the reads, so this is where such
    /// damage surfaces. A second read the disk fails is reported as
    /// [`Journal::reported_io`] reports it.
    fn reported(&self, op: u64, read: Result<Entry>) -> Result<Entry> {
        self.shared.state.borrow_mut().stats.read_retries += 1;
        let read = match read {
            Err(error @ Error::Io { .. }) => return Err(self.reported_io(op, error)),
            read => read,
        };
        if let Err(Error::Corruption {
            path,
            offset,
            reason,
        }) = &read
        {
            tracing::error!(
                path = %path.display(),
                offset,
                %reason,
                "a read found damage in the journal: `ringstore wal verify` reports it, \
                 `ringstore wal salvage` cuts at it"
            );
            self.shared.state.borrow_mut().stats.read_corruptions += 1;
        }
        read
    }

    /// Where op `op` lives: `Ok(None)` if the journal does not hold it.
    fn locate(&self, op: u64) -> Result<Option<Located<S::File>>> {
        let state = self.shared.state.borrow();
        state.usable()?;
        if op <= state.compacted_floor {
            return Err(Error::BelowWatermark {
                op,
                watermark: state.compacted_floor,
            });
        }
        match state.index.lookup(op) {
            Lookup::Compacted => Err(Error::BelowWatermark {
                op,
                watermark: state.index.watermark(),
            }),
            Lookup::Missing | Lookup::Pending => Ok(None),
            Lookup::Durable(location, _) => {
                let segment = state
                    .segment(location.generation)
                    .expect("the index only points into live segments");
                Ok(Some(Located {
                    location,
                    file: segment.file.clone(),
                    path: segment.path.clone(),
                    segment_bytes: segment.segment_bytes,
                    journal_id: segment.journal_id,
                }))
            }
        }
    }

    /// The ops in `range`, in op order, each present or missing. Ops at or
    /// below the watermark yield [`Error::BelowWatermark`].
    pub fn entries(&self, range: RangeInclusive<u64>) -> Entries<S> {
        Entries {
            journal: self.clone(),
            next: *range.start(),
            end: *range.end(),
            done: range.is_empty(),
            window: None,
            joined: Vec::new(),
            read_alone_until: None,
        }
    }
}

/// Where an op's entry lives, with what reading it needs.
struct Located<F> {
    location: Location,
    file: Rc<F>,
    path: PathBuf,
    segment_bytes: u64,
    journal_id: [u8; 16],
}

impl<F> Located<F> {
    /// The block-aligned byte range holding the entry.
    fn block_range(&self) -> (u64, u64) {
        let offset = u64::from(self.location.offset);
        let len = (ENTRY_HEADER_BYTES + self.location.payload_len as usize) as u64;
        (
            align_down(offset, BLOCK_BYTES),
            align_up(offset + len, BLOCK_BYTES),
        )
    }
}

/// Reads op `op`'s entry with one read and verifies it.
async fn read_entry<F: StorageFile>(op: u64, found: &Located<F>) -> Result<Entry> {
    let (start, end) = found.block_range();
    let offset = u64::from(found.location.offset);
    let bytes = crate::storage::read_locating_unreadable(
        &*found.file,
        start,
        (end - start) as usize,
        &|| true,
    )
    .await
    .map_err(|e| Error::io("read", &found.path, Some(offset), e))?;
    verify_entry(op, found, &bytes, start)
}

/// Verifies op `op`'s entry in `bytes`, which were read from file offset
/// `bytes_start` and must cover the entry.
fn verify_entry<F>(op: u64, found: &Located<F>, bytes: &[u8], bytes_start: u64) -> Result<Entry> {
    let location = found.location;
    let path = &found.path;
    // Not the configured limit: the entry may predate a smaller one.
    let entry_bytes_max = crate::config::ENTRY_BYTES_MAX_LIMIT;
    let offset = u64::from(location.offset);
    let payload_len = location.payload_len as usize;
    let at = (offset - bytes_start) as usize;
    let corrupt = |reason: String| Error::corruption(path, offset, reason);
    if bytes.len() < at + ENTRY_HEADER_BYTES + payload_len {
        return Err(corrupt(format!("file ends before op {op}'s entry")));
    }
    let header = check_entry_header(
        &bytes[at..],
        &found.journal_id,
        location.generation,
        offset,
        found.segment_bytes,
        entry_bytes_max,
    )
    .map_err(|fault| corrupt(format!("op {op}: {}", fault.describe())))?;
    if header.op.get() != op
        || header.entry_kind() != Some(EntryKind::Data)
        || header.payload_len.get() != location.payload_len
    {
        return Err(corrupt(format!(
            "entry header names op {}, expected op {op}",
            header.op.get()
        )));
    }
    let payload = &bytes[at + ENTRY_HEADER_BYTES..at + ENTRY_HEADER_BYTES + payload_len];
    if crc32fast::hash(payload) != header.payload_checksum.get() {
        return Err(corrupt(format!("op {op}: payload checksum mismatch")));
    }
    Ok(Entry {
        op,
        epoch: header.epoch.get(),
        payload: payload.to_vec(),
    })
}

/// Bytes [`Entries`] reads ahead in one read: consecutive ops of a leader's
/// log sit next to each other, so a replay reads the log in windows this
/// large, the next one in flight while the current one is verified,
/// instead of one block per op.
pub const ENTRIES_READ_AHEAD_BYTES: u64 = 4 << 20;
/// Reads of [`ENTRIES_READ_AHEAD_BYTES`] [`Entries`] keeps in flight: two,
/// so the disk has the next read while the walk verifies the one before.
/// (A walk close behind the writer re-reads alone each entry its reads
/// ahead fetched before the bytes were written; see `read_retries`.)
const ENTRIES_READS_AHEAD: usize = 2;

/// Async iterator over a range of ops; see [`Journal::entries`].
pub struct Entries<S: Storage = DmaStorage> {
    journal: Journal<S>,
    next: u64,
    end: u64,
    done: bool,
    window: Option<Window<S::File>>,
    /// An entry that straddles two reads is copied here whole to be
    /// verified (kept between entries, so not allocated per straddle).
    joined: Vec<u8>,
    /// After a window's read failed: the segment (generation) and the
    /// offset up to which entries are read alone.
    read_alone_until: Option<(u64, u64)>,
}

/// What was read of one segment: consecutive reads, kept as the kernel
/// returned them (an entry inside one is verified in place, with no copy
/// of the window), with the read of what follows them in flight.
struct Window<F: StorageFile> {
    generation: u64,
    /// Consecutive reads, each with the file offset of its first byte.
    reads: std::collections::VecDeque<(u64, F::ReadBuf)>,
    /// The reads of the bytes right after the last one, in order: each
    /// one's offset and the read.
    ahead: std::collections::VecDeque<(u64, glommio::Task<std::io::Result<F::ReadBuf>>)>,
}

impl<F: StorageFile> Window<F> {
    fn start(&self) -> u64 {
        self.reads.front().map_or(0, |(start, _)| *start)
    }

    fn end(&self) -> u64 {
        self.reads
            .back()
            .map_or(0, |(start, bytes)| start + bytes.len() as u64)
    }

    /// Starts reading the next [`ENTRIES_READ_AHEAD_BYTES`] after the
    /// window, up to the end of the segment.
    /// Returns whether a read was started; the caller then lets the reactor
    /// turn once ([`reactor_turn`]), so the read is submitted before the
    /// caller goes back to verifying entries.
    fn read_ahead(&mut self, found: &Located<F>) -> bool {
        let mut started = false;
        while self.ahead.len() < ENTRIES_READS_AHEAD {
            let from = self
                .ahead
                .back()
                .map_or(self.end(), |(at, _)| at + ENTRIES_READ_AHEAD_BYTES);
            if from >= found.segment_bytes {
                break;
            }
            let len = ENTRIES_READ_AHEAD_BYTES.min(found.segment_bytes - from) as usize;
            let file = found.file.clone();
            let read = glommio::spawn_local(async move { file.read_at(from, len).await });
            self.ahead.push_back((from, read));
            started = true;
        }
        started
    }

    /// The bytes `[start, end)` in one slice, with the file offset of its
    /// first byte: in place if one read holds them, else copied into
    /// `joined`. The window must cover them.
    fn slice<'a>(&'a self, start: u64, end: u64, joined: &'a mut Vec<u8>) -> (&'a [u8], u64) {
        for (read_start, bytes) in &self.reads {
            if *read_start <= start && end <= read_start + bytes.len() as u64 {
                return (bytes, *read_start);
            }
        }
        joined.clear();
        for (read_start, bytes) in &self.reads {
            let read_end = read_start + bytes.len() as u64;
            if read_end <= start || *read_start >= end {
                continue;
            }
            let from = start.max(*read_start) - read_start;
            let to = end.min(read_end) - read_start;
            joined.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        (joined, start)
    }
}

impl<S: Storage> std::fmt::Debug for Entries<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("next", &self.next)
            .field("end", &self.end)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Entries<S> {
    /// The next op in the range, or `None` past its end. An error ends the
    /// iteration.
    pub async fn next(&mut self) -> Option<Result<LogItem>> {
        if self.done {
            return None;
        }
        let op = self.next;
        if op >= self.end {
            self.done = true;
        } else {
            self.next += 1;
        }
        let item = match self.read(op).await {
            Ok(Some(entry)) => Ok(LogItem::Present(entry)),
            Ok(None) => Ok(LogItem::Missing(op)),
            Err(error) => {
                self.done = true;
                Err(error)
            }
        };
        Some(item)
    }

    async fn read(&mut self, op: u64) -> Result<Option<Entry>> {
        let Some(found) = self.journal.locate(op)? else {
            return Ok(None);
        };
        let (start, end) = found.block_range();
        let generation = found.location.generation;
        if self
            .read_alone_until
            .is_some_and(|(g, until)| g == generation && start < until)
        {
            return self.journal.read_located(op, &found).await.map(Some);
        }
        if let Err(error) = self.fill(&found, start, end).await {
            if !matches!(error, Error::Io { .. }) {
                return Err(error);
            }
            // A window's read failed: read the entries it and its reads
            // ahead cover alone, so that a block the disk cannot read
            // fails only its own entry (named, and reported as
            // `Journal::read` reports it), and the walk does not read the
            // failing window again for each of them.
            self.window = None;
            let covered = ENTRIES_READ_AHEAD_BYTES * (ENTRIES_READS_AHEAD as u64 + 1);
            self.read_alone_until = Some((generation, start.saturating_add(covered)));
            return self.journal.read_located(op, &found).await.map(Some);
        }
        let window = self.window.as_mut().expect("filled above");
        if window.read_ahead(&found) {
            reactor_turn().await;
        }
        let window = self.window.as_ref().expect("filled above");
        let (bytes, bytes_start) = window.slice(start, end, &mut self.joined);
        match verify_entry(op, &found, bytes, bytes_start) {
            Ok(entry) => Ok(Some(entry)),
            // Read once more, alone, before reporting damage: a transient
            // read error must not look like corruption.
            Err(Error::Corruption { .. }) => {
                self.window = None;
                let read = read_entry(op, &found).await;
                self.journal.reported(op, read).map(Some)
            }
            Err(other) => Err(other),
        }
    }

    /// Makes the window cover `start..end` of the entry's segment: drops
    /// the reads before it and adds the reads ahead when the entry starts
    /// in the window or in them (blocks without data entries, such as a
    /// write's index or a hard-state write, may lie between two ops),
    /// otherwise reads a fresh window.
    async fn fill(&mut self, found: &Located<S::File>, start: u64, end: u64) -> Result<()> {
        let generation = found.location.generation;
        let offset = u64::from(found.location.offset);
        let io_error = |e| Error::io("read", &found.path, Some(offset), e);
        if let Some(window) = &mut self.window {
            let reach = window.end() + window.ahead.len() as u64 * ENTRIES_READ_AHEAD_BYTES;
            let continues = window.generation == generation
                && window.start() <= start
                && (end <= window.end()
                    || (start < reach
                        && window
                            .ahead
                            .front()
                            .is_some_and(|(at, _)| *at == window.end())));
            if continues {
                // Keep only the reads the entry needs, then add what was
                // read ahead (more than once for an entry larger than one).
                // The last read stays even when the entry starts where it
                // ends: it is what says where the window ends, which the
                // read ahead must continue.
                while window.reads.len() > 1
                    && window
                        .reads
                        .front()
                        .is_some_and(|(s, bytes)| s + bytes.len() as u64 <= start)
                {
                    window.reads.pop_front();
                }
                while window.end() < end {
                    let Some((at, read)) = window.ahead.pop_front() else {
                        break;
                    };
                    let bytes = read.await.map_err(io_error)?;
                    if bytes.is_empty() || at != window.end() {
                        // The file ended short of the segment: the reads
                        // after it do not continue the window.
                        window.ahead.clear();
                        break;
                    }
                    window.reads.push_back((at, bytes));
                    if window.read_ahead(found) {
                        reactor_turn().await;
                    }
                }
                if window.start() <= start && end <= window.end() {
                    return Ok(());
                }
            }
        }
        let len = (end - start)
            .max(ENTRIES_READ_AHEAD_BYTES)
            .min(found.segment_bytes.saturating_sub(start).max(end - start));
        let bytes = found
            .file
            .read_at(start, len as usize)
            .await
            .map_err(io_error)?;
        self.window = Some(Window {
            generation,
            reads: std::collections::VecDeque::from([(start, bytes)]),
            ahead: std::collections::VecDeque::new(),
        });
        Ok(())
    }
}
