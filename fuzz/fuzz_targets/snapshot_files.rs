//! libFuzzer entry for `snapshot_files`; the input type and the checks live
//! in `ringstore_fuzz::snapshot_files` (see `fuzz/src/snapshot_files.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: ringstore_fuzz::log_panics(),
    |input: ringstore_fuzz::snapshot_files::Input| {
        ringstore_fuzz::snapshot_files::run(&input);
    }
);
