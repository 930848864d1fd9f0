//! The `journal_files` templates are the same bytes on every thread and in
//! every process (their journal ids are fixed, not the random ones the
//! journal draws), so an input the fuzzer found replays; and each is what
//! its checks assume: a superblock, a clean close recorded or not.

use ringstore_fuzz::journal_files::{self, journal_superblock, Template};

fn build_on_a_thread() -> Vec<Template> {
    std::thread::spawn(|| journal_files::templates().as_ref().clone())
        .join()
        .expect("templates build")
}

#[test]
fn templates_are_deterministic_and_distinct_journals() {
    let (a, b) = (build_on_a_thread(), build_on_a_thread());
    assert_eq!(a.len(), journal_files::TEMPLATE_COUNT);
    for (a, b) in a.iter().zip(&b) {
        let files = |t: &Template| {
            let mut files = vec![("superblock".to_string(), t.dir.superblock.clone())];
            files.extend(
                t.dir
                    .segments
                    .iter()
                    .map(|(g, bytes)| (format!("segment {g}"), Some(bytes.clone()))),
            );
            files.extend(
                t.old_superblocks
                    .iter()
                    .enumerate()
                    .map(|(i, bytes)| (format!("older superblock {i}"), Some(bytes.clone()))),
            );
            files
        };
        let (files_a, files_b) = (files(a), files(b));
        let names = |files: &[(String, Option<Vec<u8>>)]| {
            files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&files_a), names(&files_b), "template {}", a.name);
        for ((name, x), (_, y)) in files_a.iter().zip(&files_b) {
            let first_difference = match (x, y) {
                (Some(x), Some(y)) => x
                    .iter()
                    .zip(y)
                    .position(|(p, q)| p != q)
                    .or((x.len() != y.len()).then(|| x.len().min(y.len()))),
                (x, y) => (x.is_some() != y.is_some()).then_some(0),
            };
            assert!(
                first_difference.is_none(),
                "template {}: its {name} differs between builds from byte {first_difference:?}",
                a.name
            );
        }
        assert_eq!(a.unsynced_from, b.unsynced_from, "template {}", a.name);
    }
    for (index, template) in a.iter().enumerate() {
        let sb = journal_superblock(template.dir.superblock.as_deref().expect("a superblock"))
            .expect("a superblock that verifies");
        assert_eq!(sb.journal_id, journal_files::template_journal_id(index));
        assert_eq!(
            sb.end_of(sb.last_generation).is_some(),
            template.clean_close,
            "template {}: the last segment's end is recorded exactly after a clean close",
            template.name
        );
        assert!(
            !template.old_superblocks.is_empty(),
            "template {} has no older superblock",
            template.name
        );
        println!(
            "{:<24} {} segments, {} acked, {} older superblocks, clean close {}, unsynced from \
             {:?}, ops in file order {}",
            template.name,
            template.dir.segments.len(),
            template.model.acked.len(),
            template.old_superblocks.len(),
            template.clean_close,
            template.unsynced_from,
            template.ops_in_file_order
        );
    }
}

#[test]
fn crash_templates_end_in_a_cut() {
    for template in build_on_a_thread().iter().filter(|t| !t.clean_close) {
        let sb = journal_superblock(template.dir.superblock.as_deref().expect("a superblock"))
            .expect("a superblock that verifies");
        let last = sb.last_generation;
        let bytes = &template
            .dir
            .segments
            .iter()
            .find(|(g, _)| *g == last)
            .expect("the last segment")
            .1;
        let (_, outcome) = journal_files::scan_segment(bytes, last).expect("a valid header");
        assert!(
            matches!(outcome, ringstore_journal::verify::SegmentOutcome::Cut(_)),
            "template {}: the crash should leave a torn tail for recovery to cut, got {outcome:?}",
            template.name
        );
    }
}
