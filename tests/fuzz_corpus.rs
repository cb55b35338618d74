//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/*`) through the
//! same `keygate::fuzzing` functions the fuzz targets call, so that every input
//! the fuzzer once found interesting stays a regression test on every
//! `cargo test`, with no fuzzer installed. A missing or empty corpus fails:
//! this test must never pass by testing nothing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Runs `target` on every file of `fuzz/corpus/<name>`, naming the file that
/// broke an invariant.
fn replay(name: &str, target: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} cannot be read: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a corpus file is readable");
            catch_unwind(AssertUnwindSafe(|| target(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} {name} corpus inputs broke an invariant:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_key_corpus_input_keeps_the_key_invariants() {
    replay("key", keygate::fuzzing::key);
}

#[test]
fn every_org_from_path_corpus_input_keeps_the_org_resolution_invariants() {
    replay("org_from_path", keygate::fuzzing::org_from_path);
}

#[test]
fn every_admin_body_corpus_input_gets_a_contract_answer_from_every_endpoint() {
    replay("admin_body", keygate::fuzzing::admin_body);
}

#[test]
fn every_config_corpus_input_parses_or_is_refused_in_one_line() {
    replay("config", keygate::fuzzing::config);
}
