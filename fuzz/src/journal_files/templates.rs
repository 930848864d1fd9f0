//! The templates: valid journals written through the real append path on
//! the in-memory disk, with a record of what was submitted and
//! acknowledged, and their journal ids fixed so that they are the same
//! bytes in every process.

use super::files::{journal_superblock, outcome_end, scan_segment, Dir};
use super::input::FILES_MAX;
use super::{BATCH_BYTES_MAX, DIR, ENTRY_BYTES_MAX, SEGMENT_BYTES, SLOT_COUNT};
use ringstore_journal::config::ENTRY_BYTES_MAX_LIMIT;
use ringstore_journal::format::{
    check_entry_header, EntryKind, BLOCK_BYTES, FLAG_FIRST_IN_WRITE, SEGMENT_DATA_OFFSET,
};
use ringstore_journal::storage::{FaultConfig, MemStorage};
use ringstore_journal::superblock::{
    encode_copy, JournalSuperblock, SuperblockKind, SUPERBLOCK_COPIES, SUPERBLOCK_FILE_NAME,
};
use ringstore_journal::verify::SegmentOutcome;
use ringstore_journal::{Durability, Journal, JournalBuilder, JournalOwner};
use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::rc::Rc;

/// Number of templates ([`Source::Template`](super::Source::Template)
/// picks `template % TEMPLATE_COUNT`).
pub const TEMPLATE_COUNT: usize = 8;

/// The owner recorded by the "watermark-epoch-replica" template.
pub const TEMPLATE_OWNER: JournalOwner = JournalOwner {
    domain: [0x0d; 16],
    shard: 1,
    shards: 3,
};
/// The owner an input opens as with
/// [`Input::other_owner`](super::Input::other_owner): another domain, so a
/// journal that records [`TEMPLATE_OWNER`] must be refused.
pub const OTHER_OWNER: JournalOwner = JournalOwner {
    domain: [0x0e; 16],
    shard: 0,
    shards: 0,
};

/// The journal id template `index` carries. The journal draws a random one
/// when it creates its superblock; a template's journal is opened on a
/// superblock written beforehand with this id instead (a new journal whose
/// first segment was never created), so that the template is the same bytes
/// in every process — a crash found by the fuzzer must replay, and entry
/// header checksums are seeded with the id — and each template is another
/// journal.
pub fn template_journal_id(index: usize) -> [u8; 16] {
    let mut id = *b"ringstore-fuzz-0";
    id[15] = b'0' + index as u8;
    id
}

/// Older superblock states kept per template (the newest ones), for
/// [`Mutation::SuperblockFrom`](super::Mutation::SuperblockFrom)'s lost updates.
pub const SUPERBLOCK_VERSIONS_MAX: usize = 8;

/// What was submitted while a template was written.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// Every payload submitted for an op, acknowledged or not.
    pub submitted: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Payloads of appends that failed: their op is unknown and they may be
    /// on disk.
    pub unknown: HashSet<Vec<u8>>,
    /// The newest acknowledged payload of each op.
    pub acked: BTreeMap<u64, Vec<u8>>,
    /// Highest watermark advance acknowledged.
    pub watermark_acked: u64,
    /// Highest watermark advance submitted.
    pub watermark_submitted: u64,
}

impl Model {
    /// True if `payload` may be served for `op`.
    pub(super) fn allows(&self, op: u64, payload: &[u8]) -> bool {
        self.submitted
            .get(&op)
            .is_some_and(|s| s.iter().any(|p| p == payload))
            || self.unknown.contains(payload)
    }
}

/// A valid journal's files and what was written into them.
#[derive(Debug, Clone)]
pub struct Template {
    /// For messages.
    pub name: &'static str,
    /// Its files.
    pub dir: Dir,
    /// Its superblock file at earlier points of its life (the newest
    /// [`SUPERBLOCK_VERSIONS_MAX`] distinct ones, oldest first): a lost
    /// superblock update brings one back.
    pub old_superblocks: Vec<Vec<u8>>,
    /// Its journal id ([`template_journal_id`]).
    pub journal_id: [u8; 16],
    /// The owner its superblock records.
    pub owner: Option<JournalOwner>,
    /// What was submitted.
    pub model: Model,
    /// Its session ended in a clean close, which records the last
    /// segment's end in the superblock; otherwise in a crash that may have
    /// torn the writes in flight (`Recovery::Strict` may refuse it).
    pub clean_close: bool,
    /// Every acknowledged op was durable (not so for `NoSync` writes that a
    /// crash cut before any sync).
    pub acks_durable: bool,
    /// Its data entries' ops rise in file order (appends only, no replica
    /// writes or rewrites), so an op lost at the log's end lies above
    /// every op kept.
    pub ops_in_file_order: bool,
    /// After a crash: the last segment the superblock records and the
    /// offset in it from which nothing acknowledged lies and nothing later
    /// vouches for the bytes, so the crash could have left them in any
    /// state.
    pub unsynced_from: Option<(u64, u64)>,
}

impl Template {
    /// Its superblock at `version` (`% (older versions + 1)`; the last is
    /// the final one).
    pub(super) fn superblock_version(&self, version: u8) -> Option<&Vec<u8>> {
        let count = self.old_superblocks.len() + 1;
        match usize::from(version) % count {
            v if v < self.old_superblocks.len() => Some(&self.old_superblocks[v]),
            _ => self.dir.superblock.as_ref(),
        }
    }
}

thread_local! {
    static TEMPLATES: OnceCell<Rc<Vec<Template>>> = const { OnceCell::new() };
}

/// The templates, written on this thread's executor on first use.
pub fn templates() -> Rc<Vec<Template>> {
    TEMPLATES.with(|cell| {
        cell.get_or_init(|| Rc::new(crate::block_on(build_templates())))
            .clone()
    })
}

pub(super) fn builder(storage: MemStorage) -> JournalBuilder<MemStorage> {
    Journal::builder(DIR)
        .segment_bytes(SEGMENT_BYTES)
        .batch_bytes_max(BATCH_BYTES_MAX)
        .entry_bytes_max(ENTRY_BYTES_MAX)
        .slot_count(SLOT_COUNT)
        .storage(storage)
}

/// Writes a template through the real journal and records what it submits.
struct Writer {
    journal: Journal<MemStorage>,
    storage: MemStorage,
    model: Rc<RefCell<Model>>,
    counter: u64,
    superblocks: Vec<Vec<u8>>,
}

impl Writer {
    /// Opens a new journal for template `index`.
    async fn open(
        storage: &MemStorage,
        durability: Durability,
        index: usize,
        owner: Option<JournalOwner>,
    ) -> Writer {
        let journal_id = template_journal_id(index);
        let sb = JournalSuperblock::new(journal_id, None);
        let file: Vec<u8> = (0..SUPERBLOCK_COPIES)
            .flat_map(|copy| encode_copy(SuperblockKind::Journal, 1, copy, &sb.encode()))
            .collect();
        storage.insert_file(&Path::new(DIR).join(SUPERBLOCK_FILE_NAME), file.clone());
        let mut builder = builder(storage.clone()).durability(durability);
        if let Some(owner) = owner {
            builder = builder.owner(owner);
        }
        let journal = builder
            .open()
            .await
            .unwrap_or_else(|e| panic!("template: open on a perfect disk failed: {e}"));
        let mut writer = Writer {
            journal,
            storage: storage.clone(),
            model: Rc::default(),
            // Payloads unique across templates, so one served from another
            // template's files is recognised as such.
            counter: (index as u64) << 32,
            // The oldest state: before the first segment.
            superblocks: vec![file],
        };
        writer.capture();
        writer
    }

    /// Keeps the superblock file's current state if it changed.
    fn capture(&mut self) {
        let path = Path::new(DIR).join(SUPERBLOCK_FILE_NAME);
        if let Some(bytes) = self.storage.file_bytes(&path) {
            if self.superblocks.last() != Some(&bytes) {
                self.superblocks.push(bytes);
            }
        }
    }

    /// A payload unique among all templates: a counter, then a pattern.
    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.counter += 1;
        let len = len.clamp(8, ENTRY_BYTES_MAX as usize);
        let mut payload: Vec<u8> = (0..len)
            .map(|i| (self.counter as usize).wrapping_mul(131).wrapping_add(i) as u8)
            .collect();
        payload[..8].copy_from_slice(&self.counter.to_le_bytes());
        payload
    }

    /// Spawns `lens.len()` concurrent appends (they share group-commit
    /// writes) and waits for them. Returns how many failed.
    async fn appends(&mut self, lens: impl IntoIterator<Item = usize>) -> usize {
        let mut tasks = Vec::new();
        for len in lens {
            let payload = self.payload(len);
            let journal = self.journal.clone();
            let model = self.model.clone();
            tasks.push(
                glommio::spawn_local(async move {
                    match journal.append(&payload).await {
                        Ok(op) => {
                            let mut model = model.borrow_mut();
                            model.submitted.entry(op).or_default().push(payload.clone());
                            model.acked.insert(op, payload);
                            0
                        }
                        Err(_) => {
                            model.borrow_mut().unknown.insert(payload);
                            1
                        }
                    }
                })
                .detach(),
            );
        }
        let mut failed = 0;
        for task in tasks {
            failed += task.await.unwrap_or(1);
        }
        self.capture();
        failed
    }

    /// A replica write of `op`; must succeed.
    async fn write(&mut self, op: u64, len: usize) {
        let payload = self.payload(len);
        self.model
            .borrow_mut()
            .submitted
            .entry(op)
            .or_default()
            .push(payload.clone());
        self.journal
            .write(op, &payload)
            .await
            .unwrap_or_else(|e| panic!("template: write of op {op} failed: {e}"));
        self.model.borrow_mut().acked.insert(op, payload);
        self.capture();
    }

    async fn advance_watermark(&mut self, watermark: u64) {
        self.model.borrow_mut().watermark_submitted = watermark;
        self.journal
            .advance_watermark(watermark)
            .await
            .unwrap_or_else(|e| panic!("template: advance to {watermark} failed: {e}"));
        self.model.borrow_mut().watermark_acked = watermark;
        self.capture();
    }

    /// Closes the journal cleanly: what it wrote and its superblock's
    /// history.
    async fn close(self) -> (Model, Vec<Vec<u8>>) {
        self.journal
            .close()
            .await
            .unwrap_or_else(|e| panic!("template: close failed: {e}"));
        let model = self.model.borrow().clone();
        (model, self.superblocks)
    }

    /// Lets background work settle, drops the journal and crashes the disk:
    /// what it wrote and its superblock's history. Without the settling,
    /// how far a spare segment's preparation got — and so which unsynced
    /// writes the crash draws fates for — would depend on timing.
    async fn crash(self) -> (Model, Vec<Vec<u8>>) {
        crate::settle().await;
        let model = self.model.borrow().clone();
        let storage = self.storage.clone();
        drop(self.journal);
        storage.crash();
        (model, self.superblocks)
    }
}

/// How a template's session ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Clean,
    Crash { acks_durable: bool },
}

/// Turns what a writer left on `storage` into template `index`: gives it
/// its fixed journal id and checks what its superblock records.
fn finish(
    index: usize,
    name: &'static str,
    storage: &MemStorage,
    (model, mut superblocks): (Model, Vec<Vec<u8>>),
    ending: Ending,
    owner: Option<JournalOwner>,
) -> Template {
    let journal_id = template_journal_id(index);
    let dir = Dir::read(storage);
    assert!(
        dir.segments.len() <= FILES_MAX,
        "template {name} holds {} segment files, more than FILES_MAX",
        dir.segments.len()
    );
    assert!(
        dir.superblock_temp.is_none(),
        "template {name}: superblock.tmp left"
    );
    // The final state is the template's own; keep the newest older ones.
    superblocks.retain(|s| Some(s) != dir.superblock.as_ref());
    let excess = superblocks.len().saturating_sub(SUPERBLOCK_VERSIONS_MAX);
    superblocks.drain(..excess);

    let sb = dir
        .superblock
        .as_deref()
        .and_then(journal_superblock)
        .unwrap_or_else(|| panic!("template {name}: its superblock does not verify"));
    assert_eq!(sb.journal_id, journal_id);
    assert_eq!(sb.owner, owner, "template {name}: the owner recorded");
    let last = sb.last_generation;
    let last_bytes = &dir
        .segments
        .iter()
        .find(|(g, _)| *g == last)
        .unwrap_or_else(|| panic!("template {name}: segment {last} is missing"))
        .1;
    let (entries, outcome) = scan_segment(last_bytes, last)
        .unwrap_or_else(|| panic!("template {name}: segment {last}'s header does not verify"));
    let recorded_end = sb.end_of(last);
    let mut ops = dir
        .segments
        .iter()
        .filter_map(|(generation, bytes)| scan_segment(bytes, *generation))
        .flat_map(|(entries, _)| entries)
        .filter(|e| e.entry_kind() == Some(EntryKind::Data))
        .map(|e| e.op.get());
    let ops_in_file_order = ops
        .try_fold(0, |previous, op| (op > previous).then_some(op))
        .is_some();
    let (clean_close, acks_durable, unsynced_from) = match ending {
        Ending::Clean => {
            // A clean close records where the last segment's entries end.
            assert!(
                matches!(outcome, SegmentOutcome::Clean { .. }),
                "template {name}: its last segment does not end cleanly: {outcome:?}"
            );
            assert_eq!(
                recorded_end,
                Some(outcome_end(&outcome)),
                "template {name}: a clean close must record the last segment's end in the \
                 superblock"
            );
            (true, true, None)
        }
        Ending::Crash { acks_durable } => {
            assert_eq!(
                recorded_end, None,
                "template {name}: the superblock records the end of the last segment although \
                 the session ended in a crash"
            );
            // Nothing acknowledged lies at or after the start of the write
            // following the last one that holds an acknowledged op, and
            // nothing at or after the furthest `durable_before` is vouched
            // for: from there on, the bytes are the crash's to decide. A
            // torn write's first sector may have persisted past the end of
            // the scan, and its `durable_before` vouches too: every block
            // boundary is looked at.
            let vouched = (SEGMENT_DATA_OFFSET..last_bytes.len() as u64)
                .step_by(BLOCK_BYTES as usize)
                .filter_map(|pos| {
                    let header = &last_bytes[pos as usize..];
                    check_entry_header(
                        header,
                        &journal_id,
                        last,
                        pos,
                        last_bytes.len() as u64,
                        ENTRY_BYTES_MAX_LIMIT,
                    )
                    .ok()
                })
                .filter(|h| h.flags & FLAG_FIRST_IN_WRITE != 0)
                .map(|h| u64::from(h.durable_before.get()))
                .fold(SEGMENT_DATA_OFFSET, u64::max);
            let mut write_starts = Vec::new();
            let mut last_acked_write = None;
            for entry in &entries {
                let offset = u64::from(entry.offset.get());
                if entry.flags & FLAG_FIRST_IN_WRITE != 0 {
                    write_starts.push(offset);
                }
                if entry.entry_kind() == Some(EntryKind::Data)
                    && model.acked.contains_key(&entry.op.get())
                {
                    last_acked_write = write_starts.last().copied();
                }
            }
            let acked_end = match last_acked_write {
                None => SEGMENT_DATA_OFFSET,
                Some(start) => write_starts
                    .iter()
                    .copied()
                    .find(|s| *s > start)
                    .unwrap_or_else(|| outcome_end(&outcome)),
            };
            let from = if acks_durable {
                Some((last, acked_end.max(vouched)))
            } else {
                None
            };
            (false, acks_durable, from)
        }
    };
    Template {
        name,
        dir,
        old_superblocks: superblocks,
        journal_id,
        owner,
        model,
        clean_close,
        acks_durable,
        unsynced_from,
        ops_in_file_order,
    }
}

async fn build_templates() -> Vec<Template> {
    let mut templates = Vec::with_capacity(TEMPLATE_COUNT);

    // 0: a fresh journal: one segment, no entries.
    let storage = MemStorage::new();
    let writer = Writer::open(&storage, Durability::Sync, 0, None).await;
    let written = writer.close().await;
    templates.push(finish(0, "empty", &storage, written, Ending::Clean, None));

    // 1: sequential appends of assorted sizes, one entry per write.
    let storage = MemStorage::new();
    let mut writer = Writer::open(&storage, Durability::Sync, 1, None).await;
    for i in 0..12 {
        assert_eq!(writer.appends([(i * 173) % 1900 + 8]).await, 0);
    }
    let written = writer.close().await;
    templates.push(finish(1, "appends", &storage, written, Ending::Clean, None));

    // 2: concurrent appends sharing writes (first-in-write flags, padding),
    // rolling into a second segment.
    let storage = MemStorage::new();
    let mut writer = Writer::open(&storage, Durability::Sync, 2, None).await;
    assert_eq!(
        writer.appends((0..24).map(|i| 600 + (i * 97) % 1400)).await,
        0
    );
    assert_eq!(
        writer.appends((0..24).map(|i| 900 + (i * 61) % 1100)).await,
        0
    );
    let written = writer.close().await;
    templates.push(finish(
        2,
        "group-commit",
        &storage,
        written,
        Ending::Clean,
        None,
    ));

    // 3: an owner; watermark advances that retire a segment, a rewrite in a
    // later epoch, out-of-order replica writes with a gap filled later.
    let storage = MemStorage::new();
    let owner = Some(TEMPLATE_OWNER);
    let mut writer = Writer::open(&storage, Durability::Sync, 3, owner).await;
    for i in 0..30 {
        assert_eq!(writer.appends([(i * 67) % 1900 + 8]).await, 0);
    }
    writer.advance_watermark(20).await;
    let epoch = writer.journal.epoch();
    writer
        .journal
        .set_epoch(epoch + 1)
        .expect("template: set_epoch");
    writer.write(25, 300).await;
    writer.write(26, 1200).await;
    let next = writer.journal.next_op();
    writer.write(next + 2, 500).await;
    writer.write(next, 700).await;
    writer.write(next + 1, 900).await;
    assert_eq!(
        writer.appends((0..24).map(|i| 1500 + (i * 23) % 500)).await,
        0
    );
    let newest = writer.journal.next_op() - 1;
    writer.advance_watermark(newest - 20).await;
    let written = writer.close().await;
    templates.push(finish(
        3,
        "watermark-epoch-replica",
        &storage,
        written,
        Ending::Clean,
        owner,
    ));

    // 4: power cut while a group-commit write was unsynced, then a crash
    // that tears unsynced writes at sector granularity.
    let storage = MemStorage::with_faults(
        0x70_72_6e,
        FaultConfig {
            crash_drop_rate: 0.0,
            crash_tear_rate: 1.0,
            ..FaultConfig::none()
        },
    );
    let mut writer = Writer::open(&storage, Durability::Sync, 4, None).await;
    for i in 0..10 {
        assert_eq!(writer.appends([(i * 311) % 1900 + 8]).await, 0);
    }
    // The write lands, its fdatasync is cut.
    storage.cut_power_after_ops(2);
    assert_eq!(writer.appends((0..6).map(|i| 1000 + i * 150)).await, 6);
    let written = writer.crash().await;
    templates.push(finish(
        4,
        "torn-tail",
        &storage,
        written,
        Ending::Crash { acks_durable: true },
        None,
    ));

    // 5: NoSync durability (the segment header says so; recovery may cut
    // any number of torn writes at its end), closed cleanly.
    let storage = MemStorage::new();
    let mut writer = Writer::open(&storage, Durability::NoSync, 5, None).await;
    assert_eq!(writer.appends((0..8).map(|i| 100 + i * 211)).await, 0);
    assert_eq!(writer.appends((0..8).map(|i| 50 + i * 97)).await, 0);
    let written = writer.close().await;
    templates.push(finish(5, "no-sync", &storage, written, Ending::Clean, None));

    // 6: a power cut under load: group-commit writes in flight (up to
    // `writes_in_flight`), some acknowledged and not yet vouched for by a
    // later write, the ones behind them torn.
    let storage = MemStorage::with_faults(
        0x6c6f_6164,
        FaultConfig {
            crash_drop_rate: 0.0,
            crash_tear_rate: 1.0,
            ..FaultConfig::none()
        },
    );
    let mut writer = Writer::open(&storage, Durability::Sync, 6, None).await;
    for i in 0..4 {
        assert_eq!(writer.appends([(i * 401) % 1900 + 8]).await, 0);
    }
    storage.cut_power_after_ops(CRASH_UNDER_LOAD_STORAGE_OPS);
    let failed = writer
        .appends((0..CRASH_UNDER_LOAD_APPENDS).map(|i| 700 + (i * 53) % 1300))
        .await;
    assert!(
        failed > 0 && failed < CRASH_UNDER_LOAD_APPENDS,
        "template crash-under-load: {failed} of {CRASH_UNDER_LOAD_APPENDS} appends failed; the \
         power cut should fall between acknowledged writes and torn ones"
    );
    let written = writer.crash().await;
    templates.push(finish(
        6,
        "crash-under-load",
        &storage,
        written,
        Ending::Crash { acks_durable: true },
        None,
    ));

    // 7: NoSync writes acknowledged and never synced, then a crash that
    // drops or tears them: acknowledged ops may be gone (row 13's cut).
    let storage = MemStorage::with_faults(
        7,
        FaultConfig {
            crash_drop_rate: 0.3,
            crash_tear_rate: 0.6,
            ..FaultConfig::none()
        },
    );
    let mut writer = Writer::open(&storage, Durability::NoSync, 7, None).await;
    assert_eq!(writer.appends((0..10).map(|i| 300 + i * 170)).await, 0);
    assert_eq!(writer.appends((0..6).map(|i| 1200 + i * 90)).await, 0);
    let written = writer.crash().await;
    templates.push(finish(
        7,
        "no-sync-crash",
        &storage,
        written,
        Ending::Crash {
            acks_durable: false,
        },
        None,
    ));

    assert_eq!(templates.len(), TEMPLATE_COUNT);
    templates
}

/// Template "crash-under-load": concurrent appends when the power is cut.
const CRASH_UNDER_LOAD_APPENDS: usize = 32;
/// Template "crash-under-load": storage operations that still succeed.
const CRASH_UNDER_LOAD_STORAGE_OPS: u64 = 4;
