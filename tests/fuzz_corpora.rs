//! Every fuzz corpus file replays through the same entry points the fuzz targets use.

use std::path::Path;

use trackgate::inspect::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        // Damaged variants too: halves and single-byte flips.
        run(&data[..data.len() / 2]);
        let mut flipped = data.clone();
        if let Some(b) = flipped.get_mut(data.len() / 3) {
            *b ^= 0x20;
        }
        run(&flipped);
        count += 1;
    }
    assert!(count >= 3, "{target} corpus has only {count} files");
}

#[test]
fn ews_corpus_replays_without_panics() {
    replay("ews", fuzzing::ews);
}

#[test]
fn graph_corpus_replays_without_panics() {
    replay("graph", fuzzing::graph);
}

#[test]
fn autodiscover_corpus_replays_without_panics() {
    replay("autodiscover", fuzzing::autodiscover);
}

#[test]
fn capture_corpus_replays_without_panics() {
    replay("capture", fuzzing::capture);
}

#[test]
fn observations_corpus_replays_without_panics() {
    replay("observations", trackgate::rules::fuzzing::observations);
}

#[test]
fn directory_corpus_replays_without_panics() {
    replay("directory", trackgate::rules::fuzzing::directory);
}

#[test]
fn batch_corpus_replays_without_panics() {
    replay("batch", trackgate::crm::multipart::fuzz);
}
